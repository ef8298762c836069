package supervisor

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/api"
)

func intp(n int) *int { return &n }

func durp(d time.Duration) *time.Duration { return &d }

// TestRollout drives rolling and canary reloads through the in-process
// harness (fake workers, fake clock: fake_test.go) and compares the
// trace with the one each case wants, and the most fake workers that
// were ever live at once with the bound the rollout promises.
func TestRollout(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*Config)
		workers int
		behave  func(gen, slot, n int) fakeWorker
		run     func(h *harness)
		want    []string
		// maxLive is the most workers that may be live at once.
		maxLive int
	}{
		{
			name:    "rolling: one slot at a time, each new worker ready before its old one drains, never more than slots+1 workers",
			workers: 4,
			cfg:     func(c *Config) { c.Rollout.Rolling = 1 },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second, drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(7500 * time.Millisecond)
				h.rollout()
				h.state()
				h.at(30 * time.Second)
				h.state()
				h.rollout()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"0s start g1.s3",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"1s g1.s3 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"7.5s rollout: waiting, done [0], starting [], waiting [1 2 3], 5 workers live",
				"7.5s state: generation 1 serves [s0 g1.s0 draining, s1 g1.s1 ready, s2 g1.s2 ready, s3 g1.s3 ready], generation 2 pending, also g2.s0 ready",
				"8s g1.s0 exited with status 0",
				"8s start g2.s1",
				"9s g2.s1 sends READY=1",
				"9s SIGTERM g1.s1",
				"11s g1.s1 exited with status 0",
				"11s start g2.s2",
				"12s g2.s2 sends READY=1",
				"12s SIGTERM g1.s2",
				"14s g1.s2 exited with status 0",
				"14s start g2.s3",
				"15s g2.s3 sends READY=1",
				"15s SIGTERM g1.s3",
				"15s reload r1: ok, generation 2 replaces 1",
				"17s g1.s3 exited with status 0",
				"30s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready, s2 g2.s2 ready, s3 g2.s3 ready]",
				"30s rollout: none, 4 workers live",
			},
			maxLive: 5,
		},
		{
			name:    "rolling: two slots at a time, never more than slots+2 workers",
			workers: 4,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second, drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reloadWith("r1", ReloadOptions{Rolling: intp(2)})
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"0s start g1.s3",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"1s g1.s3 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s start g2.s1",
				"6s g2.s0 sends READY=1",
				"6s g2.s1 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s SIGTERM g1.s1",
				"8s g1.s0 exited with status 0",
				"8s g1.s1 exited with status 0",
				"8s start g2.s2",
				"8s start g2.s3",
				"9s g2.s2 sends READY=1",
				"9s g2.s3 sends READY=1",
				"9s SIGTERM g1.s2",
				"9s SIGTERM g1.s3",
				"9s reload r1: ok, generation 2 replaces 1",
				"11s g1.s2 exited with status 0",
				"11s g1.s3 exited with status 0",
				"30s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready, s2 g2.s2 ready, s3 g2.s3 ready]",
			},
			maxLive: 6,
		},
		{
			name:    "rolling: a new worker that cannot become ready stops the roll, and the slots it replaced roll back, the last first",
			workers: 4,
			// One failure is a crash loop (start_limit_burst 1): the
			// case is the rollback, not the restarts before it.
			cfg: func(c *Config) { c.Rollout.Rolling, c.StartLimitBurst = 1, 1 },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 2 {
					return fakeWorker{ready: never, crash: true, crashAfter: 500 * time.Millisecond, status: 1}
				}
				return fakeWorker{ready: time.Second, drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(11600 * time.Millisecond)
				h.rollout()
				h.at(40 * time.Second)
				h.state()
				h.rollout()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"0s start g1.s3",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"1s g1.s3 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"8s g1.s0 exited with status 0",
				"8s start g2.s1",
				"9s g2.s1 sends READY=1",
				"9s SIGTERM g1.s1",
				"11s g1.s1 exited with status 0",
				"11s start g2.s2",
				"11.5s g2.s2 exited with status 1",
				"11.5s start g1.s1#2",
				"11.6s rollout: rolling back, done [0 1], starting [1], waiting [0], 5 workers live",
				"12.5s g1.s1#2 sends READY=1",
				"12.5s SIGTERM g2.s1",
				"14.5s g2.s1 exited with status 0",
				"14.5s start g1.s0#2",
				"15.5s g1.s0#2 sends READY=1",
				"15.5s SIGTERM g2.s0",
				"15.5s reload r1: reload to generation 2 failed: worker slot 2 of generation 2 is crash-looping: 1 of its workers failed within 10s (start_limit_burst 1 in start_limit_interval 10s), the last: worker g2.s2 exited with status 1 after 500ms; slots [0 1] were rolled back: generation 1 serves every slot again",
				"17.5s g2.s0 exited with status 0",
				"40s state: generation 1 serves [s0 g1.s0#2 ready, s1 g1.s1#2 ready, s2 g1.s2 ready, s3 g1.s3 ready]",
				"40s rollout: none, 4 workers live",
			},
			maxLive: 5,
		},
		{
			name:    "rolling: a replaced worker that crashes mid-roll fails it; its empty slot rolls back first",
			workers: 3,
			// One failure is a crash loop (start_limit_burst 1): the
			// case is the rollback, not the restarts before it.
			cfg: func(c *Config) { c.Rollout.Rolling, c.StartLimitBurst = 1, 1 },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second, drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(11500 * time.Millisecond)
				h.crash("g2.s0", 2)
				h.rollout()
				h.at(40 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"8s g1.s0 exited with status 0",
				"8s start g2.s1",
				"9s g2.s1 sends READY=1",
				"9s SIGTERM g1.s1",
				"11s g1.s1 exited with status 0",
				"11s start g2.s2",
				"11.5s g2.s0 exited with status 2",
				"11.5s SIGTERM g2.s2",
				"11.5s start g1.s0#2",
				"11.5s rollout: rolling back, done [0 1], starting [0], waiting [1], 4 workers live",
				"12s g2.s2 sends READY=1",
				"12.5s g1.s0#2 sends READY=1",
				"13.5s g2.s2 exited with status 0",
				"13.5s start g1.s1#2",
				"14.5s g1.s1#2 sends READY=1",
				"14.5s SIGTERM g2.s1",
				"14.5s reload r1: reload to generation 2 failed: worker slot 0 of generation 2 is crash-looping: 1 of its workers failed within 10s (start_limit_burst 1 in start_limit_interval 10s), the last: worker g2.s0 exited with status 2 after 6.5s; slots [0 1] were rolled back: generation 1 serves every slot again",
				"16.5s g2.s1 exited with status 0",
				"40s state: generation 1 serves [s0 g1.s0#2 ready, s1 g1.s1#2 ready, s2 g1.s2 ready]",
			},
			maxLive: 4,
		},
		{
			name:    "rolling back: a slot whose previous worker fails again keeps the new worker until the previous generation's restart is ready",
			workers: 2,
			// One failure is a crash loop (start_limit_burst 1): the
			// case is the rollback, not the restarts before it.
			cfg: func(c *Config) { c.Rollout.Rolling, c.StartLimitBurst = 1, 1 },
			behave: func(gen, slot, n int) fakeWorker {
				switch {
				case gen == 2 && slot == 1:
					return fakeWorker{ready: never, crash: true, crashAfter: 500 * time.Millisecond, status: 1}
				case gen == 1 && slot == 0 && n == 2:
					return fakeWorker{ready: never, crash: true, crashAfter: 300 * time.Millisecond, status: 3}
				}
				return fakeWorker{ready: time.Second, drain: 2 * time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.state()
				h.at(20 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"8s g1.s0 exited with status 0",
				"8s start g2.s1",
				"8.5s g2.s1 exited with status 1",
				"8.5s start g1.s0#2",
				"8.8s g1.s0#2 exited with status 3",
				"8.8s reload r1: reload to generation 2 failed: worker slot 1 of generation 2 is crash-looping: 1 of its workers failed within 10s (start_limit_burst 1 in start_limit_interval 10s), the last: worker g2.s1 exited with status 1 after 500ms; generation 1's workers failed again in slots [0], which generation 2's workers serve until generation 1's restart there is ready (baton status shows why)",
				"8.9s start g1.s0#3",
				"9.9s g1.s0#3 sends READY=1",
				"9.9s SIGTERM g2.s0",
				"10s state: generation 1 serves [s0 g1.s0#3 ready, s1 g1.s1 ready], also g2.s0 draining",
				"11.9s g2.s0 exited with status 0",
				"20s state: generation 1 serves [s0 g1.s0#3 ready, s1 g1.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "rolling: reloads and scales asked during a roll wait for it; the reload that serves them rolls with the last request's options",
			workers: 2,
			cfg:     func(c *Config) { c.Rollout.Rolling = 1 },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.signalReload()
				h.scale(3)
				h.reloadWith("r2", ReloadOptions{Rolling: intp(2)})
				h.rollout()
				h.at(20 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"5s SIGHUP",
				"5s scale to 3 asked",
				"5s reload r2 asked",
				"5s rollout: rolling, done [], starting [0], waiting [1], 3 workers live",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s g1.s0 exited with status 0",
				"6s start g2.s1",
				"7s g2.s1 sends READY=1",
				"7s SIGTERM g1.s1",
				"7s g1.s1 exited with status 0",
				"7s start g2.s2",
				"7s reload r1: ok, generation 2 replaces 1",
				"7s scale to 3: from 2, started [2], stopped []",
				"7s start g3.s0",
				"7s start g3.s1",
				"8s g2.s2 sends READY=1",
				"8s g3.s0 sends READY=1",
				"8s g3.s1 sends READY=1",
				"8s SIGTERM g2.s0",
				"8s g2.s0 exited with status 0",
				"8s SIGTERM g2.s1",
				"8s g2.s1 exited with status 0",
				"8s start g3.s2",
				"9s g3.s2 sends READY=1",
				"9s SIGTERM g2.s2",
				"9s g2.s2 exited with status 0",
				"9s reload r2: ok, generation 3 replaces 2",
				"20s state: generation 3 serves [s0 g3.s0 ready, s1 g3.s1 ready, s2 g3.s2 ready]",
			},
			maxLive: 5,
		},
		{
			name:    "rolling: a stop during the roll fails the reload and stops every worker",
			workers: 3,
			cfg:     func(c *Config) { c.Rollout.Rolling = 1 },
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(6500 * time.Millisecond)
				h.stop()
				h.at(10 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"6s SIGTERM g1.s0",
				"6s g1.s0 exited with status 0",
				"6s start g2.s1",
				"6.5s stop asked",
				"6.5s SIGTERM g2.s1",
				"6.5s g2.s1 exited with status 0",
				"6.5s SIGTERM g2.s0",
				"6.5s g2.s0 exited with status 0",
				"6.5s SIGTERM g1.s1",
				"6.5s g1.s1 exited with status 0",
				"6.5s SIGTERM g1.s2",
				"6.5s g1.s2 exited with status 0",
				"6.5s reload r1: reload to generation 2 failed: baton is stopping; every worker drains",
				"10s state: generation 1 serves [s0 empty, s1 empty, s2 empty], finished",
			},
			maxLive: 4,
		},
		{
			name:    "rolling: the next batch waits for workers of an earlier generation still draining",
			workers: 2,
			cfg:     func(c *Config) { c.Rollout.Rolling = 1 },
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 1 {
					return fakeWorker{ready: time.Second, drain: 5 * time.Second}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(2 * time.Second)
				h.reloadWith("r1", ReloadOptions{Rolling: intp(0)})
				h.reload("r2")
				h.at(20 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"2s reload r1 asked",
				"2s start g2.s0",
				"2s start g2.s1",
				"2s reload r2 asked",
				"3s g2.s0 sends READY=1",
				"3s g2.s1 sends READY=1",
				"3s SIGTERM g1.s0",
				"3s SIGTERM g1.s1",
				"3s reload r1: ok, generation 2 replaces 1",
				"8s g1.s0 exited with status 0",
				"8s g1.s1 exited with status 0",
				"8s start g3.s0",
				"9s g3.s0 sends READY=1",
				"9s SIGTERM g2.s0",
				"9s g2.s0 exited with status 0",
				"9s start g3.s1",
				"10s g3.s1 sends READY=1",
				"10s SIGTERM g2.s1",
				"10s g2.s1 exited with status 0",
				"10s reload r2: ok, generation 3 replaces 2",
				"20s state: generation 3 serves [s0 g3.s0 ready, s1 g3.s1 ready]",
			},
			maxLive: 4,
		},
		{
			name:    "rolling: a worker that survives even SIGKILL holds the next batch only until the drain timeout and 10s",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout.Rolling = 1
				c.DrainTimeout = 5 * time.Second
			},
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 1 && slot == 0 {
					return fakeWorker{ready: time.Second, ignoreStop: true, unkillable: true}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(2 * time.Second)
				h.reload("r1")
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"2s reload r1 asked",
				"2s start g2.s0",
				"3s g2.s0 sends READY=1",
				"3s SIGTERM g1.s0",
				"8s SIGKILL group g1.s0",
				"18s start g2.s1",
				"19s g2.s1 sends READY=1",
				"19s SIGTERM g1.s1",
				"19s g1.s1 exited with status 0",
				"19s reload r1: ok, generation 2 replaces 1",
				"30s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready], also g1.s0 draining",
			},
			maxLive: 4,
		},
		{
			name:    "canary: the first slot runs beside its old worker for the window, passes, and the rest roll one at a time",
			workers: 3,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Rolling: 1, Canary: 1, CanaryWindow: 30 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second, drain: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(20 * time.Second)
				h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "120", "X_BATON_ERRORS": "0"})
				h.rollout()
				h.state()
				h.at(60 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"20s g2.s0 sends X_BATON_ACCEPTED=120 X_BATON_ERRORS=0",
				"20s rollout: canary, done [], starting [0], waiting [1 2], canary watching, 4 workers live",
				"20s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready, s2 g1.s2 ready], generation 2 pending, also g2.s0 ready",
				"36s SIGTERM g1.s0",
				"37s g1.s0 exited with status 0",
				"37s start g2.s1",
				"38s g2.s1 sends READY=1",
				"38s SIGTERM g1.s1",
				"39s g1.s1 exited with status 0",
				"39s start g2.s2",
				"40s g2.s2 sends READY=1",
				"40s SIGTERM g1.s2",
				"40s reload r1: ok, generation 2 replaces 1",
				"41s g1.s2 exited with status 0",
				"1m0s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready, s2 g2.s2 ready]",
			},
			maxLive: 4,
		},
		{
			name:    "canary: then every slot left at once",
			workers: 3,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Canary: 1, CanaryWindow: 10 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"16s SIGTERM g1.s0",
				"16s g1.s0 exited with status 0",
				"16s start g2.s1",
				"16s start g2.s2",
				"17s g2.s1 sends READY=1",
				"17s g2.s2 sends READY=1",
				"17s SIGTERM g1.s1",
				"17s g1.s1 exited with status 0",
				"17s SIGTERM g1.s2",
				"17s g1.s2 exited with status 0",
				"17s reload r1: ok, generation 2 replaces 1",
				"30s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready, s2 g2.s2 ready]",
			},
			maxLive: 6,
		},
		{
			name:    "canary: one that crashes during the window is rolled back with the reason; the old generation is untouched",
			workers: 3,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Rolling: 1, Canary: 1, CanaryWindow: 30 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: time.Second, crash: true, crashAfter: 3 * time.Second, status: 2}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(60 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s start g1.s2",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"1s g1.s2 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"8s g2.s0 exited with status 2",
				"8s reload r1: reload to generation 2 failed: the canary (slot 0) failed: its worker in slot 0 (g2.s0) exited with status 2 after 3s up; the canary was stopped; generation 1 keeps serving, untouched",
				"1m0s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready, s2 g1.s2 ready]",
			},
			maxLive: 4,
		},
		{
			name:    "canary: errors it reports (X_BATON_ERRORS) over canary_max_errors roll it back at once",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Rolling: 1, Canary: 1, CanaryWindow: 30 * time.Second, CanaryMaxErrors: 2}
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "10", "X_BATON_ERRORS": "2"})
				h.at(12 * time.Second)
				h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "20", "X_BATON_ERRORS": "3"})
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"10s g2.s0 sends X_BATON_ACCEPTED=10 X_BATON_ERRORS=2",
				"12s g2.s0 sends X_BATON_ACCEPTED=20 X_BATON_ERRORS=3",
				"12s SIGTERM g2.s0",
				"12s g2.s0 exited with status 0",
				"12s reload r1: reload to generation 2 failed: the canary (slot 0) failed: it reported 3 errors (X_BATON_ERRORS) for 20 connections accepted (15%): more than canary_max_errors (2); fix the new version, or raise canary_max_errors (or set canary_max_error_rate) if that is its normal rate; the canary was stopped; generation 1 keeps serving, untouched",
				"12s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "canary: with canary_max_error_rate, errors are judged against its connections at the window's end",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Canary: 1, CanaryWindow: 30 * time.Second, CanaryMaxErrorRate: 5}
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "100", "X_BATON_ERRORS": "4"})
				h.at(40 * time.Second)
				h.reload("r2")
				h.at(50 * time.Second)
				h.send("g3.s0", map[string]string{"X_BATON_ACCEPTED": "100", "X_BATON_ERRORS": "9"})
				h.at(80 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"10s g2.s0 sends X_BATON_ACCEPTED=100 X_BATON_ERRORS=4",
				"36s SIGTERM g1.s0",
				"36s g1.s0 exited with status 0",
				"36s start g2.s1",
				"37s g2.s1 sends READY=1",
				"37s SIGTERM g1.s1",
				"37s g1.s1 exited with status 0",
				"37s reload r1: ok, generation 2 replaces 1",
				"40s reload r2 asked",
				"40s start g3.s0",
				"41s g3.s0 sends READY=1",
				"50s g3.s0 sends X_BATON_ACCEPTED=100 X_BATON_ERRORS=9",
				"1m11s SIGTERM g3.s0",
				"1m11s g3.s0 exited with status 0",
				"1m11s reload r2: reload to generation 3 failed: the canary (slot 0) failed: it reported 9 errors (X_BATON_ERRORS) for 100 connections accepted (9%): more than canary_max_errors (0) and than canary_max_error_rate (5% of its connections); fix the new version, or raise them if that is its normal rate; the canary was stopped; generation 2 keeps serving, untouched",
				"1m20s state: generation 2 serves [s0 g2.s0 ready, s1 g2.s1 ready]",
			},
			maxLive: 4,
		},
		{
			name:    "canary: one that recycles itself (status 0 after 10s up) is restarted in its slot and the window goes on",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Rolling: 1, Canary: 1, CanaryWindow: 30 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 && slot == 0 && n == 1 {
					return fakeWorker{ready: time.Second, crash: true, crashAfter: 25 * time.Second}
				}
				if gen == 2 && slot == 0 && n == 2 {
					return fakeWorker{ready: 10 * time.Second}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(36 * time.Second)
				h.rollout()
				h.at(60 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"30s g2.s0 exited with status 0",
				"30s start g2.s0#2",
				"36s rollout: canary, done [], starting [0], waiting [1], canary watching, 3 workers live",
				"40s g2.s0#2 sends READY=1",
				"40s SIGTERM g1.s0",
				"40s g1.s0 exited with status 0",
				"40s start g2.s1",
				"41s g2.s1 sends READY=1",
				"41s SIGTERM g1.s1",
				"41s g1.s1 exited with status 0",
				"41s reload r1: ok, generation 2 replaces 1",
				"1m0s state: generation 2 serves [s0 g2.s0#2 ready, s1 g2.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "canary: a clean exit sooner than 10s up fails it",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Canary: 1, CanaryWindow: 30 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: time.Second, crash: true, crashAfter: 4 * time.Second}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(60 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"9s g2.s0 exited with status 0",
				"9s reload r1: reload to generation 2 failed: the canary (slot 0) failed: its worker in slot 0 (g2.s0) exited with status 0 after 4s up (a clean exit counts as a worker recycling itself only after 10s up); the canary was stopped; generation 1 keeps serving, untouched",
				"1m0s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "canary: one that accepts nothing while the old workers accept plenty is rolled back",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Canary: 1, CanaryWindow: 20 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.send("g1.s0", map[string]string{"X_BATON_ACCEPTED": "1000"})
				h.send("g1.s1", map[string]string{"X_BATON_ACCEPTED": "1000"})
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(10 * time.Second)
				h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "0"})
				h.send("g1.s0", map[string]string{"X_BATON_ACCEPTED": "1100"})
				h.send("g1.s1", map[string]string{"X_BATON_ACCEPTED": "1100"})
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"0s g1.s0 sends X_BATON_ACCEPTED=1000",
				"0s g1.s1 sends X_BATON_ACCEPTED=1000",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"10s g2.s0 sends X_BATON_ACCEPTED=0",
				"10s g1.s0 sends X_BATON_ACCEPTED=1100",
				"10s g1.s1 sends X_BATON_ACCEPTED=1100",
				"26s SIGTERM g2.s0",
				"26s g2.s0 exited with status 0",
				"26s reload r1: reload to generation 2 failed: the canary (slot 0) failed: it accepted no connection (X_BATON_ACCEPTED) in its 20s window while generation 1's workers accepted 200: it is not serving the socket baton passes it (does it bind a port of its own, or ignore LISTEN_FDS?); the canary was stopped; generation 1 keeps serving, untouched",
				"30s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "canary: one that is never ready fails at its readiness deadline, the old generation untouched",
			workers: 2,
			cfg: func(c *Config) {
				c.Rollout = Rollout{Canary: 1, CanaryWindow: 30 * time.Second}
			},
			behave: func(gen, slot, n int) fakeWorker {
				if gen == 2 {
					return fakeWorker{ready: never}
				}
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reload("r1")
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"15s SIGTERM g2.s0",
				"15s g2.s0 exited with status 0",
				"15s reload r1: reload to generation 2 failed: worker slot 0 (g2.s0) of generation 2 did not send READY=1 within 10s; the canary was stopped; generation 1 keeps serving, untouched",
				"30s state: generation 1 serves [s0 g1.s0 ready, s1 g1.s1 ready]",
			},
			maxLive: 3,
		},
		{
			name:    "canary: asked for one reload only (baton reload --canary), over a configuration without one",
			workers: 2,
			behave: func(gen, slot, n int) fakeWorker {
				return fakeWorker{ready: time.Second}
			},
			run: func(h *harness) {
				h.at(5 * time.Second)
				h.reloadWith("r1", ReloadOptions{Canary: intp(1), CanaryWindow: durp(5 * time.Second), Rolling: intp(1)})
				h.at(20 * time.Second)
				h.reload("r2")
				h.at(30 * time.Second)
				h.state()
			},
			want: []string{
				"0s start g1.s0",
				"0s start g1.s1",
				"1s g1.s0 sends READY=1",
				"1s g1.s1 sends READY=1",
				"5s reload r1 asked",
				"5s start g2.s0",
				"6s g2.s0 sends READY=1",
				"11s SIGTERM g1.s0",
				"11s g1.s0 exited with status 0",
				"11s start g2.s1",
				"12s g2.s1 sends READY=1",
				"12s SIGTERM g1.s1",
				"12s g1.s1 exited with status 0",
				"12s reload r1: ok, generation 2 replaces 1",
				"20s reload r2 asked",
				"20s start g3.s0",
				"20s start g3.s1",
				"21s g3.s0 sends READY=1",
				"21s g3.s1 sends READY=1",
				"21s SIGTERM g2.s0",
				"21s g2.s0 exited with status 0",
				"21s SIGTERM g2.s1",
				"21s g2.s1 exited with status 0",
				"21s reload r2: ok, generation 3 replaces 2",
				"30s state: generation 3 serves [s0 g3.s0 ready, s1 g3.s1 ready]",
			},
			maxLive: 4,
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
			if h.procs.maxLive > tt.maxLive {
				t.Errorf("%d workers were live at once; the rollout allows %d", h.procs.maxLive, tt.maxLive)
			}
		})
	}
}

