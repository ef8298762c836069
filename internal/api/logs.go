package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/baton-dev/baton/internal/control"
)

// MethodLogs streams the recent output of the workers and baton's own
// log from baton's ring buffer; its params are LogsParams. Its reply is
// {"ok":true} and then one LogEntry a line: the lines held, and with
// Follow every new line as it comes; without Follow the last entry is
// End. A follower that does not read fast enough loses lines, and gets a
// Dropped entry where they were.
const MethodLogs = "logs"

// LogsParams are the params of MethodLogs.
type LogsParams struct {
	// Follow keeps the stream open: new lines follow the ones held.
	Follow bool `json:"follow,omitempty"`
	// Slot and Generation, when set, select the lines of workers of that
	// slot or generation (and none of baton's own log).
	Slot       *int `json:"slot,omitempty"`
	Generation *int `json:"generation,omitempty"`
	// Lines, when set, is how many of the lines held to send first (the
	// last ones); every line held when absent. With Follow, 0 sends only
	// new lines.
	Lines *int `json:"lines,omitempty"`
}

// Check reports what is wrong with p's values, naming the param.
func (p LogsParams) Check() error {
	switch {
	case p.Slot != nil && *p.Slot < 0:
		return fmt.Errorf("logs: slot %d: want a slot number, 0 or more", *p.Slot)
	case p.Generation != nil && *p.Generation < 1:
		return fmt.Errorf("logs: generation %d: want a generation number, 1 or more", *p.Generation)
	case p.Lines != nil && *p.Lines < 0:
		return fmt.Errorf("logs: lines %d: want 0 or more", *p.Lines)
	}
	return nil
}

// LogEntry is one line of the logs stream: exactly one of its fields is
// set.
type LogEntry struct {
	Line *LogLine `json:"line,omitempty"`
	// Dropped counts lines lost here: the reader did not read fast
	// enough, and its queue in baton was full.
	Dropped int64 `json:"dropped,omitempty"`
	// End closes a stream without Follow.
	End *LogsEnd `json:"end,omitempty"`
}

// LogLine is a line of output: a worker's (Source "worker", with its
// slot, generation and pid) or baton's own log record (Source "baton").
type LogLine struct {
	// Seq numbers the lines baton took since it started, without gaps.
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Source     string    `json:"source"`
	Slot       *int      `json:"slot,omitempty"` // a worker's; absent for baton's
	Generation int       `json:"generation,omitempty"`
	PID        int       `json:"pid,omitempty"`
	// Stream is stdout or stderr for a worker, log for baton.
	Stream string `json:"stream"`
	Text   string `json:"text"`
	// Truncated says the line was longer than baton keeps (4 KiB) and
	// was cut there.
	Truncated bool `json:"truncated,omitempty"`
}

// LogsEnd ends a logs stream without Follow, with the ring buffer's
// figures.
type LogsEnd struct {
	Buffer LogBufferStatus `json:"buffer"`
}

// LogBufferStatus is what baton's ring buffer of output holds and what it
// let go.
type LogBufferStatus struct {
	Lines      int    `json:"lines"`       // lines held
	Bytes      int    `json:"bytes"`       // their text plus bookkeeping
	LimitBytes int    `json:"limit_bytes"` // the bound
	Added      uint64 `json:"added"`       // lines taken since baton started
	Evicted    uint64 `json:"evicted"`     // lines evicted to make room
	Truncated  uint64 `json:"truncated"`   // lines cut at 4 KiB
	Followers  int    `json:"followers"`   // `baton logs --follow` now
	// FollowerDropped counts lines followers lost, not reading fast
	// enough.
	FollowerDropped uint64 `json:"follower_dropped"`
}

// ErrLogsEnded is returned by Logs when baton closed a stream it did not
// end (it stopped, or re-executed itself in an upgrade).
var ErrLogsEnded = errors.New("baton closed the logs stream: it stopped, or upgraded itself")

// Logs reads baton's logs with p, calling each with every entry in order
// until the stream ends (nil without Follow, after End), each returns an
// error (returned), or ctx is done.
func (c *Client) Logs(ctx context.Context, p LogsParams, each func(LogEntry) error) error {
	s, err := control.Open(ctx, c.Path, MethodLogs, p)
	if err != nil {
		return err
	}
	defer s.Close()
	r := bufio.NewReaderSize(s, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return ErrLogsEnded
			}
			return fmt.Errorf("logs: reading from baton at %s: %w", c.Path, err)
		}
		var e LogEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("logs: baton at %s sent something that is not a log entry: %w", c.Path, err)
		}
		if err := each(e); err != nil {
			return err
		}
		if e.End != nil {
			return nil
		}
	}
}
