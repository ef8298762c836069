package notify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

func listen(t *testing.T) (*Server, chan Message) {
	t.Helper()
	s, err := Listen(fmt.Sprintf("@baton-notify-test-%d-%s", os.Getpid(), t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	got := make(chan Message, 16)
	go s.Serve(func(m Message) { got <- m })
	return s, got
}

func recv(t *testing.T, got chan Message) Message {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
	}
	return Message{}
}

func TestNotifyCarriesSenderPID(t *testing.T) {
	batontest.CheckLeaks(t)
	s, got := listen(t)
	t.Setenv("NOTIFY_SOCKET", s.Addr())
	if sent, err := Notify("READY=1\nSTATUS=serving 3 clients\nnot an assignment"); !sent || err != nil {
		t.Fatalf("Notify: %v, %v", sent, err)
	}
	m := recv(t, got)
	if m.PID != os.Getpid() || m.UID != os.Getuid() {
		t.Errorf("sender pid %d uid %d, want %d %d", m.PID, m.UID, os.Getpid(), os.Getuid())
	}
	want := map[string]string{"READY": "1", "STATUS": "serving 3 clients"}
	if diff := cmp.Diff(want, m.Fields); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	batontest.CheckLeaks(t)
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Errorf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", sent, err)
	}
}

func TestServerDropsOversizeAndClosesPassedFds(t *testing.T) {
	batontest.CheckLeaks(t)
	s, got := listen(t)
	before := batontest.NumFDs(t)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrUnix{Name: s.Addr()}
	big := make([]byte, MaxMessage+100)
	for i := range big {
		big[i] = 'x'
	}
	if err := unix.Sendto(fd, big, 0, to); err != nil {
		t.Fatal(err)
	}
	// A notification with descriptors attached (FDSTORE=1): baton does not
	// keep them. Where the kernel can, it refuses them to the sender (a
	// local user could otherwise make baton close a lingering socket);
	// elsewhere baton closes them, off the reading goroutine.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	err = unix.Sendmsg(fd, []byte("FDSTORE=1\nREADY=1"), unix.UnixRights(p[0], p[1]), to, 0)
	unix.Close(p[0])
	unix.Close(p[1])
	switch refused := s.RefusesDescriptors() == nil; {
	case refused && !errors.Is(err, unix.EPERM):
		t.Fatalf("sending descriptors to the notify socket: %v; want EPERM (SO_PASSRIGHTS off)", err)
	case refused:
		if err := unix.Sendto(fd, []byte("FDSTORE=1\nREADY=1"), 0, to); err != nil {
			t.Fatal(err)
		}
	case err != nil:
		t.Fatal(err)
	}
	m := recv(t, got)
	if m.Fields["READY"] != "1" || m.Fields["FDSTORE"] != "1" {
		t.Errorf("got %v; the oversize datagram should have been dropped and this one delivered", m.Fields)
	}
	s.closer.Wait()
	if after := batontest.NumFDs(t); after != before+1 { // +1: the client socket
		t.Errorf("descriptors: %d before, %d after; passed fds leaked", before, after)
	}
}

func TestListenRefusesAPath(t *testing.T) {
	batontest.CheckLeaks(t)
	path := t.TempDir() + "/notify.sock"
	if s, err := Listen(path); err == nil {
		s.Close()
		t.Fatalf("Listen(%s) succeeded; want an error: baton never makes a notify socket file", path)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("READY=1\nSTATUS=x"))
	f.Add([]byte("=\n\n==\nA=B=C"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for k := range Parse(b) {
			if k == "" {
				t.Fatal("empty key")
			}
		}
	})
}

// TestNotifierNeverBlocks: a service manager that never reads fills its
// socket's queue; Notify still returns at once, what cannot wait is
// reported, and Close gives up after its timeout.
func TestNotifierNeverBlocks(t *testing.T) {
	batontest.CheckLeaks(t)
	addr := fmt.Sprintf("@baton-notifier-test-%d", os.Getpid())
	mgr, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close() // never read
	var mu sync.Mutex
	failed := 0
	n := NewNotifier(addr, func(string, error) {
		mu.Lock()
		failed++
		mu.Unlock()
	})
	done := make(chan struct{})
	go func() {
		for i := range 5000 {
			n.Notify(fmt.Sprintf("STATUS=%d", i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Notify blocked on a service manager that does not read")
	}
	closed := make(chan struct{})
	go func() {
		n.Close(100 * time.Millisecond)
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not give up on a service manager that does not read")
	}
	mu.Lock()
	defer mu.Unlock()
	if failed == 0 {
		t.Error("no notification was reported as lost, though the manager read none of 5,000")
	}
}

func TestNotifyAfterClose(t *testing.T) {
	batontest.CheckLeaks(t)
	n := NewNotifier("@baton-notifier-closed-test", func(string, error) {})
	n.Close(time.Second)
	n.Notify("READY=1") // a late READY=1 (a takeover's commit) must not panic
	n.Close(time.Second)
}

func TestNilNotifier(t *testing.T) {
	batontest.CheckLeaks(t)
	var n *Notifier = NewNotifier("", nil)
	n.Notify("READY=1")
	n.Flush(time.Second)
	n.Close(time.Second)
}
