package metrics

import (
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServerBoundsConnections: the metrics listener hands out at most
// MaxConns connections at once; the next waits until one is closed.
func TestServerBoundsConnections(t *testing.T) {
	s, err := Listen("127.0.0.1:0", http.NotFoundHandler(), nil, slog.New(slog.DiscardHandler))
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
