package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
)

// eventually retries cond with backoff until it returns nil, for at most
// within, and fails the test with its last error.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	delay := 5 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// socketInode is the inode of the socket at /proc/PID/fd/FD.
func socketInode(t *testing.T, pid, fd int) uint64 {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	if _, err := fmt.Sscanf(link, "socket:[%d]", &ino); err != nil {
		t.Fatalf("/proc/%d/fd/%d is %s, not a socket", pid, fd, link)
	}
	return ino
}

// askHTTP sends one request on conn and returns the answer's first line.
func askHTTP(conn net.Conn) (string, error) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(conn).ReadString('\n')
}

// readAnswer reads the status line of the answer to a request sent
// earlier.
func readAnswer(conn net.Conn) (string, error) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	return bufio.NewReader(conn).ReadString('\n')
}

// sendRequest dials addr on network and sends a request it reads the
// answer to later (readAnswer).
func sendRequest(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return conn
}

// startActivated runs baton under systemd-socket-activate, which binds
// the sockets of saArgs and execs baton (same pid) on the first
// connection.
func startActivated(t *testing.T, saArgs []string, args ...string) *instance {
	t.Helper()
	sa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian's systemd package has it); socket activation is not tested against it")
	}
	dir := shortDir(t)
	b := &instance{t: t, ctl: filepath.Join(dir, "ctl.sock"), log: &logBuffer{}, done: make(chan struct{})}
	// systemd-socket-activate passes on only the variables named with
	// -E (and its own).
	argv := append(append(append([]string{"-E", workerEnv + "=http-all"}, saArgs...), batonBin, "run", "--control", b.ctl), args...)
	b.cmd = exec.Command(sa, argv...)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("systemd-socket-activate and baton output:\n%s", b.log)
		}
	})
	return b
}

// TestSocketActivation: baton started by the real systemd-socket-activate
// on a TCP and a unix socket serves on those very sockets (the inodes it
// was handed), binds only the listener it was not handed, and answers the
// connection that woke it.
func TestSocketActivation(t *testing.T) {
	requireE2E(t)
	port := freePort(t)
	path := filepath.Join(shortDir(t), "app.sock")
	b := startActivated(t,
		[]string{"-l", fmt.Sprintf("127.0.0.1:%d", port), "-l", path, "--fdname=http:app"},
		"-l", fmt.Sprintf("http=tcp://127.0.0.1:%d", port), "-l", "app=unix://"+path, "-l", "own=tcp://127.0.0.1:0",
		"-n", "2", "--ready", "notify", "--", testBin)
	var pid int
	eventually(t, 10*time.Second, "systemd-socket-activate listening", func() error {
		if b.cmd.Process == nil {
			return fmt.Errorf("not started")
		}
		pid = b.cmd.Process.Pid
		if _, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", pid)); err != nil {
			return err
		}
		_, err := os.Lstat(path)
		return err
	})
	tcpIno, unixIno := socketInode(t, pid, 3), socketInode(t, pid, 4)

	// The first connection wakes systemd-socket-activate, which execs
	// baton: it waits in the socket's queue until a worker answers it.
	first := sendRequest(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	st := b.waitReady(2)
	if line, err := readAnswer(first); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Errorf("the connection that activated baton: %q, %v", line, err)
	}
	if st.PID != pid {
		t.Errorf("baton's pid %d, systemd-socket-activate's %d: it should exec baton in place", st.PID, pid)
	}
	inodes := map[string]uint64{}
	for _, l := range st.Listeners {
		inodes[l.Name] = l.Inode
	}
	if inodes["http"] != tcpIno || inodes["app"] != unixIno {
		t.Errorf("baton serves http on inode %d and app on %d; it was handed %d and %d", inodes["http"], inodes["app"], tcpIno, unixIno)
	}
	if inodes["own"] == 0 || inodes["own"] == tcpIno || inodes["own"] == unixIno {
		t.Errorf("listener own (not handed): inode %d; want a socket baton bound", inodes["own"])
	}
	for _, dial := range []struct{ network, addr string }{{"tcp", fmt.Sprintf("127.0.0.1:%d", port)}, {"unix", path}, {"tcp", b.addr("own")}} {
		conn, err := net.Dial(dial.network, dial.addr)
		if err != nil {
			t.Fatalf("dial %s: %v", dial.addr, err)
		}
		line, err := askHTTP(conn)
		conn.Close()
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Errorf("%s: %q, %v", dial.addr, line, err)
		}
	}
	if !strings.Contains(b.log.String(), `from="socket unit"`) {
		t.Errorf("baton's log does not say it took the handed sockets:\n%s", b.log)
	}
}

