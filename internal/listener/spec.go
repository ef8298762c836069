package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os/user"
	"sort"
	"strconv"
	"strings"
)

// ErrSpec is wrapped by every error Parse returns, so callers can tell a
// mistake in what the user wrote (a usage error) from a failure to bind.
var ErrSpec = errors.New("invalid listener")

// SpecError is a mistake in a listener specification, as Parse and
// CheckNames return it. errors.Is(err, ErrSpec) holds for it, and
// errors.As finds an *OptionError in it when an option is at fault.
type SpecError struct {
	// Text is the specification as written; "" when the mistake is in
	// several together (CheckNames).
	Text string
	// Err says what is wrong and what is allowed.
	Err error
}

// Error is `invalid listener "TEXT": what is wrong`.
func (e *SpecError) Error() string {
	if e.Text == "" {
		return ErrSpec.Error() + ": " + e.Err.Error()
	}
	return fmt.Sprintf("%s %q: %s", ErrSpec, e.Text, e.Err)
}

// Unwrap makes errors.Is(err, ErrSpec) true and lets errors.As reach
// what is wrong.
func (e *SpecError) Unwrap() []error { return []error{ErrSpec, e.Err} }

// MaxUnixPath is the longest unix socket path the kernel accepts: sun_path
// holds 108 bytes including the terminating NUL (for an abstract name, the
// leading NUL).
const MaxUnixPath = 107

// Kind is the socket type of a listener.
type Kind string

// Socket kinds.
const (
	Stream   Kind = "stream"
	Datagram Kind = "datagram"
)

// schemes maps each accepted scheme to its socket type and address family
// ("inet" for both IPv4 and IPv6, decided by the host).
var schemes = map[string]struct {
	kind   Kind
	family string
}{
	"tcp":      {Stream, "inet"},
	"tcp4":     {Stream, "inet4"},
	"tcp6":     {Stream, "inet6"},
	"udp":      {Datagram, "inet"},
	"udp4":     {Datagram, "inet4"},
	"udp6":     {Datagram, "inet6"},
	"unix":     {Stream, "unix"},
	"unixgram": {Datagram, "unix"},
}

// Balance modes: how connections are spread over the workers.
const (
	// Shared gives every worker the same socket: one accept queue, and
	// every idle worker is woken for each connection.
	Shared = "shared"
	// Reuseport gives each slot a socket of its own in one SO_REUSEPORT
	// group: the kernel spreads connections evenly over the slots' queues.
	Reuseport = "reuseport"
)

// Spec is a parsed listener specification: [NAME=]SCHEME://ADDRESS[?OPTIONS].
type Spec struct {
	// Name is how workers find the socket (LISTEN_FDNAMES). It defaults to
	// the scheme.
	Name string
	// Scheme is one of tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixgram.
	Scheme string
	// Kind is the socket type the scheme implies.
	Kind Kind
	// Host and Port are set for inet schemes. Host is empty for all
	// addresses, an IP literal, or a name resolved when binding.
	Host string
	Port int
	// Path is set for unix schemes: an absolute path, or "@name" for the
	// abstract namespace.
	Path string

	// Backlog is the listen(2) backlog; 0 means the default (somaxconn).
	Backlog int
	// V6Only sets IPV6_V6ONLY when not nil.
	V6Only *bool
	// Mode is the permission of a unix socket file; 0 leaves it to umask.
	Mode uint32
	// Owner is "user[:group]" for a unix socket file; UID and GID are
	// resolved from it (-1 leaves that id unchanged).
	Owner    string
	UID, GID int
	// Balance is Shared or Reuseport (inet listeners only); empty means
	// the default the caller picks.
	Balance string
	// Flows says whether baton keeps each UDP peer on the worker that
	// first got its datagrams, across reloads (FlowsAuto, FlowsOn,
	// FlowsQUIC, FlowsOff); empty means FlowsAuto. UDP listeners only.
	Flows string

	family string
	// steer makes Bind set SO_REUSEPORT whatever the balance: the
	// socket joins a steered group (one socket per generation).
	steer bool
}

