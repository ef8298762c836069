package metrics

import (
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServerBoundsConnections: the metrics listener hands out at most
// MaxConns connections at once; the next waits until one is closed.
func TestServerBoundsConnections(t *testing.T) {
	s, err := Listen("127.0.0.1:0", http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range MaxConns + 1 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	var held []net.Conn
	for range MaxConns {
		c, err := s.ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	next := make(chan net.Conn, 1)
	go func() {
		if c, err := s.ln.Accept(); err == nil {
			next <- c
		}
	}()
	select {
	case <-next:
		t.Fatalf("a connection beyond the first %d was handed out while they were all open", MaxConns)
	case <-time.After(200 * time.Millisecond):
	}
	held[0].Close()
	select {
	case c := <-next:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no connection handed out after one of the first was closed")
	}
	for _, c := range held[1:] {
		c.Close()
	}
}

// An address that cannot be bound is refused with the flag, the cause
// and the fix.
func TestListenErrorSaysTheFix(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tt := range []struct {
		name, addr string
		want       []string
	}{
		{"in use", held.Addr().String(), []string{"--metrics " + held.Addr().String(), "address already in use", "another process serves on it", "choose another --metrics address"}},
		{"port out of range", "127.0.0.1:99999", []string{"--metrics 127.0.0.1:99999", "invalid port", "a port from 0 to 65535"}},
		{"no such local address", "192.0.2.1:9100", []string{"cannot assign requested address", "no interface of this host has that address", "127.0.0.1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Listen(tt.addr, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
			if err == nil {
				s.Close()
				t.Fatalf("Listen(%s) succeeded", tt.addr)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Listen(%s): %v\nwant it to contain %q", tt.addr, err, w)
				}
			}
		})
	}
}
