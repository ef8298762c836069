package handoff

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
)

// Methods of the worker socket (BATON_SOCKET) that move connections.
const (
	// MethodHandoff opens a connection on which a draining worker sends
	// its connections to baton.
	MethodHandoff = "handoff"
	// MethodAdopt opens a subscription on which baton pushes connections
	// to a worker of the next generation.
	MethodAdopt = "adopt"
)

// Kind is the fdpass kind of a handed-off connection.
const Kind = "conn"

// Limits of the protocol. docs/handoff.md has them too.
const (
	// MaxFDs is the most descriptors in one transfer, either way: one
	// SCM_RIGHTS message (fdpass.MaxFDsPerBatch).
	MaxFDs = fdpass.MaxFDsPerBatch
	// MaxTransferBytes bounds the descriptions (names, kinds, states and
	// their lengths) of one transfer.
	MaxTransferBytes = 8 << 20
	// DefaultMaxState is the default bound on one connection's state.
	DefaultMaxState = 64 << 10
	// MaxStateLimit is the most Config.MaxState may be (fdpass.MetaHardMax).
	MaxStateLimit = fdpass.MetaHardMax
	// DefaultTimeout is how long a stored connection waits for adoption
	// unless configured.
	DefaultTimeout = 30 * time.Second
	// TransferTimeout bounds one transfer once its first byte has arrived
	// (baton receiving), or until it is acknowledged (baton pushing).
	TransferTimeout = 10 * time.Second
	// IdleTimeout bounds the wait for a worker's next transfer on a
	// handoff connection: an idle one is closed, and the room its grant
	// reserved in baton's descriptor table is freed.
	IdleTimeout = 30 * time.Second
	// Reserve is how many descriptors baton keeps free for itself (new
	// control and worker connections, /proc reads, pipes for workers)
	// when it grants room for connections.
	Reserve = 64
)

// entryOverhead is the fixed size of one fdpass entry besides its name
// and meta: the length fields and the kind.
const entryOverhead = 1 + 1 + 4 + len(Kind)

// Grant is baton's answer to a handoff request, and the line it sends
// after each transfer: how much the next transfer may carry.
type Grant struct {
	// MaxFDs is the most descriptors the next transfer may carry (1 to
	// MaxFDs). It shrinks when baton's RLIMIT_NOFILE has little room.
	MaxFDs int `json:"max_fds"`
	// MaxState is the most bytes of state per connection.
	MaxState int `json:"max_state"`
	// MaxBytes bounds the transfer's descriptions: the sum over its
	// connections of 6 + len(name) + len("conn") + len(state).
	MaxBytes int `json:"max_bytes"`
	// Stored is how many connections of the last transfer baton stored
	// (0 in the answer to the request).
	Stored int `json:"stored"`
	// Refused lists the descriptors of the last transfer that baton did
	// not keep because they are not connections accepted on the sender's
	// listeners (a pipe, a file, a UDP or listening socket, a connection
	// on another address). baton closed its copies; the sender keeps
	// its own and must not count them as handed off.
	Refused []Refusal `json:"refused,omitempty"`
}

// Refusal is one descriptor of a transfer that baton refused, by its
// position in the transfer, and why.
type Refusal struct {
	Index  int    `json:"index"`
	Reason string `json:"reason"`
}

// AdoptParams are the optional params of an adopt request.
type AdoptParams struct {
	// MaxFDs caps each transfer baton pushes (1 to MaxFDs; 0 means
	// MaxFDs). A worker sets it from its own RLIMIT_NOFILE room.
	MaxFDs int `json:"max_fds,omitempty"`
}

// Subscription is baton's answer to an adopt request.
type Subscription struct {
	// MaxFDs and MaxBytes bound each transfer baton pushes, MaxState
	// each connection's state: set fdpass.Limits to at least these.
	MaxFDs   int `json:"max_fds"`
	MaxState int `json:"max_state"`
	MaxBytes int `json:"max_bytes"`
}

