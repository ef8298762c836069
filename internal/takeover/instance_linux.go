package takeover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
)

// Socket is one socket a running instance hands to the one taking over.
type Socket struct {
	Name string `json:"name"` // the listener's name; "" for the control socket
	URL  string `json:"url"`  // the listener's specification
	Slot int    `json:"slot"` // its slot with balance=reuseport, else -1
	Fd   int    `json:"-"`
}

// header precedes the descriptors.
type header struct {
	PID     int      `json:"pid"`
	Sockets []Socket `json:"sockets"`
}

// verdict is the new instance's answer once it has checked the sockets and
// its workers are ready (commit), or it gives up (abort).
type verdict struct {
	Verdict string `json:"verdict"` // commit or abort
	PID     int    `json:"pid"`
	Reason  string `json:"reason,omitempty"`
}

// Params are the params of a takeover request.
type Params struct {
	// CommitWithinMS is how long, in milliseconds, the new instance may
	// take from its request to its verdict: starting its workers and
	// waiting for them to be ready. The running instance aborts the
	// takeover when it has passed. 0 means DefaultCommitWithin.
	CommitWithinMS int64 `json:"commit_within_ms,omitempty"`
}

// Bounds of Params.CommitWithinMS.
const (
	DefaultCommitWithin = 5 * time.Minute
	MaxCommitWithin     = time.Hour
)

// CommitWithin checks p and returns its deadline.
func (p Params) CommitWithin() (time.Duration, error) {
	d := time.Duration(p.CommitWithinMS) * time.Millisecond
	switch {
	case p.CommitWithinMS == 0:
		return DefaultCommitWithin, nil
	case p.CommitWithinMS < 0 || d > MaxCommitWithin:
		return 0, fmt.Errorf("takeover: commit_within_ms %d: want 1 to %d (an hour), or 0 for %s", p.CommitWithinMS, MaxCommitWithin.Milliseconds(), DefaultCommitWithin)
	}
	return d, nil
}

// MaxLine bounds the protocol's JSON lines.
const MaxLine = 1 << 20

// ErrAborted is returned by Give when the new instance gave up, or went
// away, before committing: the old instance carries on unchanged.
var ErrAborted = errors.New("takeover aborted")

// Give is the running instance's side, on the connection that asked for a
// takeover: it describes socks and sends them (SCM_RIGHTS, each batch
// acknowledged before the next), then waits for the new instance's
// verdict, for at most within from now (Params.CommitWithin). It returns
// the new instance's pid once it committed: the caller then stops and
// exits, keeping its copies until then. Any other outcome wraps ErrAborted
// and the caller carries on. allow checks the peer before anything is
// sent.
func Give(ctx context.Context, conn *net.UnixConn, socks []Socket, within time.Duration, allow func(fdpass.Cred) error) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if err := writeLine(conn, header{PID: os.Getpid(), Sockets: socks}); err != nil {
		return 0, fmt.Errorf("%w: describing the sockets: %v", ErrAborted, err)
	}
	fds := make([]fdpass.FD, len(socks))
	for i, s := range socks {
		fds[i] = fdpass.FD{Fd: s.Fd, Name: s.Name, Kind: "listener"}
	}
	if err := fdpass.SendAllow(ctx, conn, fds, allow); err != nil {
		return 0, fmt.Errorf("%w: sending the sockets: %v", ErrAborted, err)
	}
	var v verdict
	switch err := readLine(ctx, conn, &v); {
	case errors.Is(err, context.DeadlineExceeded):
		return 0, fmt.Errorf("%w: the new instance did not commit within %s, the time it asked for", ErrAborted, within)
	case errors.Is(err, errMalformed):
		return 0, fmt.Errorf("%w: the new instance's verdict: %v", ErrAborted, err)
	case err != nil:
		return 0, fmt.Errorf("%w: the new instance went away before committing: %v", ErrAborted, err)
	}
	if v.Verdict != "commit" {
		return 0, fmt.Errorf("%w by the new instance (pid %d): %s", ErrAborted, v.PID, v.Reason)
	}
	// The reply lets the new instance know the old one lets go; it may
	// fail if the new one died just now, which changes nothing here: the
	// commit was its word.
	writeLine(conn, map[string]bool{"ok": true})
	return v.PID, nil
}

// ErrRefused is returned by Take when the running instance refused the
// takeover (a peer that may not take it over, a reload in progress); its
// reason follows.
var ErrRefused = errors.New("the running baton refused the takeover")