// TestRolloutStatus: during a rolling reload the status says which
// slots are done, starting and waiting, a replaced slot is up with the
// new generation's worker, and the reload's result keeps how the
// rollout ended.
func TestRolloutStatus(t *testing.T) {
	cfg := testConfig(3)
	cfg.Rollout = Rollout{Rolling: 1, Canary: 1, CanaryWindow: 10 * time.Second}
	h := newHarness(t, cfg, func(gen, slot, n int) fakeWorker {
		return fakeWorker{ready: time.Second, drain: 5 * time.Second}
	})
	h.at(2 * time.Second)
	h.reload("r1")
	h.at(4 * time.Second)
	h.send("g2.s0", map[string]string{"X_BATON_ACCEPTED": "7", "X_BATON_ERRORS": "0"})

	st := h.s.status()
	if st.Rollout == nil || st.Rollout.Phase != api.RolloutCanary || st.Rollout.Canary == nil || st.Rollout.Canary.Verdict != api.CanaryWatching {
		t.Fatalf("status during the canary window: rollout %+v, want phase canary, verdict watching", st.Rollout)
	}
	c := st.Rollout.Canary
	if c.Errors == nil || *c.Errors != 0 || c.Accepted == nil || *c.Accepted != 7 || !c.Until.Equal(h.t0.Add(13*time.Second)) {
		t.Errorf("canary status %+v: want 0 errors, 7 accepted, until 13s", c)
	}

	h.at(18500 * time.Millisecond) // the canary passed at 13s, its slot's old worker exited at 18s, slot 1 started then
	st = h.s.status()
	want := &api.RolloutStatus{Generation: 2, Previous: 1, Batch: 1, MaxWorkers: 4, Phase: api.RolloutRolling,
		Done: []int{0}, Starting: []int{1}, Waiting: []int{2}}
	got := *st.Rollout
	got.Canary = nil
	if diff := cmp.Diff(want, &got); diff != "" {
		t.Errorf("rollout status (-want +got):\n%s", diff)
	}
	if st.Rollout.Canary.Verdict != api.CanaryPromoted {
		t.Errorf("canary verdict %q, want %q", st.Rollout.Canary.Verdict, api.CanaryPromoted)
	}
	var gens []int
	for _, sl := range st.SlotStates {
		if sl.State != api.SlotUp {
			t.Errorf("slot %d is %s during the roll, want up", sl.Slot, sl.State)
		}
		gens = append(gens, sl.Generation)
	}
	if diff := cmp.Diff([]int{2, 1, 1}, gens); diff != "" {
		t.Errorf("generation serving each slot (-want +got):\n%s", diff)
	}

	h.at(time.Minute)
	st = h.s.status()
	last := st.Reloads.Last
	if st.Rollout != nil || last == nil || !last.OK || last.Rollout == nil || last.Rollout.Phase != api.RolloutDone ||
		!slices.Equal(last.Rollout.Done, []int{0, 1, 2}) || last.Rollout.Canary.Verdict != api.CanaryPromoted {
		t.Errorf("after the reload: rollout %+v, last reload %+v; want no rollout, the last one done with slots 0, 1, 2 and its canary promoted", st.Rollout, last)
	}
}

