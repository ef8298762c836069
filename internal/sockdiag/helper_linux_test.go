package sockdiag

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// The test binary doubles as the child processes the tests need (STYLE.md
// §6): with SOCKDIAG_HELPER set, TestMain runs that helper instead of the
// tests. A helper prints one line when it is ready and exits when its stdin
// reaches EOF (the parent closed it or died) or after helperTimeout.
const helperEnv = "SOCKDIAG_HELPER"

const helperTimeout = 10 * time.Minute

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

func runHelper(mode, arg string) int {
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	time.AfterFunc(helperTimeout, func() {
		fmt.Fprintln(os.Stderr, "helper: timed out")
		os.Exit(3)
	})
	var err error
	switch mode {
	case "idle":
		fmt.Println("ready")
	case "closewait":
		err = helperCloseWait()
	case "hold":
		err = helperHold(arg)
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	select {}
}

// helperCloseWait listens on 127.0.0.1, prints the port, and accepts
// connections it never reads from or closes: when clients close, the
// accepted sockets sit in CLOSE_WAIT, the classic leak.
func helperCloseWait() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		helperHeld = append(helperHeld, c)
	}
}

// helperHeld keeps the accepted connections reachable: the finalizer of
// an unreachable net.Conn would close it.
var helperHeld []net.Conn

// helperHold opens n loopback connections to its own listener and holds
// both ends: 2n sockets in ESTABLISHED for the benchmark's crowded host.
// Both ends linger 0, so the helper's exit resets them instead of leaving
// TIME_WAIT sockets behind for a minute.
func helperHold(arg string) error {
	n, err := strconv.Atoi(arg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	accepted := make(chan error, 1)
	var held []net.Conn
	go func() {
		for range n {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.(*net.TCPConn).SetLinger(0)
			held = append(held, c)
		}
		accepted <- nil
	}()
	d := net.Dialer{Timeout: 10 * time.Second}
	var dialed []net.Conn
	for i := range n {
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
		c.(*net.TCPConn).SetLinger(0)
		dialed = append(dialed, c)
	}
	if err := <-accepted; err != nil {
		return err
	}
	fmt.Println("ready", len(held), len(dialed))
	select {}
}

// helper is a running child process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	pid   int
}

// startHelper runs the test binary as a helper in mode, with files as its
// fds 3 and up, and waits for its first line, which it returns. Cleanup
// closes its stdin and reaps it.
func startHelper(tb testing.TB, mode, arg string, files ...*os.File) (*helper, string) {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", arg)
	// Under -race a process sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	// Pdeathsig fires when the thread that started the child exits, so
	// lock it for the start; stdin EOF is the main way out anyway.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		tb.Fatalf("starting helper %s: %v", mode, err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), pid: cmd.Process.Pid}
	tb.Cleanup(h.stop)
	line := make(chan string, 1)
	go func() {
		s, _ := h.out.ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s == "" {
			tb.Fatalf("helper %s exited before it was ready", mode)
		}
		return h, s
	case <-time.After(2 * time.Minute):
		tb.Fatalf("helper %s not ready after 2 minutes", mode)
	}
	return nil, ""
}

// stop closes the helper's stdin, which makes it exit, and reaps it;
// SIGKILL if it has not gone within 10 seconds.
func (h *helper) stop() {
	h.stdin.Close()
	done := make(chan struct{})
	go func() {
		h.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
}

// waitFor polls cond until it reports true, for at most 10 seconds. The
// kernel finishes handshakes and state changes on loopback asynchronously;
// this waits for a state, it does not time anything.
func waitFor(tb testing.TB, what string, cond func() (bool, string)) {
	tb.Helper()
	batontest.WaitFor(tb, 10*time.Second, func() error {
		if ok, detail := cond(); !ok {
			return fmt.Errorf("waiting for %s: last: %s", what, detail)
		}
		return nil
	})
}

func dial(tb testing.TB) *Conn {
	tb.Helper()
	c, err := Dial()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// rawListener is a listening socket made with plain syscalls, so the test
// chooses the backlog (net.Listen always asks for somaxconn).
type rawListener struct {
	fd   int
	addr netip.AddrPort
	ino  uint64
}

// listenTCP binds a TCP socket to ip (loopback) on port (0 for any) and
// listens with backlog. It skips the test if the host has no IPv6
// loopback.
func listenTCP(tb testing.TB, ip string, port uint16, backlog int, reuseport bool) rawListener {
	tb.Helper()
	addr := netip.MustParseAddr(ip)
	var sa unix.Sockaddr
	family := unix.AF_INET
	if addr.Is4() {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		skipNoIPv6(tb, addr, err)
		tb.Fatal(os.NewSyscallError("socket", err))
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if reuseport {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			tb.Fatal(os.NewSyscallError("setsockopt", err))
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		skipNoIPv6(tb, addr, err)
		tb.Fatal(os.NewSyscallError("bind", err))
	}
	if err := unix.Listen(fd, backlog); err != nil {
		tb.Fatal(os.NewSyscallError("listen", err))
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		port = uint16(got.Port)
	case *unix.SockaddrInet6:
		port = uint16(got.Port)
	}
	return rawListener{fd: fd, addr: netip.AddrPortFrom(addr, port), ino: fdInode(tb, fd)}
}

func skipNoIPv6(tb testing.TB, addr netip.Addr, err error) {
	tb.Helper()
	if addr.Is6() && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL)) {
		tb.Skipf("no IPv6 loopback on this host (%v): the IPv6 case needs ::1", err)
	}
}

// fdInode is the inode of fd, as fstat reports it: what baton knows of
// each socket it holds.
func fdInode(tb testing.TB, fd int) uint64 {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		tb.Fatal(os.NewSyscallError("fstat", err))
	}
	return st.Ino
}

