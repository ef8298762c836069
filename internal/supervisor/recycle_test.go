package supervisor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// machineCase is a case of the state machine's table tests: a
// configuration, how the fake workers behave, what the test does, and the
// trace it wants (fake_test.go).
type machineCase struct {
	name    string
	cfg     func(*Config)
	workers int
	behave  func(gen, slot, n int) fakeWorker
	run     func(h *harness)
	want    []string
}

// runMachineCases runs each case in the fake harness and compares its
// trace.
func runMachineCases(t *testing.T, tests []machineCase) {
	t.Helper()
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

// slots adds to the trace each serving slot's recycles and restarts, and
// the replacement baton has under way.
func (h *harness) slots() {
	var parts []string
	for _, sl := range h.s.active.slots {
		p := fmt.Sprintf("s%d recycles %d, restarts %d, backoff %s", sl.index, sl.recycles, sl.restarts, sl.backoff)
		if sl.lastRecycle != "" {
			p += ", last recycle " + sl.lastRecycle
		}
		parts = append(parts, p)
	}
	line := "slots: " + strings.Join(parts, "; ")
	if r := h.s.recycling; r != nil {
		line += fmt.Sprintf("; replacing %s (%s)", h.procs.byPID[r.old.pid].name, r.reason)
	}
	h.tracef("%s", line)
}

// TestSelfRecycling: workers that exit 0 on their own (php-cgi after
// PHP_FCGI_MAX_REQUESTS, gunicorn's max_requests) are restarted in their
// slot at once, in a generation coming up as in the serving one, and
// never fail a reload; failures while a generation comes up are
// restarted too, and fail the reload only when the slot crash-loops or
// cannot become ready in time.
func TestSelfRecycling(t *testing.T) {
	runMachineCases(t, []machineCase{
		{
			// The php-cgi: under load each worker reaches its
			// request limit before the readiness delay is over. The slot's
			// run without failure goes on across the restarts.
			name:    "delay: a new worker that exits 0 before its delay is over is restarted at once; the slot is ready once it has run the delay without a failure",
			workers: 1,
			cfg:     func(c *Config) { c.Ready = ReadyAfter(2 * time.Second) },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 700 * time.Millisecond}
				}
				return fakeWorker{ready: never}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(7050 * time.Millisecond)
				h.state()
				h.at(7100 * time.Millisecond)
				h.state()
				h.slots()
			},
			want: []string{
				"0s start g1.s0",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5.7s g2.s0 exited with status 0",
				"5.7s start g2.s0#2",
				"6.4s g2.s0#2 exited with status 0",
				"6.4s start g2.s0#3",
				"7s SIGTERM g1.s0",
				"7s g1.s0 exited with status 0",
				"7s reload r1: ok, generation 2 replaces 1",
				"7.05s state: generation 2 serves [s0 g2.s0#3 ready]",
				"7.1s g2.s0#3 exited with status 0",
				"7.1s start g2.s0#4",
				"7.1s state: generation 2 serves [s0 g2.s0#4 ready]",
				"7.1s slots: s0 recycles 3, restarts 0, backoff 0s, last recycle exited",
			},
		},
		{
			name:    "notify: a ready new worker that exits 0 while its generation comes up is restarted at once and must send READY=1 again",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				switch {
				case gen == 2 && slot == 0 && n == 1:
					return fakeWorker{ready: 100 * time.Millisecond, crash: true, crashAfter: 500 * time.Millisecond}
				case gen == 2 && slot == 1:
					return fakeWorker{ready: 2 * time.Second}
				}
				return fakeWorker{ready: 100 * time.Millisecond}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(5550 * time.Millisecond)
				h.state()
				h.at(8 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"100ms g1.s0 sends READY=1",
				"100ms g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"5.1s g2.s0 sends READY=1",
				"5.5s g2.s0 exited with status 0",
				"5.5s start g2.s0#2",
				"5.55s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready], generation 2 pending, also g2.s0#2 starting, g2.s1 starting",
				"5.6s g2.s0#2 sends READY=1",
				"7s g2.s1 sends READY=1",
				"7s SIGTERM g1.s0",
				"7s g1.s0 exited with status 0",
				"7s SIGTERM g1.s1",
				"7s g1.s1 exited with status 0",
				"7s reload r1: ok, generation 2 replaces 1",
				"8s state: generation 2 serves [s0 g2.s0#2 ready, s1 g2.s1 ready]",
			},
		},
		{
			// A clean exit neither grows the backoff nor resets it: after
			// it, the next crash waits twice the last backoff.
			name:    "serving: a worker that exits 0 is restarted at once, and its slot's backoff stays as it was",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				switch n {
				case 1, 3:
					return fakeWorker{crash: true, crashAfter: time.Second, status: 1}
				case 2:
					return fakeWorker{crash: true, crashAfter: 2 * time.Second}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(1050 * time.Millisecond)
				h.slots()
				h.at(3200 * time.Millisecond)
				h.slots()
				h.at(5 * time.Second)
				h.slots()
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"1s g1.s0 exited with status 1",
				"1.05s slots: s0 recycles 0, restarts 1, backoff 100ms",
				"1.1s start g1.s0#2",
				"1.1s g1.s0#2 sends READY=1",
				"3.1s g1.s0#2 exited with status 0",
				"3.1s start g1.s0#3",
				"3.1s g1.s0#3 sends READY=1",
				"3.2s slots: s0 recycles 1, restarts 1, backoff 100ms, last recycle exited",
				"4.1s g1.s0#3 exited with status 1",
				"4.3s start g1.s0#4",
				"4.3s g1.s0#4 sends READY=1",
				"5s slots: s0 recycles 1, restarts 2, backoff 200ms, last recycle exited",
				"5s state: generation 1 serves [s0 g1.s0#4 ready]",
			},
		},
		{
			// nginx without `daemon off;` forks its daemon and exits 0
			// at once: that is no recycling.
			name:    "an exit with status 0 before the worker is ready and within 100ms of its start is a failure: a program that daemonizes crash-loops and the reload fails",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 20 * time.Millisecond}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5.02s g2.s0 exited with status 0",
				"5.12s start g2.s0#2",
				"5.14s g2.s0#2 exited with status 0",
				"5.34s start g2.s0#3",
				"5.36s g2.s0#3 exited with status 0",
				"5.76s start g2.s0#4",
				"5.78s g2.s0#4 exited with status 0",
				"6.58s start g2.s0#5",
				"6.6s g2.s0#5 exited with status 0",
				"6.6s reload r1: reload to generation 2 failed: worker slot 0 of generation 2 is crash-looping: 5 of its workers failed within 10s (start_limit_burst 5 in start_limit_interval 10s), the last: worker g2.s0#5 exited with status 0 after 20ms (before it was ready and within 100ms of its start, too soon to count as recycling itself: does the program daemonize, or print its usage and exit?); generation 1 keeps serving",
				"10s state: generation 1 serves [s0 g1.s0 ready]",
			},
		},
		{
			// Readiness says it served: a ready worker that exits 0 recycled
			// itself however soon (a fast program with a low request limit);
			// its slot starts again no sooner than 100ms after its start, so
			// that a program that exits at once does not loop.
			name:    "a worker that was ready and exits 0 within 100ms of its start recycled itself; the next start waits out the 100ms",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				if n <= 3 {
					return fakeWorker{ready: 10 * time.Millisecond, crash: true, crashAfter: 30 * time.Millisecond}
				}
				return fakeWorker{ready: 10 * time.Millisecond}
			},
			run: func(h *harness) {
				h.at(50 * time.Millisecond)
				h.state()
				h.at(time.Second)
				h.slots()
			},
			want: []string{
				"0s start g1.s0",
				"10ms g1.s0 sends READY=1",
				"30ms g1.s0 exited with status 0",
				"50ms state: generation 1 serves [s0 backoff 0s, next start in 50ms ()]",
				"100ms start g1.s0#2",
				"110ms g1.s0#2 sends READY=1",
				"130ms g1.s0#2 exited with status 0",
				"200ms start g1.s0#3",
				"210ms g1.s0#3 sends READY=1",
				"230ms g1.s0#3 exited with status 0",
				"300ms start g1.s0#4",
				"310ms g1.s0#4 sends READY=1",
				"1s slots: s0 recycles 3, restarts 0, backoff 0s, last recycle exited",
			},
		},
		{
			name:    "a crash while the generation comes up is restarted after the backoff, and the reload succeeds once the slot is ready",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 0 && n == 1 {
					return fakeWorker{ready: never, crash: true, crashAfter: 300 * time.Millisecond, status: 2}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(8 * time.Second)
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
				"5.3s g2.s0 exited with status 2",
				"5.4s start g2.s0#2",
				"6s g2.s1 sends READY=1",
				"6.4s g2.s0#2 sends READY=1",
				"6.4s SIGTERM g1.s0",
				"6.4s g1.s0 exited with status 0",
				"6.4s SIGTERM g1.s1",
				"6.4s g1.s1 exited with status 0",
				"6.4s reload r1: ok, generation 2 replaces 1",
				"8s state: generation 2 serves [s0 g2.s0#2 ready, s1 g2.s1 ready]",
			},
		},
		{
			// Too few failures to crash-loop, but the slot has
			// --ready-timeout (10s) from its first start, whatever its
			// workers did.
			name:    "a slot that keeps failing slowly fails the reload at --ready-timeout after its first start",
			workers: 1,
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 4 * time.Second, status: 1}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(20 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"9s g2.s0 exited with status 1",
				"9.1s start g2.s0#2",
				"13.1s g2.s0#2 exited with status 1",
				"13.3s start g2.s0#3",
				"15s SIGTERM g2.s0#3",
				"15s g2.s0#3 exited with status 0",
				"15s reload r1: reload to generation 2 failed: worker slot 0 (g2.s0#3) of generation 2 did not send READY=1 within 10s; before it, 2 workers of the slot failed in this generation, the last: worker g2.s0#2 exited with status 1 after 4s; generation 1 keeps serving",
				"20s state: generation 1 serves [s0 g1.s0 ready]",
			},
		},
		{
			name:    "a slot whose next restart would come after its deadline fails the reload at once",
			workers: 1,
			cfg:     func(c *Config) { c.ReadyTimeout = 5 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 2450 * time.Millisecond, status: 1}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(20 * time.Second)
			},
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"7.45s g2.s0 exited with status 1",
				"7.55s start g2.s0#2",
				"10s g2.s0#2 exited with status 1",
				"10s reload r1: reload to generation 2 failed: worker slot 0 of generation 2 could not become ready within 5s of its first start: 2 of its workers failed, the last: worker g2.s0#2 exited with status 1 after 2.45s; generation 1 keeps serving",
			},
		},
		{
			// A rolling reload's batch is a generation coming up too: its
			// worker's clean exit and a crash are restarted in the slot,
			// and the roll goes on.
			name:    "rolling: a new worker that recycles itself, and one that crashes once, are restarted in their slots; the roll goes on",
			workers: 2,
			cfg:     func(c *Config) { c.Rollout.Rolling = 1 },
			behave: func(gen, slot, n int) fakeWorker {
				switch {
				case gen == 2 && slot == 0 && n == 1:
					return fakeWorker{ready: 100 * time.Millisecond, crash: true, crashAfter: 300 * time.Millisecond}
				case gen == 2 && slot == 1 && n == 1:
					return fakeWorker{ready: never, crash: true, crashAfter: 200 * time.Millisecond, status: 1}
				}
				return fakeWorker{ready: 100 * time.Millisecond}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(8 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"100ms g1.s0 sends READY=1",
				"100ms g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5.1s g2.s0 sends READY=1",
				"5.1s SIGTERM g1.s0",
				"5.1s g1.s0 exited with status 0",
				"5.1s start g2.s1",
				"5.3s g2.s0 exited with status 0",
				"5.3s start g2.s0#2",
				"5.3s g2.s1 exited with status 1",
				"5.4s g2.s0#2 sends READY=1",
				"5.4s start g2.s1#2",
				"5.5s g2.s1#2 sends READY=1",
				"5.5s SIGTERM g1.s1",
				"5.5s g1.s1 exited with status 0",
				"5.5s reload r1: ok, generation 2 replaces 1",
				"8s state: generation 2 serves [s0 g2.s0#2 ready, s1 g2.s1#2 ready]",
			},
		},
		{
			name:    "the crash-loop limit is a configuration: start_limit_burst 2",
			workers: 1,
			cfg:     func(c *Config) { c.StartLimitBurst, c.StartLimitInterval = 2, time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 600 * time.Millisecond, status: 1}
				}
				return fakeWorker{}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
			},
			// The first two failures are 700ms apart, within 1s: the second
			// fails the reload.
			want: []string{
				"0s start g1.s0",
				"0s g1.s0 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5.6s g2.s0 exited with status 1",
				"5.7s start g2.s0#2",
				"6.3s g2.s0#2 exited with status 1",
				"6.3s reload r1: reload to generation 2 failed: worker slot 0 of generation 2 is crash-looping: 2 of its workers failed within 1s (start_limit_burst 2 in start_limit_interval 1s), the last: worker g2.s0#2 exited with status 1 after 600ms; generation 1 keeps serving",
			},
		},
	})
}