// Taken is the new instance's side of a takeover in progress.
type Taken struct {
	conn    *net.UnixConn
	OldPID  int
	Sockets []Socket // with Fd set, owned by the caller
}

// Take connects to a running instance's control socket at path, asks for
// its sockets and receives them. The running instance keeps serving until
// Commit, which must come within commitWithin of the request, or it
// carries on as if aborted.
//
// Before asking, Take checks who answers (control.CheckServer): only a
// process of root or this process's user may hand it sockets, since the
// descriptors it receives become the listeners it serves on. Anyone else
// is refused before anything is sent, and the error wraps
// control.ErrUntrustedServer.
func Take(ctx context.Context, path string, commitWithin time.Duration) (*Taken, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("takeover: connecting to the running baton at %s: %w", path, err)
	}
	conn := c.(*net.UnixConn)
	if err := control.CheckServer(conn, path); err != nil {
		conn.Close() // nothing was asked: nothing to abort
		return nil, fmt.Errorf("takeover: %w", err)
	}
	t, err := take(ctx, conn, Params{CommitWithinMS: commitWithin.Milliseconds()})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("takeover from %s: %w", path, err)
	}
	return t, nil
}

func take(ctx context.Context, conn *net.UnixConn, p Params) (*Taken, error) {
	if err := writeLine(conn, map[string]any{"method": "takeover", "params": p}); err != nil {
		return nil, err
	}
	// The running baton answers with the sockets' header, or refuses
	// with the control protocol's {"ok":false,"error":...}.
	var h struct {
		header
		Error string `json:"error"`
	}
	if err := readLine(ctx, conn, &h); err != nil {
		return nil, err
	}
	if h.Error != "" {
		return nil, fmt.Errorf("%w: %s", ErrRefused, h.Error)
	}
	fds, err := fdpass.Recv(ctx, conn, fdpass.Limits{MaxFDs: len(h.Sockets) + 1})
	if err != nil {
		return nil, fmt.Errorf("receiving the sockets: %w", err)
	}
	if len(fds) != len(h.Sockets) {
		for _, f := range fds {
			unix.Close(f.Fd)
		}
		return nil, fmt.Errorf("received %d sockets for %d described", len(fds), len(h.Sockets))
	}
	t := &Taken{conn: conn, OldPID: h.PID, Sockets: h.Sockets}
	for i := range t.Sockets {
		t.Sockets[i].Fd = fds[i].Fd
	}
	return t, nil
}

// Commit tells the old instance that this one serves now, and waits for it
// to let go. Then the old instance drains its workers and exits.
func (t *Taken) Commit(ctx context.Context) error {
	defer t.conn.Close()
	if err := writeLine(t.conn, verdict{Verdict: "commit", PID: os.Getpid()}); err != nil {
		return fmt.Errorf("takeover: telling the old instance (pid %d) to go: %w", t.OldPID, err)
	}
	var ok map[string]bool
	if err := readLine(ctx, t.conn, &ok); err != nil || !ok["ok"] {
		return fmt.Errorf("takeover: the old instance (pid %d) did not confirm: %v", t.OldPID, err)
	}
	return nil
}

// Abort tells the old instance to carry on, and closes what was received
// that the caller still holds (those it did not take).
func (t *Taken) Abort(reason string) {
	writeLine(t.conn, verdict{Verdict: "abort", PID: os.Getpid(), Reason: reason})
	t.conn.Close()
}

func writeLine(c net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer c.SetWriteDeadline(time.Time{})
	_, err = c.Write(append(b, '\n'))
	return err
}

// errMalformed marks a line that is not the JSON expected.
var errMalformed = errors.New("not a valid line of the takeover protocol")

// readLine reads one JSON line a byte at a time: what follows on the
// connection (descriptors riding on the next bytes) must stay unread.
func readLine(ctx context.Context, c net.Conn, v any) error {
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		c.SetReadDeadline(time.Time{})
	}()
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if b[0] == '\n' {
			if err := json.Unmarshal(line, v); err != nil {
				return fmt.Errorf("%w: %v", errMalformed, err)
			}
			return nil
		}
		if line = append(line, b[0]); len(line) > MaxLine {
			return fmt.Errorf("%w: a line longer than %d bytes", errMalformed, MaxLine)
		}
	}
}
