package quicid

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name, value, listener string
		want                  Cookie
		err                   error // nil: any error when bad
		bad                   bool
	}{
		{name: "one", value: "quic=0003a1b2", listener: "quic", want: Cookie{0, 3, 0xa1, 0xb2}},
		{name: "second of two", value: "quic=0003a1b2,alt=0004C3D4", listener: "alt", want: Cookie{0, 4, 0xc3, 0xd4}},
		{name: "empty", value: "", listener: "quic", err: ErrNoCookie},
		{name: "other listener", value: "alt=0003a1b2", listener: "quic", err: ErrNoCookie},
		{name: "no name", value: "0003a1b2", listener: "quic", bad: true},
		{name: "short", value: "quic=0003a1", listener: "quic", bad: true},
		{name: "long", value: "quic=0003a1b2c3", listener: "quic", bad: true},
		{name: "not hex", value: "quic=0003a1bz", listener: "quic", bad: true},
		{name: "empty name", value: "=0003a1b2", listener: "quic", bad: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.value, tt.listener)
			switch {
			case tt.err != nil && !errors.Is(err, tt.err):
				t.Errorf("Parse(%q, %q) = %v; want %v", tt.value, tt.listener, err, tt.err)
			case tt.bad && (err == nil || errors.Is(err, ErrNoCookie)):
				t.Errorf("Parse(%q, %q) = %v; want an error that is not ErrNoCookie", tt.value, tt.listener, err)
			case tt.err == nil && !tt.bad && (err != nil || got != tt.want):
				t.Errorf("Parse(%q, %q) = %s, %v; want %s", tt.value, tt.listener, got, err, tt.want)
			}
		})
	}
}

func TestGenerator(t *testing.T) {
	c := Cookie{0, 7, 0x12, 0x34}
	for _, n := range []int{0, MinLen, 12, MaxLen} {
		g, err := New(c, n)
		if err != nil {
			t.Fatalf("New(%d): %v", n, err)
		}
		want := n
		if n == 0 {
			want = DefaultLen
		}
		if g.ConnectionIDLen() != want {
			t.Errorf("New(%d).ConnectionIDLen() = %d; want %d", n, g.ConnectionIDLen(), want)
		}
		seen := map[string]bool{}
		for range 1000 {
			id, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := id.Bytes()
			if len(b) != want || !bytes.Equal(b[:CookieLen], c[:]) {
				t.Fatalf("ID %x: want %d bytes starting with %s", b, want, c)
			}
			if seen[string(b)] {
				t.Fatalf("ID %x issued twice", b)
			}
			seen[string(b)] = true
		}
	}
	for _, n := range []int{1, MinLen - 1, MaxLen + 1, -1} {
		if _, err := New(c, n); err == nil {
			t.Errorf("New(%d) accepted", n)
		}
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(EnvVar, "")
	if g, err := FromEnv("quic"); g != nil || err != nil {
		t.Errorf("FromEnv without a cookie = %v, %v; want nil, nil", g, err)
	}
	t.Setenv(EnvVar, "quic=00010203")
	g, err := FromEnv("quic")
	if err != nil || g == nil || g.Cookie() != (Cookie{0, 1, 2, 3}) || g.ConnectionIDLen() != DefaultLen {
		t.Errorf("FromEnv = %v, %v; want the cookie 00010203 and %d-byte IDs", g, err, DefaultLen)
	}
	t.Setenv(EnvVar, "quic=nothex!!")
	if _, err := FromEnv("quic"); err == nil || !strings.Contains(err.Error(), EnvVar) {
		t.Errorf("FromEnv with a bad cookie: %v; want an error naming %s", err, EnvVar)
	}
	var _ quic.ConnectionIDGenerator = g
}

// FuzzParse: Parse never panics, and a cookie it returns is the one the
// value names, as String writes it.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"quic=0003a1b2", "a=00000000,quic=ffffffff", "", "quic", "quic=", "=", ",,", "quic=0003a1b2,quic=zz"} {
		f.Add(s, "quic")
	}
	f.Fuzz(func(t *testing.T, value, listener string) {
		c, err := Parse(value, listener)
		if err != nil {
			return
		}
		for _, item := range strings.Split(value, ",") {
			if name, h, _ := strings.Cut(item, "="); name == listener {
				if !strings.EqualFold(h, c.String()) {
					t.Errorf("Parse(%q, %q) = %s; the value names %q", value, listener, c, h)
				}
				return
			}
		}
		t.Errorf("Parse(%q, %q) = %s, which the value does not name", value, listener, c)
	})
}

func ExampleFromEnv() {
	gen, err := FromEnv("quic")
	if err != nil {
		panic(err)
	}
	tr := &quic.Transport{} // Conn: baton.PacketConn("quic", addr)
	if gen != nil {         // under baton, with flows=quic
		tr.ConnectionIDGenerator = gen
	}
	_ = tr
}