// TestBatonRecycles: with --max-uptime and --max-rss baton replaces a
// serving worker as a reload of one slot does: the replacement first,
// then the old worker drains; one slot at a time; and gives up, or lets
// something else replace the slot, without ever leaving it empty.
func TestBatonRecycles(t *testing.T) {
	mib := uint64(1 << 20)
	runMachineCases(t, []machineCase{
		{
			name:    "max_uptime: each worker is replaced in turn, its replacement ready before it gets its stop signal",
			workers: 2,
			cfg:     func(c *Config) { c.MaxUptime = 30 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second, drain: 500 * time.Millisecond}
			},
			run: func(h *harness) {
				h.at(30 * time.Second)
				h.state()
				h.slots()
				h.at(33 * time.Second)
				h.state()
				h.slots()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"30s start g1.s0#2",
				"30s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready], also g1.s0#2 starting",
				"30s slots: s0 recycles 0, restarts 0, backoff 0s; s1 recycles 0, restarts 0, backoff 0s; replacing g1.s0 (max_uptime)",
				"31s g1.s0#2 sends READY=1",
				"31s SIGTERM g1.s0",
				"31s start g1.s1#2",
				"31.5s g1.s0 exited with status 0",
				"32s g1.s1#2 sends READY=1",
				"32s SIGTERM g1.s1",
				"32.5s g1.s1 exited with status 0",
				"33s state: generation 1 serves [s0 g1.s0#2 ready, s1 g1.s1#2 ready]",
				"33s slots: s0 recycles 1, restarts 0, backoff 0s, last recycle max_uptime; s1 recycles 1, restarts 0, backoff 0s, last recycle max_uptime",
			},
		},
		{
			// RSS grows 10 MiB a second from 0 and passes 50 MiB at 5s;
			// baton replaces a worker for its memory once it has run 10s.
			name:    "max_rss: a worker whose resident memory passes the limit is replaced, once it has run MinRecycleAge",
			workers: 1,
			cfg:     func(c *Config) { c.MaxRSS = 50 * mib },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: 500 * time.Millisecond, rss: func(age time.Duration) uint64 { return uint64(age.Seconds() * 10 * float64(mib)) }}
			},
			run: func(h *harness) {
				h.at(9 * time.Second)
				h.state()
				h.at(12 * time.Second)
				h.state()
				h.slots()
			},
			want: []string{
				"0s start g1.s0",
				"500ms g1.s0 sends READY=1",
				"9s state: generation 1 serves [s0 g1.s0 ready]",
				"10s start g1.s0#2",
				"10.5s g1.s0#2 sends READY=1",
				"10.5s SIGTERM g1.s0",
				"10.5s g1.s0 exited with status 0",
				"12s state: generation 1 serves [s0 g1.s0#2 ready]",
				"12s slots: s0 recycles 1, restarts 0, backoff 0s, last recycle max_rss",
			},
		},
		{
			name:    "a replacement that fails leaves the old worker serving; baton tries the slot again after RecycleRetry",
			workers: 1,
			cfg:     func(c *Config) { c.MaxUptime = 20 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if n == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 500 * time.Millisecond, status: 1}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(21 * time.Second)
				h.state()
				h.slots()
				h.at(53 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"1s g1.s0 sends READY=1",
				"20s start g1.s0#2",
				"20.5s g1.s0#2 exited with status 1",
				"21s state: generation 1 serves [s0 g1.s0 ready]",
				"21s slots: s0 recycles 0, restarts 0, backoff 0s",
				"51s start g1.s0#3",
				"52s g1.s0#3 sends READY=1",
				"52s SIGTERM g1.s0",
				"52s g1.s0 exited with status 0",
				"53s state: generation 1 serves [s0 g1.s0#3 ready]",
			},
		},
		{
			name:    "the worker being replaced exits on its own: its replacement takes the slot, no other worker starts",
			workers: 1,
			cfg:     func(c *Config) { c.MaxUptime = 20 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if n == 1 {
					return fakeWorker{ready: time.Second, crash: true, crashAfter: 20500 * time.Millisecond, status: 3}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(20600 * time.Millisecond)
				h.state()
				h.at(22 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"1s g1.s0 sends READY=1",
				"20s start g1.s0#2",
				"20.5s g1.s0 exited with status 3",
				"20.6s state: generation 1 serves [s0 g1.s0#2 starting]",
				"21s g1.s0#2 sends READY=1",
				"22s state: generation 1 serves [s0 g1.s0#2 ready]",
			},
		},
		{
			name:    "a reload while a replacement starts: the reload replaces the slot, and stops the replacement with the old worker",
			workers: 1,
			cfg:     func(c *Config) { c.MaxUptime = 20 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 1 && n == 2 {
					return fakeWorker{ready: 5 * time.Second}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(20500 * time.Millisecond)
				h.reload("r1")
				h.at(23 * time.Second)
				h.state()
				h.slots()
			},
			want: []string{
				"0s start g1.s0",
				"1s g1.s0 sends READY=1",
				"20s start g1.s0#2",
				"20.5s reload r1 asked",
				"20.5s start g2.s0",
				"21.5s g2.s0 sends READY=1",
				"21.5s SIGTERM g1.s0#2",
				"21.5s g1.s0#2 exited with status 0",
				"21.5s SIGTERM g1.s0",
				"21.5s g1.s0 exited with status 0",
				"21.5s reload r1: ok, generation 2 replaces 1",
				"23s state: generation 2 serves [s0 g2.s0 ready]",
				"23s slots: s0 recycles 0, restarts 0, backoff 0s",
			},
		},
		{
			name:    "no recycling while a reload is under way or baton stops",
			workers: 1,
			cfg:     func(c *Config) { c.MaxUptime = 5 * time.Second },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: 10 * time.Second}
				}
				return fakeWorker{ready: time.Second, drain: time.Minute}
			},
			run: func(h *harness) {
				h.at(4 * time.Second)
				h.reload("r1")
				h.at(13 * time.Second)
				h.stop()
				h.at(30 * time.Second)
			},
			want: []string{
				"0s start g1.s0",
				"1s g1.s0 sends READY=1",
				"4s reload r1 asked",
				"4s start g2.s0",
				"13s stop asked",
				"13s SIGTERM g2.s0",
				"13s g2.s0 exited with status 0",
				"13s SIGTERM g1.s0",
				"13s reload r1: reload to generation 2 failed: baton is stopping; generation 1 keeps serving",
			},
		},
	})
}
