package fdpass

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// The test binary doubles as the child process of the tests that need a
// second process (STYLE.md §6): FDPASS_TEST_HELPER names what it does,
// and fd 3 is its end of the socket.
const helperEnv = "FDPASS_TEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		if err := runHelper(h); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", h, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// Open the runtime's poller now, so its descriptors are not counted
	// as a leak of the first test.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	os.Exit(m.Run())
}

// pair returns two connected unix sockets of type typ.
func pair(t testing.TB, typ int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := fileConn(t, fds[0]), fileConn(t, fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// rawPair returns a *net.UnixConn and the raw, blocking descriptor of its
// peer, for a fake peer that writes whatever it likes, and a function that
// hangs the fake peer up (once; cleanup calls it too).
func rawPair(t testing.TB, typ int) (*net.UnixConn, int, func()) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(fds[0], true)
	// The fake peer blocks, but never for long.
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(fds[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fds[1], unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	c := fileConn(t, fds[0])
	hangup := sync.OnceFunc(func() { unix.Close(fds[1]) })
	t.Cleanup(func() { c.Close(); hangup() })
	return c, fds[1], hangup
}

// fileConn wraps a socket descriptor, taking it over.
func fileConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close() // FileConn dups it
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// sockets makes n unbound unix datagram sockets: one descriptor each, each
// with an inode of its own.
func sockets(t testing.TB, n int) []int {
	t.Helper()
	fds, err := makeSockets(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { CloseAll(fds) })
	return fds
}

func makeSockets(n int) ([]int, error) {
	fds := make([]int, 0, n)
	for range n {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			CloseAll(fds)
			return nil, os.NewSyscallError("socket", err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, os.NewSyscallError("fstat", err)
	}
	return st.Ino, nil
}

// describe builds a transfer of fds whose names are their index and
// whose meta starts with their inode, padded to metaLen bytes.
func describe(fds []int, metaLen int) ([]FD, error) {
	out := make([]FD, len(fds))
	for i, fd := range fds {
		ino, err := inode(fd)
		if err != nil {
			return nil, err
		}
		meta := binary.BigEndian.AppendUint64(nil, ino)
		for len(meta) < metaLen {
			meta = append(meta, byte(i+len(meta)))
		}
		out[i] = FD{Fd: fd, Name: strconv.Itoa(i), Kind: "socket", Meta: meta}
	}
	return out, nil
}

// verify checks that got are the sent descriptors, in order: each name is
// its index, each meta is what was sent, each descriptor has the inode
// its meta names and FD_CLOEXEC, and none is one of the sender's numbers
// reused.
func verify(got, sent []FD) error {
	if len(got) != len(sent) {
		return fmt.Errorf("received %d descriptors, sent %d", len(got), len(sent))
	}
	for i := range got {
		g, s := &got[i], &sent[i]
		if g.Name != s.Name || g.Kind != s.Kind || !bytes.Equal(g.Meta, s.Meta) {
			return fmt.Errorf("descriptor %d: got name %q kind %q meta %d bytes, sent %q %q %d bytes", i, g.Name, g.Kind, len(g.Meta), s.Name, s.Kind, len(s.Meta))
		}
		ino, err := inode(g.Fd)
		if err != nil {
			return fmt.Errorf("descriptor %d (fd %d): %w", i, g.Fd, err)
		}
		if want := binary.BigEndian.Uint64(s.Meta); ino != want {
			return fmt.Errorf("descriptor %d (fd %d) is inode %d, sent inode %d", i, g.Fd, ino, want)
		}
		flags, err := unix.FcntlInt(uintptr(g.Fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			return fmt.Errorf("descriptor %d (fd %d) lacks FD_CLOEXEC (flags %#x, %v)", i, g.Fd, flags, err)
		}
	}
	return nil
}

func closeFDs(fds []FD) {
	for _, f := range fds {
		unix.Close(f.Fd)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type recvResult struct {
	fds []FD
	err error
}

// within runs f in a goroutine and fails the test, with every
// goroutine's stack, if f has not returned after d: a hang in the code
// under test ends the test with a report instead of waiting for go
// test's -timeout. f must not call t.Fatal.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s: still running after %v\n%s", what, d, buf)
	}
}

// goRecv runs Recv on c in a goroutine.
func goRecv(ctx context.Context, c *net.UnixConn, lim Limits) <-chan recvResult {
	ch := make(chan recvResult, 1)
	go func() {
		fds, err := Recv(ctx, c, lim)
		ch <- recvResult{fds, err}
	}()
	return ch
}

// TestKernelStreamSemantics pins the Linux behaviour the framing relies
// on: on SOCK_STREAM, descriptors come with the first byte of the
// sendmsg that carried them, and a recvmsg that picks them up stops at
// the end of that sendmsg's data, never reading into the next message
// with descriptors.
func TestKernelStreamSemantics(t *testing.T) {
	batontest.CheckLeaks(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(sp[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	fds := sockets(t, 5)
	send := func(data string, fds ...int) {
		t.Helper()
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if err := unix.Sendmsg(sp[0], []byte(data), oob, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	oob := make([]byte, oobSize)
	recv := func(size int) (string, int) {
		t.Helper()
		b := make([]byte, size)
		n, oobn, flags, _, err := recvmsgRetry(sp[1], b, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseRights(oob[:oobn])
		CloseAll(got)
		if err != nil || flags&unix.MSG_CTRUNC != 0 {
			t.Fatalf("recvmsg: flags %#x, %v", flags, err)
		}
		return string(b[:n]), len(got)
	}
	send("aaaa")
	send("bbbb", fds[:3]...)
	send("cccc", fds[3:]...)
	send("dddd")
	// Data without descriptors joins the read, the message with them
	// ends it.
	if data, n := recv(100); data != "aaaabbbb" || n != 3 {
		t.Errorf("first read: %q with %d descriptors, want \"aaaabbbb\" with 3", data, n)
	}
	if data, n := recv(100); data != "cccc" || n != 2 {
		t.Errorf("second read: %q with %d descriptors, want \"cccc\" with 2", data, n)
	}
	if data, n := recv(100); data != "dddd" || n != 0 {
		t.Errorf("third read: %q with %d descriptors, want \"dddd\" with none", data, n)
	}
	// A large sendmsg is split into several buffers; the descriptors
	// come with its first byte.
	big := strings.Repeat("x", 300<<10)
	sent := make(chan error, 1)
	go func() { sent <- unix.Sendmsg(sp[0], []byte(big), unix.UnixRights(fds[0]), nil, 0) }()
	if data, n := recv(1); data != "x" || n != 1 {
		t.Errorf("first byte of a large message: %q with %d descriptors, want \"x\" with 1", data, n)
	}
	for left := len(big) - 1; left > 0; {
		b := make([]byte, left)
		n, oobn, _, _, err := recvmsgRetry(sp[1], b, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := parseRights(oob[:oobn]); len(got) > 0 {
			CloseAll(got)
			t.Fatalf("descriptors arrived again %d bytes before the end of the message", left)
		}
		left -= n
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		typ     int
		n       int
		metaLen int
		lim     Limits
		sockopt int // turned on on the receiver: extra control messages
	}{
		{name: "empty", typ: unix.SOCK_STREAM, n: 0},
		{name: "one", typ: unix.SOCK_STREAM, n: 1, metaLen: 8},
		{name: "one batch", typ: unix.SOCK_STREAM, n: MaxFDsPerBatch, metaLen: 8},
		{name: "one more than a batch", typ: unix.SOCK_STREAM, n: MaxFDsPerBatch + 1, metaLen: 8},
		{name: "600 with state", typ: unix.SOCK_STREAM, n: 600, metaLen: 4096},
		{name: "one with MetaHardMax", typ: unix.SOCK_STREAM, n: 3, metaLen: MetaHardMax, lim: Limits{MaxMeta: MetaHardMax}},
		{name: "bodies past MaxBody", typ: unix.SOCK_STREAM, n: 40, metaLen: 200 << 10, lim: Limits{MaxMeta: 256 << 10}},
		{name: "SO_PASSCRED", typ: unix.SOCK_STREAM, n: 300, metaLen: 8, sockopt: unix.SO_PASSCRED},
		{name: "SO_PASSPIDFD", typ: unix.SOCK_STREAM, n: 300, metaLen: 8, sockopt: unix.SO_PASSPIDFD},
		{name: "seqpacket empty", typ: unix.SOCK_SEQPACKET, n: 0},
		{name: "seqpacket 600", typ: unix.SOCK_SEQPACKET, n: 600, metaLen: 64},
		{name: "seqpacket records", typ: unix.SOCK_SEQPACKET, n: 5, metaLen: 300 << 10, lim: Limits{MaxMeta: 300 << 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			a, b := pair(t, tt.typ)
			if tt.sockopt != 0 {
				raw, _ := b.SyscallConn()
				var err error
				raw.Control(func(fd uintptr) {
					err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, tt.sockopt, 1)
				})
				if err != nil {
					t.Skipf("setsockopt %d: %v: this kernel lacks the option", tt.sockopt, err)
				}
			}
			sent, err := describe(sockets(t, tt.n), max(tt.metaLen, 8))
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxTimeout(t, 20*time.Second)
			res := goRecv(ctx, b, tt.lim)
			if err := Send(ctx, a, sent); err != nil {
				t.Fatalf("Send: %v", err)
			}
			r := <-res
			if r.err != nil {
				t.Fatalf("Recv: %v", r.err)
			}
			defer closeFDs(r.fds)
			if err := verify(r.fds, sent); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestConnectionReuse checks that Send and Recv read exactly their own
// bytes: what either side writes right after a transfer reaches the
// other side's next reader.
func TestConnectionReuse(t *testing.T) {
	batontest.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	ctx := ctxTimeout(t, 10*time.Second)
	for round := range 3 {
		sent, err := describe(sockets(t, 300), 8)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			fds, err := Recv(ctx, b, Limits{})
			if err == nil {
				err = verify(fds, sent)
			}
			if err == nil {
				_, err = b.Write([]byte("bye\n")) // right behind the last ack
			}
			// Close before saying done: the test's descriptor count
			// must not race this goroutine.
			closeFDs(fds)
			done <- err
		}()
		if err := Send(ctx, a, sent); err != nil {
			t.Fatalf("round %d: Send: %v", round, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		line := make([]byte, 4)
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(a, line); err != nil || string(line) != "bye\n" {
			t.Fatalf("round %d: after Send read %q, %v; want \"bye\\n\"", round, line, err)
		}
	}
}

// TestTenThousand moves 10,000 descriptors in one call from a child
// process, which checks that Send leaves its descriptor count unchanged.
// The two sides are two processes because together they would hold more
// descriptors than the hard RLIMIT_NOFILE of a test machine allows.
func TestTenThousand(t *testing.T) {
	const n = 10_000
	batontest.CheckLeaks(t)
	c, cmd := startHelper(t, "send", "FDPASS_TEST_N="+strconv.Itoa(n))
	ctx := ctxTimeout(t, 30*time.Second)
	got, err := Recv(ctx, c, Limits{MaxFDs: n})
	if err != nil {
		t.Fatalf("Recv: %v (child: %s)", err, waitHelper(cmd))
	}
	defer closeFDs(got)
	if out := waitHelper(cmd); out != "" {
		t.Fatalf("child: %s", out)
	}
	if len(got) != n {
		t.Fatalf("received %d descriptors, want %d", len(got), n)
	}
	// The child named each descriptor by its index and put its inode in
	// the meta: the order and each identity are checked against that.
	for i, f := range got {
		ino, err := inode(f.Fd)
		if err != nil {
			t.Fatal(err)
		}
		if f.Name != strconv.Itoa(i) || len(f.Meta) != 8 || binary.BigEndian.Uint64(f.Meta) != ino {
			t.Fatalf("descriptor %d: name %q, meta %x, inode %d", i, f.Name, f.Meta, ino)
		}
	}
}

// TestTruncatedControlBuffer gives Recv a control buffer with room for 10
// descriptors and sends 100: the kernel installs 10 and drops the rest.
func TestTruncatedControlBuffer(t *testing.T) {
	batontest.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	sent, err := describe(sockets(t, 100), 8)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 10*time.Second)
	res := make(chan error, 1)
	go func() {
		fds, err := recv(ctx, b, Limits{}, unix.CmsgSpace(10*4))
		closeFDs(fds)
		res <- err
	}()
	serr := Send(ctx, a, sent)
	rerr := <-res
	if !errors.Is(rerr, ErrTruncated) || !strings.Contains(rerr.Error(), "10 descriptors arrived") {
		t.Errorf("Recv: %v, want ErrTruncated with 10 descriptors arrived", rerr)
	}
	if !errors.Is(serr, ErrRefused) || !errors.Is(serr, ErrTruncated) {
		t.Errorf("Send: %v, want ErrRefused and ErrTruncated", serr)
	}
}

// TestTruncatedRlimit sends 300 descriptors to a child whose
// RLIMIT_NOFILE leaves room for fewer.
func TestTruncatedRlimit(t *testing.T) {
	batontest.CheckLeaks(t)
	c, cmd := startHelper(t, "recvlow")
	sent, err := describe(sockets(t, 300), 8)
	if err != nil {
		t.Fatal(err)
	}
	err = Send(ctxTimeout(t, 20*time.Second), c, sent)
	if out := waitHelper(cmd); out != "" {
		t.Fatalf("child: %s", out)
	}
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "RLIMIT_NOFILE") {
		t.Errorf("Send: %v, want a refusal for ErrTruncated naming RLIMIT_NOFILE", err)
	}
}

// TestPeerRefused runs a child as uid 65534. It may send to root, but
// root must not send to it.
func TestPeerRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a child under another uid")
	}
	batontest.CheckLeaks(t)
	name := fmt.Sprintf("@fdpass-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// uid 65534 cannot run the test binary from go test's private
	// directory: run a copy.
	dir, err := os.MkdirTemp("", "fdpass-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "fdpass.test")
	if err := copyFile(bin, os.Args[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 20*time.Second)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), helperEnv+"=nobody", "FDPASS_TEST_ADDR="+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptUnix()
	if err != nil {
		cmd.Wait()
		t.Fatalf("accept: %v (child: %s)", err, out.String())
	}
	cred, cerr := CheckPeer(c)
	if !errors.Is(cerr, ErrPeer) || cred.UID != 65534 || cred.PID != cmd.Process.Pid {
		t.Errorf("CheckPeer = %+v, %v; want uid 65534, pid %d and ErrPeer", cred, cerr, cmd.Process.Pid)
	}
	// Receiving from the child is the caller's call; Recv does not check.
	got, err := Recv(ctx, c, Limits{})
	if err != nil {
		t.Errorf("Recv from uid 65534: %v", err)
	}
	closeFDs(got)
	if len(got) != 1 || got[0].Name != "from-nobody" {
		t.Errorf("received %+v, want one descriptor named from-nobody", got)
	}
	// Sending to it is refused before anything is sent.
	p := sockets(t, 1)
	serr := Send(ctx, c, []FD{{Fd: p[0], Name: "secret"}})
	if !errors.Is(serr, ErrPeer) {
		t.Errorf("Send to uid 65534: %v, want ErrPeer", serr)
	}
	// SendAllow lets the caller admit it.
	aerr := SendAllow(ctx, c, []FD{{Fd: p[0], Name: "allowed"}}, func(cr Cred) error {
		if cr.PID != cmd.Process.Pid {
			return fmt.Errorf("pid %d is not our child", cr.PID)
		}
		return nil
	})
	if aerr != nil {
		t.Errorf("SendAllow: %v", aerr)
	}
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v: %s", err, out.String())
	}
	if want := "received allowed\n"; out.String() != want {
		t.Errorf("child said %q, want %q", out.String(), want)
	}
}

func copyFile(dst, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// startHelper starts the test binary as a child running helper name, with
// its end of a stream socketpair as fd 3, and returns this end.
func startHelper(t *testing.T, name string, env ...string) (*net.UnixConn, *exec.Cmd) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(fds[0], true)
	c := fileConn(t, fds[0])
	t.Cleanup(func() { c.Close() })
	child := os.NewFile(uintptr(fds[1]), "child-socket") // a blocking socket of its own
	defer child.Close()                                  // the child has its copy
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), helperEnv+"="+name), env...)
	cmd.ExtraFiles = []*os.File{child}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); waitHelper(cmd) })
	return c, cmd
}

// waitHelper waits for the child and returns what went wrong in it, or "".
func waitHelper(cmd *exec.Cmd) string {
	if cmd.ProcessState == nil {
		timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
		defer timer.Stop()
		if err := cmd.Wait(); err != nil {
			return fmt.Sprintf("%v: %s", err, cmd.Stdout)
		}
	}
	return ""
}

// runHelper is the child's side of the tests above.
func runHelper(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if name == "nobody" {
		return helperNobody(ctx)
	}
	f := os.NewFile(3, "socket")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	c := fc.(*net.UnixConn)
	defer c.Close()
	before, err := batontest.CountFDs()
	if err != nil {
		return err
	}
	switch name {
	case "send":
		n, _ := strconv.Atoi(os.Getenv("FDPASS_TEST_N"))
		fds, err := makeSockets(n)
		if err != nil {
			return err
		}
		defer CloseAll(fds)
		sent, err := describe(fds, 8)
		if err != nil {
			return err
		}
		if err := Send(ctx, c, sent); err != nil {
			return err
		}
		if after, _ := batontest.CountFDs(); after != before+n {
			return fmt.Errorf("%d descriptors open after Send, want %d", after, before+n)
		}
		return nil
	case "recvlow":
		// Leave room for 40 more descriptors: fewer than one batch.
		lim := unix.Rlimit{Cur: 64, Max: 64}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
		before, _ = batontest.CountFDs()
		got, err := Recv(ctx, c, Limits{})
		closeFDs(got)
		if !errors.Is(err, ErrTruncated) {
			return fmt.Errorf("Recv under RLIMIT_NOFILE 64: %v, want ErrTruncated", err)
		}
		if after, _ := batontest.CountFDs(); after != before {
			return fmt.Errorf("%d descriptors open after the failed Recv, %d before", after, before)
		}
		return nil
	}
	return fmt.Errorf("unknown helper %q", name)
}

// helperNobody runs as uid 65534: it sends one descriptor to the test
// (root, so trusted), then receives what the test sends it.
func helperNobody(ctx context.Context) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: os.Getenv("FDPASS_TEST_ADDR"), Net: "unix"})
	if err != nil {
		return err
	}
	defer c.Close()
	fds, err := makeSockets(1)
	if err != nil {
		return err
	}
	defer CloseAll(fds)
	if err := Send(ctx, c, []FD{{Fd: fds[0], Name: "from-nobody"}}); err != nil {
		return fmt.Errorf("sending to root: %w", err)
	}
	for {
		got, err := Recv(ctx, c, Limits{})
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, f := range got {
			fmt.Printf("received %s\n", f.Name)
		}
		closeFDs(got)
	}
}

// TestDeadlines checks that a peer that stops cannot hang Send or Recv:
// a context's deadline or cancellation ends them, and so does the conn's
// own deadline. Afterwards the conn carries no leftover deadline. Every
// call runs under within, so one that outlives its context fails the
// test instead of hanging it.
func TestDeadlines(t *testing.T) {
	batontest.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_STREAM)
	var err error

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	within(t, callBound, "Recv with a cancelled context", func() { _, err = Recv(ctx, b, Limits{}) })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Recv with a cancelled context: %v, want context.Canceled", err)
	}

	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	within(t, callBound, "Recv past the conn's deadline", func() { _, err = Recv(context.Background(), b, Limits{}) })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv past the conn's deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	b.SetReadDeadline(time.Time{})

	// The receiver never reads: Send blocks writing a big frame, then
	// gives up at the context's deadline.
	big, err := describe(sockets(t, 4), MetaHardMax)
	if err != nil {
		t.Fatal(err)
	}
	sctx := ctxTimeout(t, 100*time.Millisecond)
	within(t, callBound, "Send to a receiver that does not read", func() { err = Send(sctx, a, big) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Send to a receiver that does not read: %v, want context.DeadlineExceeded", err)
	}
	// That Send left half a frame behind: start over on a fresh pair,
	// and check that a timed-out Recv leaves the conn usable.
	a, b = pair(t, unix.SOCK_STREAM)
	rctx := ctxTimeout(t, 30*time.Millisecond)
	within(t, callBound, "Recv from a silent peer", func() { _, err = Recv(rctx, b, Limits{}) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv from a silent peer: %v, want context.DeadlineExceeded", err)
	}
	sent, err := describe(sockets(t, 2), 8)
	if err != nil {
		t.Fatal(err)
	}
	// A deadline left behind would have passed by now. This context
	// has none (it would replace what it should find), only a bound,
	// and within has a longer one.
	bounded, stop := context.WithCancel(context.Background())
	defer stop()
	time.AfterFunc(callBound/2, stop)
	res := goRecv(bounded, b, Limits{})
	within(t, callBound, "Send after a timed-out Recv", func() { err = Send(bounded, a, sent) })
	if err != nil {
		t.Fatalf("Send after a timed-out Recv: %v", err)
	}
	r := <-res
	closeFDs(r.fds)
	if r.err != nil {
		t.Fatalf("Recv after a timed-out Recv: %v", r.err)
	}
}

func TestUnsupportedUse(t *testing.T) {
	batontest.CheckLeaks(t)
	a, b := pair(t, unix.SOCK_DGRAM)
	ctx := ctxTimeout(t, 5*time.Second)
	if err := Send(ctx, a, nil); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Send on SOCK_DGRAM: %v, want ErrNotSupported", err)
	}
	if _, err := Recv(ctx, b, Limits{}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Recv on SOCK_DGRAM: %v, want ErrNotSupported", err)
	}
	if err := Send(ctx, nil, nil); err == nil {
		t.Error("Send on a nil conn: no error")
	}
	s, _ := pair(t, unix.SOCK_STREAM)
	if _, err := Recv(ctx, s, Limits{MaxMeta: MetaHardMax + 1}); err == nil || !strings.Contains(err.Error(), "MaxMeta") {
		t.Errorf("Recv with MaxMeta over the hard cap: %v, want an error naming MaxMeta", err)
	}
}

// TestReceiverLimits checks that a transfer over the receiver's limits is
// refused on both sides with the receiver's reason.
func TestReceiverLimits(t *testing.T) {
	tests := []struct {
		name    string
		n, meta int
		lim     Limits
		wantMsg string
	}{
		{name: "MaxFDs", n: 20, meta: 8, lim: Limits{MaxFDs: 10}, wantMsg: "Limits.MaxFDs 10"},
		{name: "MaxMeta", n: 3, meta: 5000, lim: Limits{MaxMeta: 4096}, wantMsg: "Limits.MaxMeta 4096"},
		{name: "MaxBytes", n: 600, meta: 100, lim: Limits{MaxBytes: 50_000}, wantMsg: "Limits.MaxBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			a, b := pair(t, unix.SOCK_STREAM)
			sent, err := describe(sockets(t, tt.n), tt.meta)
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxTimeout(t, 5*time.Second)
			res := goRecv(ctx, b, tt.lim)
			serr := Send(ctx, a, sent)
			r := <-res
			closeFDs(r.fds)
			if !errors.Is(r.err, ErrTooLarge) || !strings.Contains(r.err.Error(), tt.wantMsg) {
				t.Errorf("Recv: %v, want ErrTooLarge naming %s", r.err, tt.wantMsg)
			}
			if !errors.Is(serr, ErrRefused) || !errors.Is(serr, ErrTooLarge) || !strings.Contains(serr.Error(), tt.wantMsg) {
				t.Errorf("Send: %v, want the refusal naming %s", serr, tt.wantMsg)
			}
		})
	}
}

// TestPython speaks the protocol with testdata/peer.py, the Python peer
// docs/fdpass.md describes: Go sends, Python receives and sends the same
// descriptors back.
func TestPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the Python peer cannot be checked")
	}
	batontest.CheckLeaks(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(fds[0], true)
	c := fileConn(t, fds[0])
	child := os.NewFile(uintptr(fds[1]), "child-socket")
	ctx := ctxTimeout(t, 20*time.Second)
	cmd := exec.CommandContext(ctx, py, "testdata/peer.py")
	cmd.ExtraFiles = []*os.File{child}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Start()
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Close() // a Python peer still reading sees the end
		cmd.Wait()
	}()

	sent, err := describe(sockets(t, 300), 8)
	if err != nil {
		t.Fatal(err)
	}
	sent[7].Name, sent[7].Kind = "", "" // empty strings are entries too
	if err := Send(ctx, c, sent); err != nil {
		t.Fatalf("Send to Python: %v (stderr: %s)", err, stderr.String())
	}
	back, err := Recv(ctx, c, Limits{})
	if err != nil {
		t.Fatalf("Recv from Python: %v (stderr: %s)", err, stderr.String())
	}
	defer closeFDs(back)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("peer.py: %v: %s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != len(sent) || len(back) != len(sent) {
		t.Fatalf("Python printed %d descriptors and sent back %d, want %d", len(lines), len(back), len(sent))
	}
	for i := range sent {
		ino := binary.BigEndian.Uint64(sent[i].Meta)
		want := fmt.Sprintf(`{"name": %q, "kind": %q, "meta": "%x", "ino": %d}`, sent[i].Name, sent[i].Kind, sent[i].Meta, ino)
		if lines[i] != want {
			t.Fatalf("Python saw descriptor %d as %s, want %s", i, lines[i], want)
		}
		got, err := inode(back[i].Fd)
		if err != nil {
			t.Fatal(err)
		}
		if back[i].Name != sent[i].Name || string(back[i].Meta) != "py:"+string(sent[i].Meta) || got != ino {
			t.Fatalf("descriptor %d came back as %q, meta %q, inode %d", i, back[i].Name, back[i].Meta, got)
		}
	}
}

// TestCloseAll closes runs and strays among open descriptors and leaves
// every other open.
func TestCloseAll(t *testing.T) {
	var fds []int
	for range 8 {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	slices.Sort(fds)
	// Two runs, a stray, in no order, leaving gaps between them.
	shut := []int{fds[9], fds[2], fds[3], fds[4], fds[12], fds[11], fds[15]}
	CloseAll(shut)
	for _, fd := range fds {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if want := slices.Contains(shut, fd); want != (err != nil) {
			t.Errorf("fd %d: closed %v, want %v", fd, err != nil, want)
		}
	}
	fds = slices.DeleteFunc(fds, func(fd int) bool { return slices.Contains(shut, fd) })
}

// recvmsgRetry is recvmsg(2) on a blocking descriptor, tried again when a
// signal interrupts it: the Go runtime's own (SIGURG, to preempt a
// goroutine) end a blocking recvmsg with EINTR.
func recvmsgRetry(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, from unix.Sockaddr, err error) {
	for {
		n, oobn, recvflags, from, err = unix.Recvmsg(fd, p, oob, flags)
		if err != unix.EINTR {
			return n, oobn, recvflags, from, err
		}
	}
}