// Flow modes (the flows option of a UDP listener).
const (
	// FlowsAuto keeps flows where baton may load the steering program,
	// and says once why not elsewhere (the default).
	FlowsAuto = "auto"
	// FlowsOn keeps flows, or refuses to start.
	FlowsOn = "on"
	// FlowsQUIC is FlowsOn, and also steers QUIC short-header packets
	// by the cookie their connection ID starts with, to the worker that
	// issued it: QUIC connections survive a client's change of address.
	FlowsQUIC = "quic"
	// FlowsOff never steers: old and new workers read one socket (or one
	// per slot), as TCP listeners are shared.
	FlowsOff = "off"
)

// WantsFlows reports whether the spec asks for its UDP flows to be kept
// (flows=auto, the default, on or quic).
func (s Spec) WantsFlows() bool {
	return s.Kind == Datagram && s.IsInet() && s.Flows != FlowsOff
}

// NeedsFlows reports whether baton refuses to start the listener where
// it cannot keep its flows (flows=on or quic).
func (s Spec) NeedsFlows() bool {
	return s.WantsFlows() && (s.Flows == FlowsOn || s.Flows == FlowsQUIC)
}

// QUICFlows reports whether the steering program also reads QUIC
// connection IDs (flows=quic).
func (s Spec) QUICFlows() bool { return s.WantsFlows() && s.Flows == FlowsQUIC }

// IsInet reports whether the spec is a TCP or UDP address.
func (s Spec) IsInet() bool { return strings.HasPrefix(s.family, "inet") }

// IsUnix reports whether the spec is a unix socket.
func (s Spec) IsUnix() bool { return s.family == "unix" }

// Abstract reports whether the spec names a socket in the abstract namespace.
func (s Spec) Abstract() bool { return s.IsUnix() && strings.HasPrefix(s.Path, "@") }

// Address is the address part of the spec without scheme and options, as
// given to net.Listen: "127.0.0.1:8080", "[::1]:0", "/run/app.sock".
func (s Spec) Address() string {
	if s.IsUnix() {
		return s.Path
	}
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// URL is the spec's canonical form without the name:
// "tcp://127.0.0.1:8080?backlog=64", the options that are set in the
// order of their keys. Two specs with the same URL need the same socket.
func (s Spec) URL() string { return s.url(func(*Option) bool { return true }) }

// url is the URL with only the options that keep reports true for.
func (s Spec) url(keep func(*Option) bool) string {
	q := url.Values{}
	for _, o := range options {
		if v := o.format(s); v != "" && keep(o) {
			q.Set(o.Key, v)
		}
	}
	u := s.Scheme + "://" + s.Address()
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// String is the spec as the user would write it: NAME=URL.
func (s Spec) String() string { return s.Name + "=" + s.URL() }

// InPlace reports whether a listener may go from spec a to spec b keeping
// its sockets: they differ at most in options a reload changes on a live
// socket (Option.InPlace; Group.Adjust applies them).
func InPlace(a, b Spec) bool {
	fixed := func(o *Option) bool { return !o.InPlace }
	return a.Name == b.Name && a.url(fixed) == b.url(fixed)
}

// Parse parses a listener specification. It checks syntax, option names
// and values, and unix path lengths; it does not touch the network. Every
// error is a *SpecError (so wraps ErrSpec) and says what is allowed; an
// option at fault is an *OptionError inside it.
func Parse(text string) (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		return Spec{}, &SpecError{Text: text, Err: fmt.Errorf(format, args...)}
	}
	var s Spec
	rest := text
	if eq := strings.Index(rest, "="); eq >= 0 && eq < strings.Index(rest+"://", "://") {
		s.Name, rest = rest[:eq], rest[eq+1:]
		if err := checkName(s.Name); err != nil {
			return bad("%w", err)
		}
	}
	scheme, addr, ok := strings.Cut(rest, "://")
	if !ok {
		return bad("want SCHEME://ADDRESS, for example tcp://127.0.0.1:8080 or unix:///run/app.sock")
	}
	info, ok := schemes[scheme]
	if !ok {
		return bad("unknown scheme %q; use one of %s", scheme, strings.Join(schemeNames(), ", "))
	}
	s.Scheme, s.Kind, s.family = scheme, info.kind, info.family
	if s.Name == "" {
		s.Name = scheme
	}
	addr, query, _ := strings.Cut(addr, "?")

	if s.IsUnix() {
		if err := s.parseUnix(addr); err != nil {
			return bad("%w", err)
		}
	} else if err := s.parseInet(addr); err != nil {
		return bad("%w", err)
	}

	values, err := url.ParseQuery(query)
	if err != nil {
		return bad("options %q: %v", query, err)
	}
	if err := s.parseOptions(values); err != nil {
		return Spec{}, &SpecError{Text: text, Err: err}
	}
	return s, nil
}

func (s *Spec) parseUnix(addr string) error {
	switch {
	case addr == "" || addr == "@":
		return errors.New("no path; use unix:///absolute/path.sock or unix://@abstract-name")
	case strings.HasPrefix(addr, "@"):
	case !strings.HasPrefix(addr, "/"):
		return fmt.Errorf("path %q is not absolute; write unix:///absolute/path.sock (three slashes)", addr)
	}
	if len(addr) > MaxUnixPath {
		return fmt.Errorf("unix socket path is %d bytes; the kernel allows at most %d (sun_path): use a shorter path or an abstract name (unix://@NAME)", len(addr), MaxUnixPath)
	}
	s.Path = addr
	s.UID, s.GID = -1, -1
	return nil
}

func (s *Spec) parseInet(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want HOST:PORT, [IPV6]:PORT or :PORT", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q: want a number from 0 to 65535 (0 picks a free port)", port)
	}
	s.Host, s.Port = host, int(p)
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case s.family == "inet4" && !ip.Unmap().Is4():
			return fmt.Errorf("%s needs an IPv4 address, not %s", s.Scheme, host)
		case s.family == "inet6" && ip.Is4():
			return fmt.Errorf("%s needs an IPv6 address, not %s; use %s4:// or [::ffff:%s]", s.Scheme, host, strings.TrimSuffix(s.Scheme, "6"), host)
		}
		s.Host = ip.String()
	}
	return nil
}

