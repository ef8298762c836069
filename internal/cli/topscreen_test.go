package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/baton-dev/baton/internal/api"
)

// manyWorkers is wideStatus with n ready workers of the serving
// generation after its two.
func manyWorkers(n int) api.Status {
	st := wideStatus()
	for i := range n {
		st.Workers = append(st.Workers, api.WorkerStatus{Slot: i + 1, Generation: 12345, PID: 5000 + i, State: api.WorkerReady, Uptime: api.Duration(3 * time.Hour)})
	}
	return st
}

// checkScreen fails the test when the frame does not fit rows by cols.
func checkScreen(t *testing.T, frame string, rows, cols int) []string {
	t.Helper()
	lines := strings.Split(frame, "\n")
	if len(lines) > rows {
		t.Errorf("%d lines on a screen of %d rows:\n%s", len(lines), rows, frame)
	}
	for i, l := range lines {
		if n := utf8.RuneCountInString(l); n > cols {
			t.Errorf("line %d is %d columns on a screen of %d: %q", i+1, n, cols, l)
		}
	}
	return lines
}

// At 80x24 the frame fits, and what needs acting on is on it whatever
// the number of workers: every listener, every warning and every slot
// without a worker, one line each; the workers that do not fit are
// counted by state on a line of their own.
func TestScreenFrameFits80x24(t *testing.T) {
	for _, n := range []int{0, 2, 64} {
		t.Run(fmt.Sprintf("%d workers", n+2), func(t *testing.T) {
			st := manyWorkers(n)
			frame := screenFrame(&st, nil, "ListenOverflows +3, ListenDrops +3", time.Second, time.Now(), 24, 80)
			lines := checkScreen(t, frame, 24, 80)
			for _, want := range []string{
				"pid 4120 running, up 5m0s, generation 12345 (12346 starting), ready notify", "health: DEGRADED: ",
				"since the last frame: ListenOverflows +3",
				"LISTENER", "]:65535", "4100/8192", "dns",
				"warnings (2; baton status has them whole):", "! backlog_clamped: listener http: backlog 65535 is capped",
				"! close_wait: worker slot 4095 holds 88888", "kernel view incomplete: sock_diag unix",
				"slots without a worker (1):", "! slot 7: backoff, next in 2.3s (restarts 5): starting worker slot 7",
				"SLOT GEN", "RESTARTS RSS CPU FDS", "4095 12345 4194304 draining 4d4h ",
			} {
				if !strings.Contains(frame, want) {
					t.Errorf("frame lacks %q:\n%s", want, frame)
				}
			}
			switch {
			case n < 8 && strings.Contains(frame, "more:"):
				t.Errorf("%d workers fit, yet the frame says there are more:\n%s", n+2, frame)
			case n >= 8 && !strings.Contains(frame, " more: ") || n >= 8 && !strings.Contains(frame, " ready (a taller terminal, or baton status, shows them)"):
				t.Errorf("frame of %d workers does not count those it leaves out:\n%s", n+2, frame)
			}
			if n >= 8 && len(lines) != 24 {
				t.Errorf("%d lines with workers left out; want the screen's 24", len(lines))
			}
		})
	}
}

// A taller and wider terminal shows more workers, every one when they
// fit; a frame without a fresh status says why, above the last one.
func TestScreenFrameUsesTheScreen(t *testing.T) {
	st := manyWorkers(64)
	tall := screenFrame(&st, nil, "", time.Second, time.Now(), 100, 120)
	checkScreen(t, tall, 100, 120)
	if strings.Contains(tall, "more:") || !strings.Contains(tall, " 5063 ") {
		t.Errorf("a 100-row screen does not show all 66 workers:\n%s", tall)
	}
	failed := screenFrame(&st, errors.New("no baton is running at /run/baton/web.sock"), "", time.Second, time.Now(), 24, 80)
	checkScreen(t, failed, 24, 80)
	if !strings.Contains(failed, "no status: no baton is running") || !strings.Contains(failed, "LISTENER") {
		t.Errorf("a frame without a status does not say why above the last one:\n%s", failed)
	}
}