// TestReloadOptions: a reload's overrides win over the configuration's
// rollout, field by field, and staged says when slots are replaced
// otherwise than all at once.
func TestReloadOptions(t *testing.T) {
	cfg := Rollout{Rolling: 2, Canary: 1, CanaryWindow: time.Minute, CanaryMaxErrors: 3}
	tests := []struct {
		name   string
		o      ReloadOptions
		want   Rollout
		staged bool // with 4 slots
	}{
		{"none", ReloadOptions{}, cfg, true},
		{"all at once", ReloadOptions{Rolling: intp(0), Canary: intp(0)}, Rollout{CanaryWindow: time.Minute, CanaryMaxErrors: 3}, false},
		{"rolling as many as the slots", ReloadOptions{Rolling: intp(4), Canary: intp(0)}, Rollout{Rolling: 4, CanaryWindow: time.Minute, CanaryMaxErrors: 3}, false},
		{"window", ReloadOptions{CanaryWindow: durp(time.Second)}, Rollout{Rolling: 2, Canary: 1, CanaryWindow: time.Second, CanaryMaxErrors: 3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.o.over(cfg)
			if got != tt.want {
				t.Errorf("over: %+v, want %+v", got, tt.want)
			}
			if got.staged(4) != tt.staged {
				t.Errorf("staged(4) = %v, want %v", got.staged(4), tt.staged)
			}
		})
	}
	if s := (Rollout{Canary: 1, Rolling: 1}).String(); s != "canary 1 for 30s, then rolling 1 at a time" {
		t.Errorf("String: %q", s)
	}
}

