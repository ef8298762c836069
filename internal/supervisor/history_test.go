package supervisor

import (
	"errors"
	"strings"
	"testing"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/listener"
)

// TestHistoryBounded: every reload's outcome lands in the status history,
// oldest first, and only the last api.MaxHistory are kept; a snapshot's
// history is a copy the loop does not write to.
func TestHistoryBounded(t *testing.T) {
	s := loopOnly(t, func([]*listener.Group, int) (*Plan, error) {
		return nil, errors.New("no such binary")
	})
	n := api.MaxHistory + 5
	for i := range n {
		o := outcome(t, s.Reload("test "+strings.Repeat("x", i)), "reload")
		if o.Err == nil {
			t.Fatalf("reload %d: want the prepare error", i)
		}
	}
	var h []HistoryEntry
	s.call(func() { h = boundHistory(s.stats.history) }) // what status() reports
	if len(h) != api.MaxHistory {
		t.Fatalf("history holds %d entries, want %d", len(h), api.MaxHistory)
	}
	for i, e := range h {
		if e.Kind != api.HistoryReload || e.OK || !strings.Contains(e.Error, "no such binary") || e.Started.IsZero() {
			t.Errorf("entry %d: %+v; want a failed reload with its error", i, e)
		}
		if want := "test " + strings.Repeat("x", n-api.MaxHistory+i); e.Reason != want {
			t.Errorf("entry %d: reason %q, want %q (oldest first, the first %d dropped)", i, e.Reason, want, n-api.MaxHistory)
		}
	}
	h[0].Reason = "changed by the reader"
	s.call(func() {
		if s.stats.history[0].Reason == h[0].Reason {
			t.Error("a snapshot's history shares the loop's slice")
		}
	})
}
