package batontest

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLingeringTCP(t *testing.T) {
	fd := LingeringTCP(t, 60*time.Second)
	// The test's own close, without waiting: SO_LINGER off first.
	defer unix.Close(fd)
	defer unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})

	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		t.Errorf("SO_TYPE = %d, %v; want SOCK_STREAM", typ, err)
	}
	if l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err != nil || l.Onoff == 0 || l.Linger != 60 {
		t.Errorf("SO_LINGER = %+v, %v; want on, 60s", l, err)
	}
	// Unsent bytes: the close waits for them (up to the linger time)
	// because the peer never reads.
	if n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err != nil || n == 0 {
		t.Errorf("SIOCOUTQ = %d, %v; want unsent bytes", n, err)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("F_GETFL = %#x, %v; want blocking", fl, err)
	}
	if fdf, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fdf&unix.FD_CLOEXEC == 0 {
		t.Errorf("F_GETFD = %#x, %v; want close-on-exec", fdf, err)
	}
}

// TestLingeringTCPCloseBlocks closes the last copy of a socket lingering
// for 1s: the close must take that second, which is what the helper is
// for. A lower bound, which no scheduling can make flaky.
func TestLingeringTCPCloseBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("blocks for the linger time, 1s")
	}
	fd := LingeringTCP(t, time.Second)
	start := time.Now()
	unix.Close(fd)
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("the last close of a socket lingering for 1s returned after %s", took)
	}
}

func TestNewLingeringTCPRefusesALingerItCannotSet(t *testing.T) {
	for _, d := range []time.Duration{0, 500 * time.Millisecond, -time.Second, 1 << 31 * time.Second} {
		fd, peer, err := NewLingeringTCP(d)
		if err == nil {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
			unix.Close(fd)
			peer.Close()
			t.Errorf("NewLingeringTCP(%s) succeeded", d)
		} else if !strings.Contains(err.Error(), d.String()) {
			t.Errorf("NewLingeringTCP(%s) = %v: the error should name the linger", d, err)
		}
	}
}
