package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/fdpass"
)

// TestRefusedPeerCannotStallAccept plays a kernel without SO_PASSRIGHTS
// (the test turns it back on): a refused peer queues a lingering TCP
// socket on its connection and drops its own copy. baton's refusal must
// not close that socket on the accept loop: the next peer is answered at
// once, not after the linger time.
func TestRefusedPeerCannotStallAccept(t *testing.T) {
	name := fmt.Sprintf("@baton-refuse-test/%d/%d", os.Getpid(), time.Now().UnixNano())
	srv, err := ListenAbstract(name, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := fdpass.SetPassRights(srv.ln, true); errors.Is(err, fdpass.ErrNotSupported) {
		// The kernel takes descriptors on every socket: the case itself.
	} else if err != nil {
		t.Fatal(err)
	}
	// The refusal waits until the peer has queued its descriptor, so the
	// accept loop meets it whatever the scheduling.
	written := make(chan struct{})
	srv.Admit(func(p Peer) (func(), error) {
		select {
		case <-written:
		case <-time.After(10 * time.Second):
		}
		return nil, errors.New("not a worker")
	})
	go srv.Serve(func(context.Context, Peer, Request) (any, error) { return nil, nil })

	fd := batontest.LingeringTCP(t, time.Minute)
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WriteMsgUnix([]byte("x"), unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // baton's copy, in the queue, is the last one
	c.Close()
	close(written)

	answered := make(chan string, 1)
	go func() {
		c2, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: name, Net: "unix"})
		if err != nil {
			answered <- err.Error()
			return
		}
		defer c2.Close()
		b := make([]byte, 512)
		n, _ := c2.Read(b)
		answered <- string(b[:n])
	}()
	select {
	case got := <-answered:
		if got == "" {
			t.Errorf("the second peer got no refusal")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the accept loop stalled: the refused peer's queued socket was closed on it")
	}
	srv.closer.Wait()
}
