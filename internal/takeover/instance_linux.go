package takeover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
)

// controlURL is the URL of the control socket among the Sockets handed
// over.
const controlURL = "control"

// Socket is one socket a running instance hands to the one taking over.
type Socket struct {
	Name string `json:"name"` // the listener's name; "" for the control socket
	URL  string `json:"url"`  // the listener's specification
	Slot int    `json:"slot"` // its slot with balance=reuseport, else -1
	// Flow, for a UDP listener whose flows are kept, names the steering
	// program or map the descriptor is (FlowObjects); empty for a socket.
	Flow string `json:"flow,omitempty"`
	Fd   int    `json:"-"`
}

// FlowObjects names the descriptors of a steering program and its maps,
// in the order of steer.FDs.List.
var FlowObjects = []string{"prog", "flows", "socks", "tags", "serving", "counters"}

// header precedes the descriptors.
type header struct {
	PID     int      `json:"pid"`
	Sockets []Socket `json:"sockets"`
}

// Verdicts.
const (
	verdictCommit = "commit"
	verdictAbort  = "abort"
)

// verdict is the new instance's answer once it has checked the sockets and
// its workers are ready (commit), or it gives up (abort).
type verdict struct {
	Verdict string `json:"verdict"` // commit or abort
	PID     int    `json:"pid"`
	Reason  string `json:"reason,omitempty"`
}

// MaxLine bounds the protocol's JSON lines.
const MaxLine = 1 << 20

// ErrAborted is returned by Give when the new instance gave up, or went
// away, before committing: the old instance carries on unchanged.
var ErrAborted = errors.New("takeover aborted")

// Give is the running instance's side, on the connection that asked for a
// takeover: it describes socks and sends them (SCM_RIGHTS, each batch
// acknowledged before the next), then waits for the new instance's
// verdict, for at most within from now (api.TakeoverParams.CommitWithin,
// the Window's Commit). It returns
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
	if v.Verdict != verdictCommit {
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

// Taken is the new instance's side of a takeover in progress: the
// sockets received, not yet committed.
type Taken struct {
	conn   *net.UnixConn
	OldPID int
	// Sockets are the sockets received, with Fd set. A socket the caller
	// takes (and then owns) gets Fd -1; Abort closes the others.
	Sockets []Socket
	asked   time.Time // before the request was sent
	window  Window

	mu      sync.Mutex
	verdict string // "" until decided, then verdictCommit or verdictAbort
	timer   *time.Timer
}

// Take connects to a running instance's control socket at path, asks for
// its sockets and receives them. The running instance keeps serving until
// Commit, which must come within w.Commit of the request, or it carries
// on as if aborted; CommitWhenReady gives up at w.GiveUp, counted from
// before the request (WindowFor decides both).
//
// Before asking, Take checks who answers (control.CheckServer): only a
// process of root or this process's user may hand it sockets, since the
// descriptors it receives become the listeners it serves on. Anyone else
// is refused before anything is sent, and the error wraps
// control.ErrUntrustedServer.
func Take(ctx context.Context, path string, w Window) (*Taken, error) {
	asked := time.Now() // before the running instance starts its clock
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
	t, err := take(ctx, conn, api.TakeoverParams{CommitWithinMS: w.Commit.Milliseconds()})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("takeover from %s: %w", path, err)
	}
	t.asked, t.window = asked, w
	return t, nil
}