// TestSocketActivationRefusesMismatch: a socket handed under a
// listener's name but bound elsewhere, and one that matches no listener,
// stop baton with a message that names the socket and says how to fix
// it.
func TestSocketActivationRefusesMismatch(t *testing.T) {
	requireE2E(t)
	tests := []struct {
		name   string
		sa     func(p1, p2 int) []string
		listen func(p1, p2 int) string
		want   func(p1, p2 int) []string
	}{
		{
			name:   "another port",
			sa:     func(p1, _ int) []string { return []string{"-l", fmt.Sprintf("127.0.0.1:%d", p1), "--fdname=http"} },
			listen: func(_, p2 int) string { return fmt.Sprintf("http=tcp://127.0.0.1:%d", p2) },
			want: func(p1, p2 int) []string {
				return []string{fmt.Sprintf(`"http" (tcp 127.0.0.1:%d) is named after listener http=tcp://127.0.0.1:%d`, p1, p2),
					fmt.Sprintf("bound to port %d, the listener wants %d", p1, p2), "FileDescriptorName="}
			},
		},
		{
			name:   "no listener",
			sa:     func(p1, _ int) []string { return []string{"-l", fmt.Sprintf("127.0.0.1:%d", p1)} },
			listen: func(_, p2 int) string { return fmt.Sprintf("http=tcp://127.0.0.1:%d", p2) },
			want: func(p1, _ int) []string {
				return []string{fmt.Sprintf("fd 3 unnamed (tcp 127.0.0.1:%d) matches no listener", p1),
					fmt.Sprintf("-l NAME=tcp://127.0.0.1:%d", p1), "remove it from the socket unit"}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p1, p2 := freePort(t), freePort(t)
			b := startActivated(t, tt.sa(p1, p2), "-l", tt.listen(p1, p2), "--", testBin)
			// Wake it: the connection is refused when baton exits.
			eventually(t, 10*time.Second, "systemd-socket-activate listening", func() error {
				c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p1))
				if err == nil {
					c.Close()
				}
				return err
			})
			if code := b.waitExit(30 * time.Second); code != 1 {
				t.Errorf("baton exited %d, want 1", code)
			}
			for _, w := range tt.want(p1, p2) {
				if !strings.Contains(b.log.String(), w) {
					t.Errorf("output does not say %q:\n%s", w, b.log)
				}
			}
		})
	}
}

// fdManager plays systemd's side of the notification protocol for the fd
// store (sd_pid_notify_with_fds(3), FILE_DESCRIPTOR_STORE.md): it reads
// NOTIFY_SOCKET with SO_PASSCRED, takes a datagram only from the main
// pid (NotifyAccess=main), keeps each FDSTORE=1 descriptor under its
// FDNAME (one entry per socket: the same socket again is not stored
// twice), drops every entry of a name on FDSTOREREMOVE=1, and hands what
// it holds to the next baton it starts, as LISTEN_FDS/LISTEN_FDNAMES with
// LISTEN_PID = that baton's pid.
type fdManager struct {
	t    *testing.T
	conn *net.UnixConn
	addr string

	mu      sync.Mutex
	mainPID int
	store   []storedFd
	msgs    []string // "KEY=VALUE" from the main pid
	ignored int      // datagrams from other pids
}

// storedFd is one entry of the store.
type storedFd struct {
	name string
	fd   int
	ino  uint64
}

func newFDManager(t *testing.T) *fdManager {
	t.Helper()
	m := &fdManager{t: t, addr: fmt.Sprintf("@baton-e2e-fdstore-%d-%d", os.Getpid(), time.Now().UnixNano())}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: m.addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	m.conn = conn
	raw, _ := conn.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	done := make(chan struct{})
	go m.serve(done)
	t.Cleanup(func() {
		conn.Close()
		<-done
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, s := range m.store {
			unix.Close(s.fd)
		}
	})
	return m
}

func (m *fdManager) serve(done chan struct{}) {
	defer close(done)
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*768))
	for {
		n, oobn, _, _, err := m.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var cred *unix.Ucred
		var fds []int
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			}
			if c, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
				cred = c
			}
		}
		m.handle(cred, string(buf[:n]), fds)
	}
}