// connFD returns the fd and inode of a net.Conn or net.Listener.
func connFD(tb testing.TB, c syscall.Conn) (int, uint64) {
	tb.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		tb.Fatal(err)
	}
	return fd, fdInode(tb, fd)
}

// dialN opens n TCP connections to addr and closes them at cleanup.
func dialN(tb testing.TB, addr netip.AddrPort, n int) []net.Conn {
	tb.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := d.Dial("tcp", addr.String())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// ssPath is the ss binary, "" when iproute2 is not installed.
var ssPath, _ = exec.LookPath("ss")

// runSS runs ss with -H (no header) and the arguments, returning the
// fields of each line. It skips the (sub)test when ss is absent.
func runSS(tb testing.TB, args ...string) [][]string {
	tb.Helper()
	if ssPath == "" {
		tb.Skip("ss (iproute2) is not installed: nothing to compare with")
	}
	out, err := exec.Command(ssPath, append([]string{"-H"}, args...)...).Output()
	if err != nil {
		tb.Fatalf("ss %s: %v", strings.Join(args, " "), err)
	}
	var lines [][]string
	for l := range strings.Lines(string(out)) {
		if f := strings.Fields(l); len(f) > 0 {
			lines = append(lines, f)
		}
	}
	return lines
}

// ssQueues finds the socket with inode ino in the output of ss -e and
// returns its Recv-Q and Send-Q.
func ssQueues(tb testing.TB, lines [][]string, ino uint64) (recvQ, sendQ uint32) {
	tb.Helper()
	for _, f := range lines {
		for _, x := range f {
			if x == "ino:"+strconv.FormatUint(ino, 10) {
				return atou32(tb, f[1]), atou32(tb, f[2])
			}
		}
	}
	tb.Fatalf("ss lists no socket with inode %d: %v", ino, lines)
	return 0, 0
}

// ssStateCounts counts the lines of `ss -tan` output by state.
// peerPorts is the set of local ports of the test's client connections.
func peerPorts(conns []net.Conn) map[uint16]bool {
	ports := make(map[uint16]bool, len(conns))
	for _, c := range conns {
		ports[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = true
	}
	return ports
}

// ours keeps the test's own sockets on a port: those at local, its
// listener's address, that are the listener or a connection whose peer is
// one of the test's clients. A port picked by bind(port 0) may still carry
// TIME-WAIT sockets of an earlier connection (SO_REUSEADDR lets bind take
// such a port), and another address may have a listener of its own on the
// same port number ([::1] beside 127.0.0.1, from a test running in
// parallel), so a count of the whole port would also count sockets that
// are not the test's.
func ours(socks []Socket, local netip.AddrPort, peers map[uint16]bool) []Socket {
	var kept []Socket
	for _, s := range socks {
		if s.Local == local && (s.State == Listen || peers[s.Remote.Port()]) {
			kept = append(kept, s)
		}
	}
	return kept
}

// ssOurs is ours for the lines of ss -tan: state, queues, local, peer.
func ssOurs(lines [][]string, local netip.AddrPort, peers map[uint16]bool) [][]string {
	var kept [][]string
	for _, f := range lines {
		if l, err := netip.ParseAddrPort(f[3]); err != nil || l != local {
			continue
		}
		peer := f[4]
		p, err := strconv.ParseUint(peer[strings.LastIndexByte(peer, ':')+1:], 10, 16)
		if f[0] == "LISTEN" || err == nil && peers[uint16(p)] {
			kept = append(kept, f)
		}
	}
	return kept
}

func ssStateCounts(lines [][]string) map[string]int {
	n := make(map[string]int)
	for _, f := range lines {
		n[f[0]]++
	}
	return n
}

func stateNameCounts(socks []Socket) map[string]int {
	n := make(map[string]int)
	for s, c := range CountByState(socks) {
		n[s.String()] = c
	}
	return n
}

func atou32(tb testing.TB, s string) uint32 {
	tb.Helper()
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		tb.Fatalf("parsing %q: %v", s, err)
	}
	return uint32(v)
}

func somaxconn(tb testing.TB) int {
	tb.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}