func take(ctx context.Context, conn *net.UnixConn, p api.TakeoverParams) (*Taken, error) {
	if err := writeLine(conn, map[string]any{"method": api.MethodTakeover, "params": p}); err != nil {
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

// GiveUpAt is when CommitWhenReady gives up: the Window's GiveUp after
// the moment this instance asked.
func (t *Taken) GiveUpAt() time.Time { return t.asked.Add(t.window.GiveUp) }

// ControlFd takes the running instance's control socket out of Sockets
// and returns it, now the caller's to close; -1 when none was sent.
func (t *Taken) ControlFd() int {
	fd := -1
	for i, s := range t.Sockets {
		if s.URL == controlURL && s.Fd >= 0 {
			fd, t.Sockets[i].Fd = s.Fd, -1
		}
	}
	return fd
}

// decide records the takeover's verdict, and reports whether it is this
// one: the first decided stands.
func (t *Taken) decide(v string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.verdict != "" {
		return false
	}
	t.verdict = v
	if t.timer != nil {
		t.timer.Stop()
	}
	return true
}

// Commit tells the old instance that this one serves now, and waits for it
// to let go. Then the old instance drains its workers and exits. It fails
// without a word to the old instance if the takeover was already decided
// (aborted, or committed before).
func (t *Taken) Commit(ctx context.Context) error {
	if !t.decide(verdictCommit) {
		return fmt.Errorf("takeover from pid %d: already %s", t.OldPID, t.decided())
	}
	return t.commit(ctx)
}

func (t *Taken) decided() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return map[string]string{verdictCommit: "committed", verdictAbort: "aborted"}[t.verdict]
}

func (t *Taken) commit(ctx context.Context) error {
	defer t.conn.Close()
	if err := writeLine(t.conn, verdict{Verdict: verdictCommit, PID: os.Getpid()}); err != nil {
		return fmt.Errorf("takeover: telling the old instance (pid %d) to go: %w", t.OldPID, err)
	}
	var ok map[string]bool
	if err := readLine(ctx, t.conn, &ok); err != nil || !ok["ok"] {
		return fmt.Errorf("takeover: the old instance (pid %d) did not confirm: %v", t.OldPID, err)
	}
	return nil
}

// Abort tells the old instance to carry on, and closes the sockets the
// caller did not take (those whose Fd is still set). It does nothing once
// the takeover is decided (committed, or aborted before), and nothing on
// a nil Taken, so that every failure path may call it.
func (t *Taken) Abort(reason string) {
	if t != nil {
		t.abort(reason)
	}
}

// abort is Abort, and reports whether this call decided the takeover.
func (t *Taken) abort(reason string) bool {
	if !t.decide(verdictAbort) {
		return false
	}
	writeLine(t.conn, verdict{Verdict: verdictAbort, PID: os.Getpid(), Reason: reason})
	t.conn.Close()
	for i, s := range t.Sockets {
		if s.Fd >= 0 {
			unix.Close(s.Fd) // received, not taken: nothing else holds it here
			t.Sockets[i].Fd = -1
		}
	}
	return true
}

// Hooks are what a taking-over instance does once its takeover is decided
// (CommitWhenReady).
type Hooks struct {
	// Committed runs on a goroutine of its own once the old instance has
	// been told to go: err is nil when it confirmed that it lets go, and
	// says why not otherwise (this instance committed, and serves
	// anyway).
	Committed func(err error)
	// GaveUp runs on the timer's goroutine when the workers were not
	// ready by GiveUpAt, once the old instance has been told to carry on:
	// this instance must stop. reason says why.
	GaveUp func(reason string)
}

// commitTimeout bounds the wait for the old instance's confirmation of a
// commit. The commit itself is one line, sent at once.
const commitTimeout = 30 * time.Second

// CommitWhenReady starts the give-up timer, due at GiveUpAt, and returns
// the function to call each time this instance's workers are ready (the
// supervisor's OnReady). Its first call before the timer commits (in the
// background, then Committed) and reports true; once the timer has fired
// (the takeover aborted, GaveUp ran) its calls do nothing and report
// true as well. After the commit, calls report false: the takeover is
// over, and the caller does what it does without one.
func (t *Taken) CommitWhenReady(h Hooks) (ready func() (handled bool)) {
	t.mu.Lock()
	if t.verdict == "" {
		t.timer = time.AfterFunc(time.Until(t.GiveUpAt()), func() {
			reason := fmt.Sprintf("the new instance's workers were not ready within %s", t.window.GiveUp)
			if t.abort(reason) {
				h.GaveUp(reason)
			}
		})
	}
	t.mu.Unlock()
	var first sync.Once
	return func() bool {
		handled := false
		first.Do(func() {
			handled = true
			if !t.decide(verdictCommit) {
				return // given up: this instance is stopping
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
				defer cancel()
				h.Committed(t.commit(ctx))
			}()
		})
		if !handled && t.decided() == "aborted" {
			handled = true
		}
		return handled
	}
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