func (m *fdManager) handle(cred *unix.Ucred, text string, fds []int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cred == nil || int(cred.Pid) != m.mainPID {
		m.ignored++
		for _, fd := range fds {
			unix.Close(fd)
		}
		return
	}
	fields := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			fields[k] = v
			m.msgs = append(m.msgs, line)
		}
	}
	if fields["FDSTOREREMOVE"] == "1" {
		kept := m.store[:0]
		for _, s := range m.store {
			if s.name == fields["FDNAME"] {
				unix.Close(s.fd)
				continue
			}
			kept = append(kept, s)
		}
		m.store = kept
	}
	if fields["FDSTORE"] != "1" {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return
	}
next:
	for _, fd := range fds {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		for _, s := range m.store {
			if s.ino == st.Ino { // systemd: "Suppressing duplicate fd"
				unix.Close(fd)
				continue next
			}
		}
		m.store = append(m.store, storedFd{name: fields["FDNAME"], fd: fd, ino: st.Ino})
	}
}

// stored is the store's content: name -> inode.
func (m *fdManager) stored() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]uint64{}
	for _, s := range m.store {
		out[s.name] = s.ino
	}
	return out
}

// said counts the times the main pid sent line.
func (m *fdManager) said(line string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, s := range m.msgs {
		if s == line {
			n++
		}
	}
	return n
}

// start runs `baton run ARGS...` as the unit's main process, with
// NOTIFY_SOCKET and FDSTORE set and the store handed over (LISTEN_FDS).
// The descriptors go to the child with fork and exec directly (as
// systemd does): exec.Cmd's ExtraFiles would switch the shared sockets
// to blocking mode. A shell sets LISTEN_PID to its own pid and execs
// baton, which keeps it.
func (m *fdManager) start(t *testing.T, ctl string, args ...string) *instance {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	b := &instance{t: t, ctl: ctl, log: &logBuffer{}, done: make(chan struct{})}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	files := []uintptr{devnull.Fd(), w.Fd(), w.Fd()}
	var names []string
	for _, s := range m.store {
		files = append(files, uintptr(s.fd))
		names = append(names, s.name)
	}
	env := append(os.Environ(), "NOTIFY_SOCKET="+m.addr, "FDSTORE=16", workerEnv+"=http-all")
	if len(names) > 0 {
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(names)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	argv := append([]string{"/bin/sh", "-c", `export LISTEN_PID=$$; exec "$@"`, "sh", batonBin, "run", "--control", ctl}, args...)
	pid, err := syscall.ForkExec("/bin/sh", argv, &syscall.ProcAttr{Env: env, Files: files})
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	m.mainPID = pid
	proc, _ := os.FindProcess(pid)
	b.cmd = &exec.Cmd{Process: proc}
	go func() {
		io.Copy(b.log, r)
		r.Close()
	}()
	go func() {
		st, err := proc.Wait()
		if err == nil && !st.Success() {
			err = &exec.ExitError{ProcessState: st}
		}
		b.err = err
		close(b.done)
	}()
	t.Cleanup(func() {
		b.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("baton (pid %d) output:\n%s", pid, b.log)
		}
	})
	return b
}

// storeMatches checks that the store holds exactly the sockets of st's
// listeners, under their names.
func storeMatches(m *fdManager, st supervisor.Status) error {
	want := map[string]uint64{}
	for _, l := range st.Listeners {
		for _, s := range l.Sockets {
			name := "baton/" + l.Name
			if s.Slot >= 0 {
				name += "/" + strconv.Itoa(s.Slot)
			}
			want[name] = s.Inode
		}
	}
	got := m.stored()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("the store holds %v, baton's listeners are %v", got, want)
	}
	return nil
}

