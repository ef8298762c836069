package supervisor

import (
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// HistoryEntry is a reload or an upgrade as it ended (api.HistoryEntry).
type HistoryEntry = api.HistoryEntry

// remember adds e to the history of reloads and upgrades, dropping the
// oldest past api.MaxHistory. The loop owns the history.
func (s *Supervisor) remember(e HistoryEntry) {
	s.stats.history = boundHistory(append(s.stats.history, e))
}

// boundHistory keeps the last api.MaxHistory entries of h, in a slice of
// its own (a status snapshot shares none of the loop's).
func boundHistory(h []HistoryEntry) []HistoryEntry {
	h = h[max(len(h)-api.MaxHistory, 0):]
	return append([]HistoryEntry(nil), h...)
}

// rememberUpgradeFailure records an upgrade that did not happen, begun at
// started (the zero time: now), on the loop.
func (s *Supervisor) rememberUpgradeFailure(started time.Time, binary string, err error) {
	now := s.now()
	if started.IsZero() {
		started = now
	}
	s.remember(HistoryEntry{
		Kind: api.HistoryUpgrade, Started: started, Duration: Duration(now.Sub(started)),
		Generation: s.active.id, Previous: s.active.id, Reason: binary, Error: err.Error(),
	})
}

// rememberUpgrade records, in the new baton, the upgrade that started it:
// begun at started, over now that the state is taken over.
func (s *Supervisor) rememberUpgrade(started time.Time, binary string, gen int) {
	now := s.now()
	if started.IsZero() {
		started = now
	}
	s.remember(HistoryEntry{
		Kind: api.HistoryUpgrade, Started: started, Duration: Duration(now.Sub(started)), OK: true,
		Generation: gen, Previous: gen, Reason: binary,
	})
}
