package batontest

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The backoff between two calls of a condition: it starts short, so that a
// condition about to hold costs little, and stays short, so that a state
// that holds for a moment is still seen and a wait ends soon after its
// condition holds.
const (
	firstBackoff = time.Millisecond
	maxBackoff   = 20 * time.Millisecond
)

// WaitFor calls cond until it returns nil, sleeping between calls from 1ms
// doubling up to 20ms. If cond has not returned nil within timeout, or
// returns an error made by Stop, WaitFor fails t with cond's last error
// (t.Fatalf). The error should say what was awaited and what was seen
// instead: it is the test's failure message.
//
// WaitFor must be called from the test's goroutine (it calls t.Fatalf);
// elsewhere use Wait. cond is always called at least once, and once more
// at the deadline; a call of cond is not interrupted, so cond should
// bound its own blocking.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Wait(timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// Wait is WaitFor for a goroutine other than the test's or a helper
// process without a testing.TB: it returns nil once cond returns nil, and
// otherwise an error that wraps cond's last error and says how long it
// waited (at once, unwrapped from Stop, for an error made by Stop).
func Wait(timeout time.Duration, cond func() error) error {
	start := time.Now()
	deadline := start.Add(timeout)
	for backoff := firstBackoff; ; backoff = min(2*backoff, maxBackoff) {
		err := cond()
		if err == nil {
			return nil
		}
		if s, ok := errors.AsType[stop](err); ok {
			return fmt.Errorf("gave up after %s: %w", time.Since(start).Round(time.Millisecond), s.err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("still not so after %s: %w", timeout, err)
		}
		time.Sleep(min(backoff, left))
	}
}

// stop is an error that Wait does not retry.
type stop struct{ err error }

func (s stop) Error() string { return s.err.Error() }
func (s stop) Unwrap() error { return s.err }

// Stop wraps err so that Wait and WaitFor stop retrying at once and report
// it: for a condition that can no longer hold, such as the process it
// waits on having exited. Stop(nil) is nil.
func Stop(err error) error {
	if err == nil {
		return nil
	}
	return stop{err}
}
