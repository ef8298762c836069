package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// printRollout writes the rolling or canary reload under way, if any:
//
//	rollout: generation 5 replaces 4, 1 slot at a time (at most 5 workers): rolling;
//	    done [0 1], starting [2], waiting [3]
//	  canary slot 0 (pid 4242): watching, 12s left of 30s; 0 errors, 120 connections
//	    accepted (generation 4: 950)
func printRollout(w io.Writer, st api.Status, now time.Time) {
	ro := st.Rollout
	if ro == nil {
		return
	}
	how := "the rest at once"
	switch {
	case ro.Batch == 1:
		how = "1 slot at a time"
	case ro.Batch > 1:
		how = fmt.Sprintf("%d slots at a time", ro.Batch)
	}
	if ro.MaxWorkers > 0 {
		how += fmt.Sprintf(" (at most %d workers)", ro.MaxWorkers)
	}
	line := fmt.Sprintf("rollout: generation %d replaces %d, %s: %s; done %v, starting %v, waiting %v",
		ro.Generation, ro.Previous, how, ro.Phase, ro.Done, ro.Starting, ro.Waiting)
	if ro.Phase == api.RolloutRollingBack {
		line += fmt.Sprintf(", rolled back %v", ro.RolledBack)
		if len(ro.Kept) > 0 {
			line += fmt.Sprintf(", kept %v", ro.Kept)
		}
		line += "; because " + ro.Error
	}
	for _, l := range wrap(line, statusWidth, "", "    ") {
		fmt.Fprintln(w, l)
	}
	if c := ro.Canary; c != nil {
		line := fmt.Sprintf("canary %s", slotWords(c.Slots))
		if len(c.PIDs) > 0 {
			var pids []string
			for _, p := range c.PIDs {
				pids = append(pids, fmt.Sprint(p))
			}
			line += " (pid " + strings.Join(pids, ", ") + ")"
		}
		line += ": " + c.Verdict
		if c.Verdict == api.CanaryWatching && !c.Until.IsZero() {
			line += fmt.Sprintf(", %s left of %s", soon(api.Duration(max(c.Until.Sub(now), 0))), time.Duration(c.Window))
		}
		line += "; " + canaryCounts(c)
		if c.Reason != "" {
			line += "; " + c.Reason
		}
		for _, l := range wrap(line, statusWidth, "  ", "    ") {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintln(w)
}

// canaryCounts says what a canary reported: "2 errors (at most 0), 120
// connections accepted (generation 4: 950)".
func canaryCounts(c *api.CanaryStatus) string {
	var parts []string
	if c.Errors != nil {
		limit := fmt.Sprintf("at most %d", c.MaxErrors)
		if c.MaxErrorRate > 0 {
			limit += fmt.Sprintf(", or %g%% of its connections", c.MaxErrorRate)
		}
		parts = append(parts, fmt.Sprintf("%d errors (%s)", *c.Errors, limit))
	} else {
		parts = append(parts, "no errors reported")
	}
	if c.Accepted != nil {
		s := fmt.Sprintf("%d connections accepted", *c.Accepted)
		if c.PreviousAccepted != nil {
			s += fmt.Sprintf(" (the old workers: %d)", *c.PreviousAccepted)
		}
		parts = append(parts, s)
	}
	if c.Recycled > 0 {
		parts = append(parts, fmt.Sprintf("recycled %d times", c.Recycled))
	}
	if c.HostResets != nil {
		parts = append(parts, fmt.Sprintf("the host reset %d connections meanwhile", *c.HostResets))
	}
	return strings.Join(parts, ", ")
}
