package notify

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// manager is the receiving side of systemd's NOTIFY_SOCKET as systemd
// sets it up: SO_PASSCRED, and descriptors accepted.
func manager(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	addr := fmt.Sprintf("@baton-notifier-fds-%d-%s", os.Getpid(), t.Name())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, _ := conn.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	return conn, addr
}

// TestNotifierPassesDescriptors: FDSTORE=1 goes out with its descriptor
// and the sender's credentials in one datagram, in order with the other
// notifications, and the Notifier closes its copy once sent.
func TestNotifierPassesDescriptors(t *testing.T) {
	batontest.CheckLeaks(t)
	conn, addr := manager(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var st unix.Stat_t
	raw, _ := ln.(*net.TCPListener).SyscallConn()
	dup := -1
	raw.Control(func(fd uintptr) {
		unix.Fstat(int(fd), &st)
		dup, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	before := batontest.NumFDs(t)
	n := NewNotifier(addr, func(state string, err error) { t.Errorf("%q: %v", state, err) })
	n.Notify("STATUS=first")
	n.NotifyFds("FDSTORE=1\nFDNAME=http", []int{dup})
	n.Notify("READY=1")
	n.Flush(10 * time.Second)

	buf, oob := make([]byte, 4096), make([]byte, 1024)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, want := range []string{"STATUS=first", "FDSTORE=1\nFDNAME=http", "READY=1"} {
		nb, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:nb]); got != want {
			t.Fatalf("datagram %d = %q, want %q", i, got, want)
		}
		cred, fds := parseControl(oob[:noob])
		if cred == nil || int(cred.Pid) != os.Getpid() {
			t.Errorf("datagram %d: credentials %+v, want pid %d", i, cred, os.Getpid())
		}
		if want != "FDSTORE=1\nFDNAME=http" {
			if len(fds) != 0 {
				t.Errorf("datagram %d carries %d descriptors, want none", i, len(fds))
			}
			continue
		}
		if len(fds) != 1 {
			t.Fatalf("FDSTORE datagram carries %d descriptors, want 1", len(fds))
		}
		var got unix.Stat_t
		unix.Fstat(fds[0], &got)
		unix.Close(fds[0])
		if got.Ino != st.Ino {
			t.Errorf("the descriptor received is inode %d, the listener's is %d", got.Ino, st.Ino)
		}
	}
	n.Close(time.Second)
	if after := batontest.NumFDs(t); after != before-1 {
		t.Errorf("descriptors: %d before the Notifier had the duplicate, %d after it sent it; want one fewer", before, after)
	}
}

// TestNotifierClosesDescriptorsItCannotSend: descriptors given to a
// closed Notifier, a nil one, or one whose manager is gone are closed,
// never leaked.
func TestNotifierClosesDescriptorsItCannotSend(t *testing.T) {
	batontest.CheckLeaks(t)
	pipe := func() []int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		return p[:]
	}
	before := batontest.NumFDs(t)
	var nilN *Notifier
	nilN.NotifyFds("FDSTORE=1", pipe())

	closed := NewNotifier("@baton-notifier-fds-nobody", func(string, error) {})
	closed.Close(time.Second)
	closed.NotifyFds("FDSTORE=1", pipe())

	failed := make(chan error, 1)
	gone := NewNotifier(fmt.Sprintf("@baton-notifier-fds-gone-%d", os.Getpid()), func(_ string, err error) { failed <- err })
	gone.NotifyFds("FDSTORE=1", pipe())
	select {
	case <-failed:
	case <-time.After(10 * time.Second):
		t.Fatal("a send to a socket nobody bound was not reported")
	}
	gone.Close(time.Second)
	if after := batontest.NumFDs(t); after != before {
		t.Errorf("descriptors: %d before, %d after; the Notifier leaked what it could not send", before, after)
	}
}