// TestFDStoreAcrossRestarts: with the fd store, baton SIGKILLed under
// load and started again by its service manager loses nothing: the
// sockets never close, a connection made while no baton ran waits in
// their queues and is answered by the next one, on every kind of
// listener (shared TCP, reuseport slots, unix); not one connection is
// refused. An upgrade leaves the store as it is; a reload that removes a
// listener removes it from the store; a graceful stop leaves the unix
// socket's file for the next baton.
func TestFDStoreAcrossRestarts(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	ctl, conf, path := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "web.toml"), filepath.Join(dir, "app.sock")
	httpPort, rpPort, extraPort := freePort(t), freePort(t), freePort(t)
	writeConf := func(extra bool) {
		listen := fmt.Sprintf(`"http=tcp://127.0.0.1:%d", "rp=tcp://127.0.0.1:%d?balance=reuseport", "app=unix://%s"`, httpPort, rpPort, path)
		if extra {
			listen += fmt.Sprintf(`, "extra=tcp://127.0.0.1:%d"`, extraPort)
		}
		body := fmt.Sprintf("name = \"web\"\ncommand = [%q]\nready = \"notify\"\nworkers = 2\nlisten = [%s]\n", testBin, listen)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConf(true)
	m := newFDManager(t)

	first := m.start(t, ctl, "--config", conf)
	st := first.waitReady(2)
	eventually(t, 10*time.Second, "every listener in the store", func() error { return storeMatches(m, st) })

	// Load on the shared listener, new connections and keep-alive ones;
	// baton is killed in the middle of it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loaded := make(chan *loadgen.Result, 1)
	go func() {
		loaded <- loadgen.Run(ctx, loadgen.Config{Addr: fmt.Sprintf("127.0.0.1:%d", httpPort), KeepAlive: 4, Close: 4, Duration: 6 * time.Second, Timeout: 30 * time.Second})
	}()
	// The kill comes once the workers have served a good part of it.
	eventually(t, 30*time.Second, "the workers serving the load", func() error {
		st, err := first.tryStatusOf(false)
		if err != nil {
			return err
		}
		var n int64
		for _, w := range st.Workers {
			if w.Accepted != nil {
				n += *w.Accepted
			}
		}
		if n < 500 {
			return fmt.Errorf("%d connections accepted", n)
		}
		return nil
	})
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.waitExit(10 * time.Second)
	waitGone(t, workerPIDs(st), 30*time.Second)

	// No baton, no worker: connections still queue, on every listener.
	var waiting []net.Conn
	waiting = append(waiting, sendRequest(t, "tcp", fmt.Sprintf("127.0.0.1:%d", httpPort)))
	for range 4 { // reuseport: some land in each slot's queue
		waiting = append(waiting, sendRequest(t, "tcp", fmt.Sprintf("127.0.0.1:%d", rpPort)))
	}
	waiting = append(waiting, sendRequest(t, "unix", path))

	second := m.start(t, ctl, "--config", conf)
	st2 := second.waitReady(2)
	for i, conn := range waiting {
		if line, err := readAnswer(conn); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Errorf("connection %d, made while no baton ran: %q, %v", i, line, err)
		}
	}
	res := <-loaded
	t.Logf("load across the restart: %s", res)
	if res.ConnectErrors != 0 || res.Failed() != 0 || res.OK == 0 {
		t.Errorf("load across the restart: %s; want every request answered, none refused: %v", res, res.Samples)
	}
	for _, name := range []string{"http", "rp", "app", "extra"} {
		var a, b []uint64
		for _, l := range st.Listeners {
			if l.Name == name {
				for _, s := range l.Sockets {
					a = append(a, s.Inode)
				}
			}
		}
		for _, l := range st2.Listeners {
			if l.Name == name {
				for _, s := range l.Sockets {
					b = append(b, s.Inode)
				}
			}
		}
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("listener %s: sockets %v before the restart, %v after; want the same", name, a, b)
		}
	}
	if !strings.Contains(second.log.String(), `from="fd store"`) {
		t.Errorf("the second baton does not say it took the store's sockets:\n%s", second.log)
	}

	// An upgrade (same pid, same sockets) leaves the store as it is.
	if out, code := second.cli("upgrade"); code != 0 {
		t.Fatalf("baton upgrade: %s", out)
	}
	st2 = second.waitReady(2)
	if err := storeMatches(m, st2); err != nil {
		t.Errorf("after an upgrade: %v", err)
	}

	// A reload without the extra listener takes it out of the store.
	writeConf(false)
	if out, code := second.cli("reload"); code != 0 {
		t.Fatalf("baton reload: %s", out)
	}
	st2 = second.waitReady(2)
	eventually(t, 10*time.Second, "the removed listener out of the store", func() error { return storeMatches(m, st2) })
	if _, ok := m.stored()["baton/extra"]; ok {
		t.Error("the store still holds baton/extra")
	}

	// A graceful stop: the store keeps the sockets (a restart), so the
	// unix socket's file stays for the next baton.
	second.cmd.Process.Signal(syscall.SIGTERM)
	if code := second.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("baton exited %d after SIGTERM", code)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the unix socket's file is gone after a stop with the fd store: %v", err)
	}
	queued := sendRequest(t, "unix", path)
	third := m.start(t, ctl, "--config", conf)
	third.waitReady(2)
	if line, err := readAnswer(queued); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Errorf("unix connection made while baton was stopped: %q, %v", line, err)
	}
	if m.said("READY=1") < 3 {
		t.Errorf("READY=1 %d times from the three batons; want 3", m.said("READY=1"))
	}
}
