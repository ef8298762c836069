package quicid

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/quic-go/quic-go"
)

// EnvVar is the variable in which baton tells a worker its cookies: for
// each of its listeners with flows=quic, the listener's name, "=" and
// the cookie in hexadecimal, separated by commas
// ("quic=0003a1b2,alt=0004c3d4").
const EnvVar = "BATON_QUIC_COOKIE"

// Lengths of the connection IDs a Generator issues: the cookie, then at
// least 4 random bytes, and at most QUIC's 20 in all.
const (
	DefaultLen = 16
	MinLen     = CookieLen + 4
	MaxLen     = 20
)

// CookieLen is the length of a cookie.
const CookieLen = 4

// A Cookie names the socket of a worker to baton's steering program: a
// QUIC short-header packet whose destination connection ID starts with
// it goes to that socket. It is opaque to the worker.
type Cookie [CookieLen]byte

// String is the cookie in hexadecimal, as BATON_QUIC_COOKIE carries it.
func (c Cookie) String() string { return hex.EncodeToString(c[:]) }

// ErrNoCookie is returned by Lookup when the environment has no cookie
// for the listener: the process does not run under baton, or the
// listener does not have flows=quic.
var ErrNoCookie = errors.New("no QUIC cookie for the listener")

// Parse finds the cookie of listener in value, a BATON_QUIC_COOKIE. It
// wraps ErrNoCookie when value names no such listener, and says what is
// wrong with a value it cannot read.
func Parse(value, listener string) (Cookie, error) {
	var c Cookie
	if value == "" {
		return c, fmt.Errorf("%w %q: %s is empty", ErrNoCookie, listener, EnvVar)
	}
	for _, item := range strings.Split(value, ",") {
		name, h, ok := strings.Cut(item, "=")
		if !ok || name == "" {
			return c, fmt.Errorf("%s=%q: %q is not name=cookie", EnvVar, value, item)
		}
		if name != listener {
			continue
		}
		if len(h) != 2*CookieLen {
			return c, fmt.Errorf("%s=%q: the cookie of %q is %q, want %d hexadecimal digits", EnvVar, value, name, h, 2*CookieLen)
		}
		if _, err := hex.Decode(c[:], []byte(h)); err != nil {
			return c, fmt.Errorf("%s=%q: the cookie of %q: %w", EnvVar, value, name, err)
		}
		return c, nil
	}
	return c, fmt.Errorf("%w %q: %s names only other listeners (%s)", ErrNoCookie, listener, EnvVar, value)
}

// Lookup is the cookie of listener in this process's environment
// (BATON_QUIC_COOKIE); the error wraps ErrNoCookie when it has none.
func Lookup(listener string) (Cookie, error) {
	return Parse(os.Getenv(EnvVar), listener)
}

// Generator issues connection IDs of a fixed length that start with a
// cookie, the rest random: quic-go's Transport.ConnectionIDGenerator.
// It is safe for concurrent use.
type Generator struct {
	cookie Cookie
	n      int
}

var _ quic.ConnectionIDGenerator = (*Generator)(nil)

// New makes a Generator of IDs of n bytes (MinLen to MaxLen; 0 means
// DefaultLen) that start with cookie.
func New(cookie Cookie, n int) (*Generator, error) {
	if n == 0 {
		n = DefaultLen
	}
	if n < MinLen || n > MaxLen {
		return nil, fmt.Errorf("QUIC connection IDs of %d bytes: a cookie's need %d to %d (the cookie, then at least 4 random bytes)", n, MinLen, MaxLen)
	}
	return &Generator{cookie: cookie, n: n}, nil
}

// FromEnv makes the Generator of listener's cookie in this process's
// environment, with IDs of DefaultLen bytes. It returns nil and no error
// when there is no cookie (the process does not run under baton, or the
// listener does not have flows=quic): leave quic-go's own IDs then. The
// error says what is wrong with a variable it cannot read.
func FromEnv(listener string) (*Generator, error) {
	c, err := Lookup(listener)
	if errors.Is(err, ErrNoCookie) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return New(c, 0)
}

// Cookie is the cookie the IDs start with.
func (g *Generator) Cookie() Cookie { return g.cookie }

// GenerateConnectionID is a new ID: the cookie, then random bytes.
func (g *Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	b := make([]byte, g.n)
	copy(b, g.cookie[:])
	if _, err := rand.Read(b[CookieLen:]); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("a QUIC connection ID's random bytes: %w", err)
	}
	return quic.ConnectionIDFromBytes(b), nil
}

// ConnectionIDLen is the length of every ID the Generator issues.
func (g *Generator) ConnectionIDLen() int { return g.n }
