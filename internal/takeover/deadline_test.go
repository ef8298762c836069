package takeover

import (
	"fmt"
	"testing"
	"time"
)

// outcome is what happens when a new instance, whose clock starts when it
// asks, has its workers ready at readyAt, the running instance read the
// request lag after it was sent, and a verdict takes transit to cross.
type outcome struct {
	newServes, oldServes bool
}

// play runs a takeover in the window w: the new instance commits if its
// workers are ready before it gives up, and the commit counts if the
// running instance reads it before it stops waiting; otherwise the new
// instance aborts (or is told nothing counted) and stops.
func play(w Window, readyAt, lag, transit time.Duration) outcome {
	if readyAt >= w.GiveUp {
		return outcome{newServes: false, oldServes: true} // it aborted, and stops
	}
	// It committed: it serves from now on, whatever the old one heard.
	heard := readyAt+transit < lag+w.Commit
	return outcome{newServes: true, oldServes: !heard}
}

// TestWindowForNeverBothServe: whatever the readiness rule and whenever
// the new instance's workers are ready, the running instance never stops
// waiting before the new one's verdict, so exactly one instance serves.
// The window of issue 17 comes first: --ready delay:1s with the default
// --ready-timeout of 60s, where the running instance used to wait 61s and
// the new one to give up only at 70s, so that workers ready between the
// two left both serving.
func TestWindowForNeverBothServe(t *testing.T) {
	const readyTimeout = 60 * time.Second // the default --ready-timeout
	for _, tc := range []struct {
		name  string
		ready time.Duration // what the caller passes: the delay, or the ready timeout
	}{
		{"delay:1s", time.Second},
		{"delay:0s", 0},
		{"notify, default timeout", readyTimeout},
		{"bind, 10m timeout", 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := WindowFor(tc.ready)
			if w.Commit-w.GiveUp != CommitMargin || w.GiveUp <= 0 {
				t.Errorf("WindowFor(%s) = %+v: want GiveUp positive and %s before Commit", tc.ready, w, CommitMargin)
			}
			if w.GiveUp < tc.ready {
				t.Errorf("WindowFor(%s) gives up at %s, before the workers' own readiness deadline", tc.ready, w.GiveUp)
			}
			var moments []time.Duration
			for _, m := range []time.Duration{0, tc.ready, w.GiveUp, w.Commit, 61 * time.Second, 65 * time.Second, 70 * time.Second} {
				moments = append(moments, m-time.Millisecond, m, m+time.Millisecond)
			}
			for _, readyAt := range moments {
				for _, lag := range []time.Duration{0, time.Second} {
					for _, transit := range []time.Duration{0, CommitMargin - time.Millisecond} {
						o := play(w, readyAt, lag, transit)
						if o.newServes == o.oldServes {
							t.Errorf("workers ready at %s, request read %s late, verdict %s in transit: new serves %v, old serves %v; want exactly one", readyAt, lag, transit, o.newServes, o.oldServes)
						}
					}
				}
			}
		})
	}

	// The checker catches the old rule: the running instance waited the
	// delay plus a minute, the new one gave up at its ready timeout plus
	// 10s, counted after it had started its supervisor.
	legacy := Window{Commit: time.Second + time.Minute, GiveUp: readyTimeout + 10*time.Second}
	if o := play(legacy, 65*time.Second, 0, 0); !o.newServes || !o.oldServes {
		t.Errorf("the old rule, workers ready at 65s: %+v; want both serving (the bug)", o)
	}
	w := WindowFor(time.Second)
	for at := 61 * time.Second; at <= 70*time.Second; at += time.Second {
		if o := play(w, at, 0, 0); o.newServes || !o.oldServes {
			t.Errorf("delay:1s, workers ready at %s: %+v; want the new instance to have given up (at %s) and the old one serving", at, o, w.GiveUp)
		}
	}
}

// ExampleWindowFor shows the rule for --ready delay:1s.
func ExampleWindowFor() {
	w := WindowFor(time.Second)
	fmt.Printf("the running instance waits %s; the new one gives up after %s\n", w.Commit, w.GiveUp)
	// Output: the running instance waits 1m1s; the new one gives up after 51s
}