// TestKernelVerdict: a warning about a canary worker fails it unless a
// worker of the previous generation has the same one.
func TestKernelVerdict(t *testing.T) {
	warn := func(code api.WarningCode, pid int) api.Warning {
		return api.Warning{Code: code, PID: pid, Message: fmt.Sprintf("%s on pid %d", code, pid)}
	}
	prev := map[int]bool{10: true, 11: true}
	tests := []struct {
		name     string
		warnings []api.Warning
		want     string
	}{
		{"nothing", nil, ""},
		{"the previous generation's own", []api.Warning{warn(api.CloseWait, 10)}, ""},
		{"a listener's, no worker's", []api.Warning{{Code: api.AcceptQueueFull, Listener: "http", Message: "full"}}, ""},
		{"shared by both generations", []api.Warning{warn(api.NofileDefault, 10), warn(api.NofileDefault, 20)}, ""},
		{"the canary's alone", []api.Warning{warn(api.NofileDefault, 10), warn(api.CloseWait, 20)},
			"the kernel's view shows what the previous generation does not: close_wait: close_wait on pid 20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := kernelVerdict(&api.KernelView{Warnings: tt.warnings}, []int{20}, prev)
			if got != tt.want {
				t.Errorf("kernelVerdict = %q, want %q", got, tt.want)
			}
		})
	}
}