// entrySize is the size of a connection's entry in a transfer's
// descriptions.
func entrySize(name string, state []byte) int {
	return entryOverhead + len(name) + len(state)
}

// readLine reads one newline-terminated line of at most max bytes from c,
// and nothing past the newline: a frame whose first byte carries
// descriptors may follow at once, and a plain read into it would drop
// them. It peeks, then reads exactly the line.
func readLine(c *net.UnixConn, max int) ([]byte, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	var line []byte
	for {
		var n int
		var serr error
		err := raw.Read(func(fd uintptr) bool {
			for {
				n, _, serr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
				if serr != unix.EINTR {
					break
				}
			}
			return serr != unix.EAGAIN
		})
		if err == nil && serr != nil {
			err = os.NewSyscallError("recvfrom", serr)
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("the peer closed the connection before a complete line: %w", errUnexpectedEOF)
		}
		want := n
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			want = i + 1
		}
		if len(line)+want > max+1 {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", fdpass.ErrProtocol, max)
		}
		// Read exactly what was peeked up to the newline: a plain read
		// that stops there, since peeked bytes are queued.
		got, err := readExactly(raw, buf[:want])
		if err != nil {
			return nil, err
		}
		line = append(line, buf[:got]...)
		if line[len(line)-1] == '\n' {
			return line[:len(line)-1], nil
		}
	}
}

var errUnexpectedEOF = errors.New("unexpected EOF")

// readExactly reads len(b) bytes that are known to be queued, without
// accepting descriptors (a line carries none).
func readExactly(raw syscall.RawConn, b []byte) (int, error) {
	got := 0
	for got < len(b) {
		var n, flags int
		var serr error
		err := raw.Read(func(fd uintptr) bool {
			for {
				n, _, flags, _, serr = unix.Recvmsg(int(fd), b[got:], nil, unix.MSG_CMSG_CLOEXEC)
				if serr != unix.EINTR {
					break
				}
			}
			return serr != unix.EAGAIN
		})
		if err == nil && serr != nil {
			err = os.NewSyscallError("recvmsg", serr)
		}
		if err != nil {
			return got, err
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return got, fmt.Errorf("%w: descriptors arrived with a JSON line; they ride only on fdpass frames", fdpass.ErrProtocol)
		}
		if n == 0 {
			return got, fmt.Errorf("the peer closed the connection in a line: %w", errUnexpectedEOF)
		}
		got += n
	}
	return got, nil
}

// readReply reads one reply line and decodes its result into v.
func readReply(c *net.UnixConn, v any) error {
	line, err := readLine(c, control.MaxReply)
	if err != nil {
		return fmt.Errorf("reading baton's answer: %w", err)
	}
	var r control.Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("%w: baton's answer is not JSON: %w", fdpass.ErrProtocol, err)
	}
	if !r.OK {
		return &RefusedError{Msg: r.Error}
	}
	if err := json.Unmarshal(r.Result, v); err != nil {
		return fmt.Errorf("%w: baton's answer: %w", fdpass.ErrProtocol, err)
	}
	return nil
}

// writeLine writes v as one JSON line.
func writeLine(c *net.UnixConn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = c.Write(append(b, '\n'))
	return err
}

// WriteResult answers a request on c with {"ok":true,"result":...}: baton
// answers a handoff request with its Grant and an adopt request with its
// Subscription, then moves descriptors on c.
func WriteResult(c *net.UnixConn, result any) error {
	return writeReply(c, result, nil)
}

// writeReply writes a control reply line: the result, or the error.
func writeReply(c *net.UnixConn, result any, rerr error) error {
	if rerr != nil {
		return writeLine(c, control.Reply{Error: rerr.Error()})
	}
	raw, err := json.Marshal(result)
	if err != nil {
		return err
	}
	return writeLine(c, control.Reply{OK: true, Result: raw})
}

// ErrRefused matches a refusal by baton, sent as a JSON line: the
// connections not yet sent stay with the worker.
var ErrRefused = errors.New("baton refused the handoff")

// RefusedError is baton's refusal, with its reason.
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return e.Msg }

// Is makes a RefusedError match ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }
