package listener

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParse(t *testing.T) {
	no := false
	tests := []struct {
		name string
		in   string
		want Spec
	}{
		{"tcp with name", "http=tcp://127.0.0.1:8080", Spec{Name: "http", Scheme: "tcp", Kind: Stream, Host: "127.0.0.1", Port: 8080}},
		{"default name", "tcp://:0", Spec{Name: "tcp", Scheme: "tcp", Kind: Stream, Port: 0}},
		{"tcp6 literal", "tcp6://[::1]:9", Spec{Name: "tcp6", Scheme: "tcp6", Kind: Stream, Host: "::1", Port: 9}},
		{"hostname", "web=tcp4://localhost:80", Spec{Name: "web", Scheme: "tcp4", Kind: Stream, Host: "localhost", Port: 80}},
		{"udp", "dns=udp://0.0.0.0:53", Spec{Name: "dns", Scheme: "udp", Kind: Datagram, Host: "0.0.0.0", Port: 53}},
		{"options", "tcp://127.0.0.1:1?backlog=64", Spec{Name: "tcp", Scheme: "tcp", Kind: Stream, Host: "127.0.0.1", Port: 1, Backlog: 64}},
		{"v6only", "udp6://[::]:5?v6only=false", Spec{Name: "udp6", Scheme: "udp6", Kind: Datagram, Host: "::", Port: 5, V6Only: &no}},
		{"unix path", "unix:///run/app.sock?mode=0660&owner=0:0", Spec{Name: "unix", Scheme: "unix", Kind: Stream, Path: "/run/app.sock", Mode: 0o660, Owner: "0:0", UID: 0, GID: 0}},
		{"abstract", "adm=unix://@baton-admin", Spec{Name: "adm", Scheme: "unix", Kind: Stream, Path: "@baton-admin", UID: -1, GID: -1}},
		{"unixgram", "unixgram:///tmp/log.sock", Spec{Name: "unixgram", Scheme: "unixgram", Kind: Datagram, Path: "/tmp/log.sock", UID: -1, GID: -1}},
		{"reuseport", "udp://127.0.0.1:0?balance=reuseport", Spec{Name: "udp", Scheme: "udp", Kind: Datagram, Host: "127.0.0.1", Balance: Reuseport}},
		{"equals in query", "tcp://127.0.0.1:1?backlog=2", Spec{Name: "tcp", Scheme: "tcp", Kind: Stream, Host: "127.0.0.1", Port: 1, Backlog: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreUnexported(Spec{})); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
			}
			// The canonical form parses back to the same spec.
			again, err := Parse(got.String())
			if err != nil {
				t.Fatalf("Parse(%q), the canonical form: %v", got.String(), err)
			}
			if diff := cmp.Diff(got, again, cmpopts.IgnoreUnexported(Spec{})); diff != "" {
				t.Errorf("round trip through %q (-first +second):\n%s", got.String(), diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"127.0.0.1:8080", "want SCHEME://ADDRESS"},
		{"http://127.0.0.1:80", `unknown scheme "http"; use one of tcp, tcp4, tcp6, udp, udp4, udp6, unix, unixgram`},
		{"tcp://127.0.0.1", "want HOST:PORT"},
		{"tcp://127.0.0.1:http", `port "http": want a number from 0 to 65535`},
		{"tcp://127.0.0.1:65536", `port "65536"`},
		{"tcp4://[::1]:80", "tcp4 needs an IPv4 address, not ::1"},
		{"tcp6://127.0.0.1:80", "tcp6 needs an IPv6 address"},
		{"tcp://:1?backlog=0", "option backlog: \"0\": want a number from 1"},
		{"tcp://:1?backlog=x", "want a number"},
		{"tcp://:1?bogus=1", `unknown option "bogus"; options are ` + strings.Join(optionNames(), ", ")},
		{"tcp://:1?balance=random", `want shared or reuseport`},
		{"unix:///a.sock?balance=reuseport", `option "balance" does not apply to unix`},
		{"tcp://:1?mode=0600", `option "mode" does not apply to tcp listeners`},
		{"tcp4://:1?v6only=true", `option "v6only" does not apply to tcp4`},
		{"udp://:1?backlog=4", `option "backlog" does not apply to udp`},
		{"unix://@x?mode=0600", `option "mode" does not apply to abstract unix`},
		{"unix:///a.sock?mode=999", "want octal permission bits"},
		{"unix:///a.sock?owner=no-such-user-xyz", `user "no-such-user-xyz": no such name`},
		{"unix:///a.sock?backlog=1&backlog=2", `option "backlog" given 2 times`},
		{"unix://relative.sock", "not absolute"},
		{"unix://", "no path"},
		{"unix:///" + strings.Repeat("a", 110), "the kernel allows at most 107"},
		{"bad name=tcp://:1", `name "bad name": character ' ' not allowed`},
		{"a:b=tcp://:1", `character ':' not allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error", tt.in)
			}
			if !errors.Is(err, ErrSpec) {
				t.Errorf("error %v does not wrap ErrSpec", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestCheckNames(t *testing.T) {
	a := mustParse(t, "tcp://:1")
	b := mustParse(t, "tcp://:2")
	c := mustParse(t, "other=tcp://:2")
	if err := CheckNames([]Spec{a, c}); err != nil {
		t.Errorf("distinct names: %v", err)
	}
	if err := CheckNames([]Spec{a, b}); err == nil || !strings.Contains(err.Error(), `two listeners are named "tcp"`) {
		t.Errorf("duplicate names: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"http=tcp://127.0.0.1:8080?backlog=1", "unix:///x?mode=0600", "udp6://[::1]:0?v6only=1", "a=unix://@x", "tcp://:%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			return
		}
		again, err := Parse(s.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", s.String(), in, err)
		}
		if again.String() != s.String() {
			t.Fatalf("canonical form not stable: %q then %q", s.String(), again.String())
		}
	})
}
