package fdpass

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// FD is one file descriptor of a transfer and its description.
type FD struct {
	// Fd is the descriptor number. Send reads it and never closes it; Recv
	// returns descriptors that the caller owns, with FD_CLOEXEC set.
	Fd int
	// Name says what the descriptor is for, such as a listener name
	// ("http"). At most MaxName bytes.
	Name string
	// Kind says what sort of descriptor it is ("listener", "conn", ...).
	// At most MaxKind bytes.
	Kind string
	// Meta is opaque state that travels with the descriptor, such as a
	// handed-off connection's protocol state. At most MetaHardMax bytes, and
	// at most the receiver's Limits.MaxMeta. The Meta slices Recv returns
	// share one backing array per batch; each is capped at its own length,
	// so appending to one copies it.
	Meta []byte
}

// Cred is the peer's identity from SO_PEERCRED: the process that called
// connect(2), listen(2) or socketpair(2), as it was at that moment.
type Cred struct {
	PID, UID, GID int
}

// Protocol constants. They are part of the wire format: see
// docs/fdpass.md.
const (
	// MaxFDsPerBatch is the most descriptors one frame carries, the
	// kernel's SCM_MAX_FD.
	MaxFDsPerBatch = 253
	// MaxName and MaxKind bound FD.Name and FD.Kind (one length byte each).
	MaxName = 255
	MaxKind = 255
	// MetaHardMax is the most FD.Meta may hold whatever the Limits say.
	MetaHardMax = 1 << 20
	// MaxBody is the largest frame body. A sender closes a batch before
	// its body would grow past it; one entry always fits.
	MaxBody = 2 << 20
	// MaxRecord is the largest record a sender may write on a
	// SOCK_SEQPACKET socket; frames larger than that go in several records.
	MaxRecord = 64 << 10
	// MaxAckMessage bounds the reason a receiver gives in a refusal.
	MaxAckMessage = 1024
	// FDsHardMax bounds Limits.MaxFDs.
	FDsHardMax = 1 << 20
	// BytesHardMax bounds Limits.MaxBytes.
	BytesHardMax = 1 << 30
)

// Defaults for the zero fields of Limits.
const (
	DefaultMaxFDs   = 100_000
	DefaultMaxMeta  = 64 << 10
	DefaultMaxBytes = 64 << 20
)

// Limits bound what Recv accepts from a peer. A zero field takes its
// default. A frame header that promises more than a limit is refused
// before anything is allocated for it.
type Limits struct {
	// MaxFDs is the most descriptors in one transfer (default
	// DefaultMaxFDs, at most FDsHardMax). The receiving process's
	// RLIMIT_NOFILE must also leave room for them.
	MaxFDs int
	// MaxMeta is the most bytes of FD.Meta per descriptor (default
	// DefaultMaxMeta, at most MetaHardMax).
	MaxMeta int
	// MaxBytes is the most bytes of descriptions (names, kinds, meta and
	// their lengths) in one transfer (default DefaultMaxBytes, at most
	// BytesHardMax).
	MaxBytes int
	// Discard, when set, takes the descriptors Recv lets go of (those of
	// a transfer it refuses or that breaks) instead of Recv closing them
	// itself: the last close of a descriptor from a peer that is not
	// trusted can block (see Closer).
	Discard func(fds []int)
}

// withDefaults fills the zero fields of l and checks the rest.
func (l Limits) withDefaults() (Limits, error) {
	fill := func(field string, v *int, def, max int) error {
		switch {
		case *v == 0:
			*v = def
		case *v < 0 || *v > max:
			return fmt.Errorf("fdpass: Limits.%s is %d: want 1 to %d, or 0 for the default %d", field, *v, max, def)
		}
		return nil
	}
	if err := fill("MaxFDs", &l.MaxFDs, DefaultMaxFDs, FDsHardMax); err != nil {
		return l, err
	}
	if err := fill("MaxMeta", &l.MaxMeta, DefaultMaxMeta, MetaHardMax); err != nil {
		return l, err
	}
	if err := fill("MaxBytes", &l.MaxBytes, DefaultMaxBytes, BytesHardMax); err != nil {
		return l, err
	}
	return l, nil
}

// Errors for errors.Is. Every error the package returns says more.
var (
	// ErrPeer: the peer's credentials were refused; nothing was sent.
	ErrPeer = errors.New("peer not trusted")
	// ErrTruncated: the kernel cut a message short (MSG_CTRUNC or
	// MSG_TRUNC), dropping descriptors or bytes. The descriptors that did
	// arrive have been closed.
	ErrTruncated = errors.New("truncated by the kernel")
	// ErrTooLarge: the transfer, or a description in it, is over a limit.
	ErrTooLarge = errors.New("too large")
	// ErrProtocol: the peer does not speak this protocol, or broke it.
	ErrProtocol = errors.New("protocol error")
	// ErrRefused: the receiver answered a batch with a refusal; its
	// reason is in the message.
	ErrRefused = errors.New("refused by the receiver")
	// ErrNotSupported: the platform or the socket type cannot pass
	// descriptors this way.
	ErrNotSupported = errors.New("not supported")
)

// The Linux implementation and the stub for other systems must have the
// same shape.
var (
	_ func(context.Context, *net.UnixConn, []FD) error                   = Send
	_ func(context.Context, *net.UnixConn, []FD, func(Cred) error) error = SendAllow
	_ func(context.Context, *net.UnixConn, Limits) ([]FD, error)         = Recv
	_ func(*net.UnixConn) (Cred, error)                                  = CheckPeer
	_ func(*net.UnixConn) (Cred, error)                                  = PeerCred
)
