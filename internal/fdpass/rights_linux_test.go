package fdpass

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

func TestCloserDisarmsLinger(t *testing.T) {
	const linger = 60 * time.Second
	fd := batontest.LingeringTCP(t, linger)
	c := NewCloser(2, nil)
	queued := make(chan struct{})
	go func() {
		c.Close(fd)
		close(queued)
	}()
	select {
	case <-queued:
	case <-time.After(10 * time.Second):
		t.Fatal("Closer.Close blocked its caller")
	}
	closed := make(chan struct{})
	go func() {
		c.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("the close of a socket with SO_LINGER %s blocked: the closer did not turn SO_LINGER off", linger)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("fd %d is still open after Wait (fcntl: %v)", fd, err)
	}
	if n := c.Pending(); n != 0 {
		t.Errorf("Pending() = %d after Wait, want 0", n)
	}
}

func TestCloserClosesEveryKind(t *testing.T) {
	c := NewCloser(3, nil)
	var fds []int
	for range 50 {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []*os.File{r, w} {
			fd, err := unix.Dup(int(f.Fd()))
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
	}
	c.Close(fds...)
	c.Wait()
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Fatalf("fd %d still open after Wait", fd)
		}
	}
}

func TestSetPassRights(t *testing.T) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: "@fdpass-test-" + t.Name() + time.Now().Format("150405.000000"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := SetPassRights(ln, false); errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel without SO_PASSRIGHTS: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Before the server even accepts, the kernel refuses descriptors.
	_, _, err = c.WriteMsgUnix([]byte("x"), unix.UnixRights(0), nil)
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("sending a descriptor to a socket accepted from a listener with SO_PASSRIGHTS off: %v, want EPERM", err)
	}
	s, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := SetPassRights(s, true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WriteMsgUnix([]byte("y"), unix.UnixRights(0), nil); err != nil {
		t.Fatalf("sending a descriptor once the accepted socket takes them: %v", err)
	}
}
