package supervisor

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestStateMachine drives the supervisor's loop in-process, with fake
// workers and a fake clock (fake_test.go), through reloads, crashes,
// scales and stops, and compares the trace of what happened with the
// one each case wants. Times in the trace are fake: a case that waits
// 30 seconds takes microseconds. Within one moment the trace is in the
// order things happened, except that the answer to a request comes at the
// end of the loop's event that gave it (a reload's answer after the next
// reload it started).
func TestStateMachine(t *testing.T) {
	// What Start returns when fork(2) fails (RLIMIT_NPROC reached). A
	// missing working directory is not one: the shim changes into it,
	// after the fork, and exits with status 126.
	errFork := syscall.EAGAIN
	tests := []struct {
		name    string
		cfg     func(*Config)
		workers int
		// behave says how the start of attempt n in slot slot of
		// generation gen behaves; nil: every worker is ready at once.
		behave func(gen, slot, n int) fakeWorker
		run    func(h *harness)
		want   []string
	}{
		{
			name:    "reload: the old generation drains once every new worker is ready",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"6s g2.s0 sends READY=1",
				"6s g2.s1 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s g1.s0 exited with status 0",
				"6s SIGTERM g1.s1",
				"6s g1.s1 exited with status 0",
				"6s reload r1: ok, generation 2 replaces 1",
				"10s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready]",
			},
		},
		{
			name:    "rollback: a new worker that crash-loops before it is ready fails the reload, the old generation serves on",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 1 {
					return fakeWorker{ready: 2 * time.Second, crash: true, crashAfter: 500 * time.Millisecond, status: 1}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.state()
			},
			// Each exit is restarted in its slot after the backoff; the
			// fifth within start_limit_interval (10s) fails the reload.
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5.5s g2.s1 exited with status 1",
				"5.6s start g2.s1#2",
				"6s g2.s0 sends READY=1",
				"6.1s g2.s1#2 exited with status 1",
				"6.3s start g2.s1#3",
				"6.8s g2.s1#3 exited with status 1",
				"7.2s start g2.s1#4",
				"7.7s g2.s1#4 exited with status 1",
				"8.5s start g2.s1#5",
				"9s g2.s1#5 exited with status 1",
				"9s SIGTERM g2.s0",
				"9s g2.s0 exited with status 0",
				"9s reload r1: reload to generation 2 failed: worker slot 1 of generation 2 is crash-looping: 5 of its workers failed within 10s (start_limit_burst 5 in start_limit_interval 10s), the last: worker g2.s1#5 exited with status 1 after 500ms; generation 1 keeps serving",
				"10s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
		},
		{
			name:    "rollback: a new worker that cannot start fails the reload",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 1 {
					return fakeWorker{startErr: errFork}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s g1.s0 sends READY=1",
				"0s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1 failed",
				"5s SIGTERM g2.s0",
				"5s g2.s0 exited with status 0",
				"5s reload r1: reload to generation 2 failed: starting worker slot 1 of generation 2: start /srv/app/worker: resource temporarily unavailable; generation 1 keeps serving",
				"5s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
		},
		{
			name:    "ready timeout: a new worker that never sends READY=1 fails the reload at the deadline",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 0 {
					return fakeWorker{ready: never}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(14900 * time.Millisecond)
				h.state()
				h.at(15 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"6s g2.s1 sends READY=1",
				"14.9s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready], generation 2 pending, also g2.s0 starting, g2.s1 ready",
				"15s SIGTERM g2.s0",
				"15s g2.s0 exited with status 0",
				"15s SIGTERM g2.s1",
				"15s g2.s1 exited with status 0",
				"15s reload r1: reload to generation 2 failed: worker slot 0 (g2.s0) of generation 2 did not send READY=1 within 10s; generation 1 keeps serving",
				"15s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
		},
		{
			name:    "ready timeout: a serving worker that never sends READY=1 is restarted in its slot",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				if n == 1 {
					return fakeWorker{ready: never}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(9900 * time.Millisecond)
				h.state()
				h.at(10 * time.Second)
				h.state()
				h.at(12 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"9.9s state: generation 1 serves [s0 g1.s0 starting]",
				"10s SIGTERM g1.s0",
				"10s g1.s0 exited with status 0",
				"10s state: generation 1 serves [s0 backoff 100ms, next start in 100ms (worker g1.s0 missed its readiness deadline (10s))]",
				"10.1s start g1.s0#2",
				"11.1s g1.s0#2 sends READY=1",
				"12s state: generation 1 serves [s0 g1.s0#2 ready]",
			},
		},
		{
			name:    "ready timeout: bind mode names the binds in the error",
			workers: 1,
			cfg:     func(c *Config) { c.Ready = ReadyWhenBound() },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: never}
			},
			run: func(h *harness) {
				h.reload("r1")
				h.at(10 * time.Second)
			},
			want: []string{
				"0s start g1.s0",
				"0s reload r1 asked",
				"0s start g2.s0",
				"10s SIGTERM g1.s0",
				"10s g1.s0 exited with status 0",
				"10s SIGTERM g2.s0",
				"10s g2.s0 exited with status 0",
				"10s reload r1: reload to generation 2 failed: worker slot 0 (g2.s0) of generation 2 did not bind every listener within 10s; generation 1 keeps serving",
			},
		},
		{
			name:    "delay: a worker is ready once up for the delay, READY=1 or not, and has no deadline",
			workers: 1,
			cfg: func(c *Config) {
				c.Ready = ReadyAfter(2 * time.Second)
				c.ReadyTimeout = time.Second // not used with delay
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: 0}
			},
			run: func(h *harness) {
				h.at(1500 * time.Millisecond)
				h.state()
				h.at(2 * time.Second)
				h.state()
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(7 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"1.5s state: generation 1 serves [s0 g1.s0 starting]",
				"2s state: generation 1 serves [s0 g1.s0 ready]",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s g2.s0 sends READY=1",
				"7s SIGTERM g1.s0",
				"7s g1.s0 exited with status 0",
				"7s reload r1: ok, generation 2 replaces 1",
				"7s state: generation 2 serves [s0 g2.s0 ready]",
			},
		},
		{
			name:    "coalescing: reloads asked during a reload are served by one more, every waiter answered",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(5200 * time.Millisecond)
				h.reload("r2")
				h.signalReload()
				h.reload("r3")
				h.state()
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"1s g1.s0 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5.2s reload r2 asked",
				"5.2s SIGHUP",
				"5.2s reload r3 asked",
				"5.2s state: generation 1 serves [s0 g1.s0 ready], generation 2 pending, also g2.s0 starting",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s g1.s0 exited with status 0",
				"6s start g3.s0",
				"6s reload r1: ok, generation 2 replaces 1",
				"7s g3.s0 sends READY=1",
				"7s SIGTERM g2.s0",
				"7s g2.s0 exited with status 0",
				"7s reload r2: ok, generation 3 replaces 2",
				"7s reload r3: ok, generation 3 replaces 2",
				"10s state: generation 3 serves [s0 g3.s0 ready]",
			},
		},
		{
			name:    "scale: requests asked during a reload wait for it and run in order",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.scale(3)
				h.scale(1)
				h.state()
				h.at(6 * time.Second)
				h.state()
				h.scale(2)
				h.scale(0)
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5s scale to 3 asked",
				"5s scale to 1 asked",
				"5s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready], generation 2 pending, also g2.s0 starting, g2.s1 starting",
				"6s g2.s0 sends READY=1",
				"6s g2.s1 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s g1.s0 exited with status 0",
				"6s SIGTERM g1.s1",
				"6s g1.s1 exited with status 0",
				"6s start g2.s2",
				"6s SIGTERM g2.s1",
				"6s g2.s1 exited with status 0",
				"6s SIGTERM g2.s2",
				"6s g2.s2 exited with status 0",
				"6s reload r1: ok, generation 2 replaces 1",
				"6s scale to 3: from 2, started [2], stopped []",
				"6s scale to 1: from 3, started [], stopped [1 2]",
				"6s state: generation 2 serves [s0 g2.s0 ready]",
				"6s scale to 2 asked",
				"6s start g2.s1#2",
				"6s scale to 2: from 1, started [1], stopped []",
				"6s scale to 0 asked",
				"6s scale to 0: scale to 0: want 1 to 4096 workers",
				"7s g2.s1#2 sends READY=1",
				"10s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1#2 ready]",
			},
		},
		{
			name:    "drain timeout: a worker still running drain_timeout after its stop signal gets SIGKILL on its process group",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 1 && slot == 0 {
					return fakeWorker{ignoreStop: true}
				}
				return fakeWorker{drain: 29 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(34 * time.Second)
				h.state()
				h.at(35 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s g1.s0 sends READY=1",
				"0s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5s g2.s0 sends READY=1",
				"5s g2.s1 sends READY=1",
				"5s SIGTERM g1.s0",
				"5s SIGTERM g1.s1",
				"5s reload r1: ok, generation 2 replaces 1",
				"34s g1.s1 exited with status 0",
				"34s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready], also g1.s0 draining",
				"35s SIGKILL group g1.s0",
				"35s g1.s0 killed by SIGKILL",
				"35s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready]",
			},
		},
		{
			name:    "crash: restarts back off from 100ms, doubling up to 30s, and start over after a worker stayed up 10s",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				switch {
				case n <= 11:
					return fakeWorker{ready: never, crash: true, status: 2}
				case n == 12:
					return fakeWorker{crash: true, crashAfter: StableAfter, status: 2}
				case n == 13:
					return fakeWorker{crash: true, crashAfter: StableAfter - time.Millisecond, status: 2}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Minute)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 exited with status 2",
				"100ms start g1.s0#2",
				"100ms g1.s0#2 exited with status 2",
				"300ms start g1.s0#3",
				"300ms g1.s0#3 exited with status 2",
				"700ms start g1.s0#4",
				"700ms g1.s0#4 exited with status 2",
				"1.5s start g1.s0#5",
				"1.5s g1.s0#5 exited with status 2",
				"3.1s start g1.s0#6",
				"3.1s g1.s0#6 exited with status 2",
				"6.3s start g1.s0#7",
				"6.3s g1.s0#7 exited with status 2",
				"12.7s start g1.s0#8",
				"12.7s g1.s0#8 exited with status 2",
				"25.5s start g1.s0#9",
				"25.5s g1.s0#9 exited with status 2",
				"51.1s start g1.s0#10",
				"51.1s g1.s0#10 exited with status 2",
				"1m21.1s start g1.s0#11",
				"1m21.1s g1.s0#11 exited with status 2",
				"1m51.1s start g1.s0#12",
				"1m51.1s g1.s0#12 sends READY=1",
				"2m1.1s g1.s0#12 exited with status 2",
				"2m1.2s start g1.s0#13",
				"2m1.2s g1.s0#13 sends READY=1",
				"2m11.199s g1.s0#13 exited with status 2",
				"2m11.399s start g1.s0#14",
				"2m11.399s g1.s0#14 sends READY=1",
				"5m0s state: generation 1 serves [s0 g1.s0#14 ready]",
			},
		},
		{
			name:    "crash during a reload: the serving slot's restart is pending when the reload succeeds, and is dropped",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(5950 * time.Millisecond)
				h.crash("g1.s0", 3)
				h.state()
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5.95s g1.s0 exited with status 3",
				"5.95s state: generation 1 serves [s0 backoff 100ms, next start in 100ms (worker g1.s0 exited with status 3 after 5.95s), s1 g1.s1 ready], generation 2 pending, also g2.s0 starting, g2.s1 starting",
				"6s g2.s0 sends READY=1",
				"6s g2.s1 sends READY=1",
				"6s SIGTERM g1.s1",
				"6s g1.s1 exited with status 0",
				"6s reload r1: ok, generation 2 replaces 1",
				"10s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready]",
			},
		},
		{
			name:    "stop with a crash restart pending: no worker starts, baton finishes",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{crash: true, crashAfter: 2 * time.Second, status: 1}
			},
			run: func(h *harness) {
				h.at(2050 * time.Millisecond)
				h.state()
				h.stop()
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"2s g1.s0 exited with status 1",
				"2.05s state: generation 1 serves [s0 backoff 100ms, next start in 50ms (worker g1.s0 exited with status 1 after 2s)]",
				"2.05s stop asked",
				"10s state: generation 1 serves [s0 empty], finished",
			},
		},
		{
			name:    "stop while a reload is pending: the reload, the reloads and scales queued behind it fail, every worker drains",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, drain: time.Second}
				}
				return fakeWorker{drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.reload("r2")
				h.scale(3)
				h.stop()
				h.state()
				h.reload("r3")
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s g1.s0 sends READY=1",
				"0s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5s reload r2 asked",
				"5s scale to 3 asked",
				"5s stop asked",
				"5s SIGTERM g2.s0",
				"5s SIGTERM g2.s1",
				"5s SIGTERM g1.s0",
				"5s SIGTERM g1.s1",
				"5s reload r1: reload to generation 2 failed: baton is stopping; generation 1 keeps serving",
				"5s reload r2: baton is stopping",
				"5s scale to 3: baton is stopping",
				"5s state: generation 1 serves [s0 g1.s0 draining, s1 g1.s1 draining], also g2.s0 draining, g2.s1 draining",
				"5s reload r3 asked",
				"5s reload r3: baton is stopping",
				"6s g2.s0 exited with status 0",
				"6s g2.s1 exited with status 0",
				"7s g1.s0 exited with status 0",
				"7s g1.s1 exited with status 0",
				"10s state: generation 1 serves [s0 empty, s1 empty], finished",
			},
		},
		{
			name:    "start failure: a slot whose worker cannot start retries with the crash backoff until it can",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				if n <= 4 {
					return fakeWorker{startErr: errFork}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(500 * time.Millisecond)
				h.state()
				h.at(2 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0 failed",
				"100ms start g1.s0#2 failed",
				"300ms start g1.s0#3 failed",
				"500ms state: generation 1 serves [s0 backoff 400ms, next start in 200ms (starting worker slot 0 of generation 1: start /srv/app/worker: resource temporarily unavailable)]",
				"700ms start g1.s0#4 failed",
				"1.5s start g1.s0#5",
				"1.5s g1.s0#5 sends READY=1",
				"2s state: generation 1 serves [s0 g1.s0#5 ready]",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.workers)
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			behave := tt.behave
			if behave == nil {
				behave = func(gen, slot, n int) fakeWorker { return fakeWorker{} }
			}
			h := newHarness(t, cfg, behave)
			tt.run(h)
			if diff := cmp.Diff(tt.want, h.trace); diff != "" {
				t.Errorf("trace (-want +got):\n%s\ngot:\n%s", diff, strings.Join(h.trace, "\n"))
			}
		})
	}
}
