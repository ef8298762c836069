package inspect

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// These tests ask the real kernel (STYLE.md §5) about sockets the test
// process makes and holds, standing in for a worker.

// listenTCP listens on 127.0.0.1 with the given backlog (net.Listen always
// asks for somaxconn) and returns the listener and its inode.
func listenTCP(t *testing.T, backlog int) (*net.TCPListener, uint64) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(os.NewSyscallError("socket", err))
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(os.NewSyscallError("bind", err))
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		t.Fatal(os.NewSyscallError("listen", err))
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return ln.(*net.TCPListener), st.Ino
}

func dialN(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// waitView inspects until cond holds, for at most 10 seconds: the kernel
// finishes handshakes and state changes on loopback asynchronously.
func waitView(t *testing.T, in *Inspector, input Input, what string, cond func(*View) bool) *View {
	t.Helper()
	var v *View
	batontest.WaitFor(t, 10*time.Second, func() error {
		if v = in.Inspect(context.Background(), input); !cond(v) {
			return fmt.Errorf("waiting for %s: last view: %+v", what, v)
		}
		return nil
	})
	return v
}

func somaxconn(t *testing.T) int {
	t.Helper()
	n, err := readSysctl("net/core/somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The accept queue of a listener nobody accepts on: the view reports K
// waiting, as ss does, and warns when it is above 80% full.
func TestInspectAcceptQueue(t *testing.T) {
	const backlog, k = 10, 9
	ln, ino := listenTCP(t, backlog)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	dialN(t, addr.String(), k)
	input := Input{
		Listeners: []Listener{{Name: "http", Protocol: TCP, Addr: addr, Backlog: backlog, Sockets: []Socket{{Slot: Shared, Inode: ino}}}},
		Workers:   []Worker{{PID: os.Getpid(), Slot: 0, Generation: 1}},
	}
	var logBuf bytes.Buffer
	in := New(Options{Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
	defer in.Close()
	v := waitView(t, in, input, fmt.Sprintf("%d connections queued", k), func(v *View) bool {
		return v.Listeners[0].Sockets[0].RecvQ == k
	})
	if len(v.Errors) != 0 {
		t.Errorf("errors: %q", v.Errors)
	}
	sv := v.Listeners[0].Sockets[0]
	if sv.State != "LISTEN" || sv.SendQ != backlog || sv.Inode != ino || sv.Slot != nil {
		t.Errorf("socket %+v, want LISTEN with send_q %d", sv, backlog)
	}
	// Queued connections are ESTAB on the port, held by no process.
	if got := v.Listeners[0].Connections["ESTAB"]; got != k {
		t.Errorf("connections %v, want %d ESTAB", v.Listeners[0].Connections, k)
	}
	if len(v.Workers[0].Connections) != 0 {
		t.Errorf("the worker holds %v, want nothing: nothing was accepted", v.Workers[0].Connections)
	}
	if recvQ, sendQ, ok := ssQueues(t, addr.Port(), ino); ok && (recvQ != sv.RecvQ || sendQ != sv.SendQ) {
		t.Errorf("ss shows Recv-Q %d Send-Q %d; the view %d %d", recvQ, sendQ, sv.RecvQ, sv.SendQ)
	}
	if ws := withCode(v.Warnings, AcceptQueueFull); len(ws) != 1 {
		t.Errorf("warnings %+v, want one accept_queue_full", v.Warnings)
	}
	if !strings.Contains(logBuf.String(), "warning=accept_queue_full") {
		t.Errorf("the warning was not logged:\n%s", &logBuf)
	}
	if v.Host.Somaxconn != somaxconn(t) || v.Host.Netstat == nil || v.Host.Sockstat["TCP"] == nil {
		t.Errorf("host %+v", v.Host)
	}
	if w := v.Workers[0]; w.FDs < 3 || w.FDLimit == 0 || w.FDLimitHard == 0 {
		t.Errorf("worker fds %+v", w)
	}
}

func TestInspectBacklogClamped(t *testing.T) {
	max := somaxconn(t)
	ln, ino := listenTCP(t, max+1000)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	in := New(Options{})
	defer in.Close()
	v := in.Inspect(context.Background(), Input{Listeners: []Listener{{
		Name: "big", Protocol: TCP, Addr: addr, Backlog: max + 1000, Sockets: []Socket{{Slot: Shared, Inode: ino}},
	}}})
	want := fmt.Sprintf("backlog %d is capped at %d by net.core.somaxconn, so the accept queue holds at most %d connections", max+1000, max, max+1)
	if ws := withCode(v.Warnings, BacklogClamped); len(ws) != 1 || !strings.Contains(ws[0].Message, want) {
		t.Errorf("warnings %+v, want one backlog_clamped saying %q", v.Warnings, want)
	}
}

// Connections a worker accepted and never closed after the client did
// stay in CLOSE-WAIT on that worker, and raise the warning.
func TestInspectCloseWait(t *testing.T) {
	const k = 3
	ln, ino := listenTCP(t, 16)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	clients := dialN(t, addr.String(), k)
	var held []net.Conn
	for range k {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	for _, c := range clients {
		c.Close()
	}
	input := Input{
		Listeners: []Listener{{Name: "http", Protocol: TCP, Addr: addr, Backlog: 16, Sockets: []Socket{{Slot: Shared, Inode: ino}}}},
		Workers:   []Worker{{PID: os.Getpid(), Slot: 2, Generation: 5}},
	}
	in := New(Options{CloseWaitAge: time.Nanosecond})
	defer in.Close()
	v := waitView(t, in, input, "CLOSE-WAIT on the worker, and the warning", func(v *View) bool {
		return v.Workers[0].Connections["CLOSE-WAIT"] == k && len(withCode(v.Warnings, CloseWait)) > 0
	})
	if v.Listeners[0].Connections["CLOSE-WAIT"] != k {
		t.Errorf("listener connections %v, want %d CLOSE-WAIT", v.Listeners[0].Connections, k)
	}
	want := fmt.Sprintf("worker slot 2 (pid %d, generation 5) holds %d connections in CLOSE-WAIT", os.Getpid(), k)
	if ws := withCode(v.Warnings, CloseWait); len(ws) != 1 || !strings.Contains(ws[0].Message, want) {
		t.Errorf("warnings %+v, want one close_wait saying %q", v.Warnings, want)
	}
	for _, c := range held {
		c.Close()
	}
	waitView(t, in, input, "the warning to clear", func(v *View) bool { return len(withCode(v.Warnings, CloseWait)) == 0 })
}

// A unix listener's queue comes from unix_diag; a UDP socket's from its
// port's query.
func TestInspectUnixAndUDP(t *testing.T) {
	dir := t.TempDir()
	uln, err := net.Listen("unix", dir+"/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	uino := inodeOf(t, uln.(syscall.Conn))
	for range 2 {
		c, err := net.Dial("unix", dir+"/s.sock")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pino := inodeOf(t, pc.(syscall.Conn))
	s, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	input := Input{Listeners: []Listener{
		{Name: "admin", Protocol: Unix, Backlog: 0, Sockets: []Socket{{Slot: Shared, Inode: uino}}},
		{Name: "dns", Protocol: UDP, Addr: netip.MustParseAddrPort(pc.LocalAddr().String()), Sockets: []Socket{{Slot: Shared, Inode: pino}}},
	}}
	in := New(Options{})
	defer in.Close()
	v := waitView(t, in, input, "2 unix connections queued and a datagram waiting", func(v *View) bool {
		return v.Listeners[0].Sockets[0].RecvQ == 2 && v.Listeners[1].Sockets[0].RecvQ > 0
	})
	if u := v.Listeners[0].Sockets[0]; u.State != "LISTEN" {
		t.Errorf("unix socket %+v, want LISTEN", u)
	}
	if d := v.Listeners[1].Sockets[0]; d.State != "UNCONN" {
		t.Errorf("udp socket %+v, want UNCONN", d)
	}
	if v.Listeners[0].Connections != nil || v.Listeners[1].Connections != nil {
		t.Errorf("connections counted for unix or udp: %+v", v.Listeners)
	}
}

// A worker that has exited since the snapshot is no error.
func TestInspectExitedWorker(t *testing.T) {
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Skip("no /bin/true:", err)
	}
	in := New(Options{})
	defer in.Close()
	v := in.Inspect(context.Background(), Input{Workers: []Worker{{PID: cmd.Process.Pid}}})
	if len(v.Errors) != 0 || v.Workers[0].FDs != 0 {
		t.Errorf("view of an exited worker: %+v", v)
	}
}

func inodeOf(t testing.TB, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// ssQueues runs ss -ltne on the port and returns Recv-Q and Send-Q of the
// socket with the inode; false when ss is not installed.
func ssQueues(t *testing.T, port uint16, ino uint64) (recvQ, sendQ uint32, ok bool) {
	t.Helper()
	if _, err := exec.LookPath("ss"); err != nil {
		t.Log("ss (iproute2) is not installed: the queue is not compared with it")
		return 0, 0, false
	}
	out, err := exec.Command("ss", "-Hltne", fmt.Sprintf("( sport = :%d )", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.Contains(line, "ino:"+strconv.FormatUint(ino, 10)+" ") {
			continue
		}
		r, _ := strconv.ParseUint(f[1], 10, 32)
		s, _ := strconv.ParseUint(f[2], 10, 32)
		return uint32(r), uint32(s), true
	}
	t.Fatalf("ss does not show inode %d:\n%s", ino, out)
	return 0, 0, false
}