// lookupOwner resolves "user[:group]" (names or numeric ids).
func lookupOwner(v string) (uid, gid int, err error) {
	name, group, hasGroup := strings.Cut(v, ":")
	uid, gid = -1, -1
	if name != "" {
		if uid, err = lookupID(name, user.Lookup, func(u *user.User) string { return u.Uid }); err != nil {
			return 0, 0, fmt.Errorf("user %q: %w", name, err)
		}
	}
	if hasGroup && group != "" {
		if gid, err = lookupID(group, user.LookupGroup, func(g *user.Group) string { return g.Gid }); err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", group, err)
		}
	}
	if uid < 0 && gid < 0 {
		return 0, 0, fmt.Errorf("%q: want user, user:group or :group", v)
	}
	return uid, gid, nil
}

func lookupID[T any](name string, lookup func(string) (T, error), id func(T) string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	v, err := lookup(name)
	if err != nil {
		return 0, errors.New("no such name on this system; use a name from /etc/passwd or /etc/group, or a number")
	}
	return strconv.Atoi(id(v))
}

// checkName validates a listener name for LISTEN_FDNAMES: systemd allows
// printable ASCII without ':' up to 255 bytes; baton is stricter so that
// names are also safe in environment variables, metrics labels and logs.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("name %q: want 1 to 255 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return fmt.Errorf("name %q: character %q not allowed; use letters, digits, '_', '-' and '.'", name, r)
		}
	}
	return nil
}

// CheckNames reports an error if two specs share a name.
func CheckNames(specs []Spec) error {
	seen := map[string]string{}
	for _, s := range specs {
		if prev, dup := seen[s.Name]; dup {
			return &SpecError{Err: fmt.Errorf("two listeners are named %q (%s and %s); name each one with NAME=ADDRESS", s.Name, prev, s.URL())}
		}
		seen[s.Name] = s.URL()
	}
	return nil
}

func (s Spec) describe() string {
	if s.Abstract() {
		return "abstract " + s.Scheme
	}
	return s.Scheme
}

func schemeNames() []string {
	names := make([]string, 0, len(schemes))
	for k := range schemes {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
