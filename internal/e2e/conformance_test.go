package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/notify"
)

// readReports waits for n worker reports in dir and decodes them.
func readReports[T any](t *testing.T, dir string, n int) []T {
	t.Helper()
	var files []string
	batontest.WaitFor(t, 30*time.Second, func() error {
		files, _ = filepath.Glob(filepath.Join(dir, "*.json"))
		if len(files) < n {
			return fmt.Errorf("%d of %d worker reports", len(files), n)
		}
		return nil
	})
	var out []T
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, v)
	}
	return out
}

func TestWorkerEnvironmentAndDescriptors(t *testing.T) {
	requireE2E(t)
	reports := t.TempDir()
	// baton itself is under a fake service manager: it must notify it,
	// and must not hand its NOTIFY_SOCKET to the workers.
	manager, err := notify.Listen("@baton-e2e-manager-" + strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer manager.Close()
	var mu sync.Mutex
	var told []string
	go manager.Serve(func(m notify.Message) {
		mu.Lock()
		defer mu.Unlock()
		keys := make([]string, 0, len(m.Fields))
		for k, v := range m.Fields {
			if k != "MONOTONIC_USEC" {
				keys = append(keys, k+"="+v)
			}
		}
		sort.Strings(keys)
		told = append(told, strings.Join(keys, ","))
	})

	env := []string{workerEnv + "=env", reportDir + "=" + reports, "NOTIFY_SOCKET=" + manager.Addr(), "LISTEN_FDS=7", "BATON_SLOT=9"}
	b := startBaton(t, env, "-l", "web=tcp://127.0.0.1:0", "-l", "dns=udp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", testBin)
	st := b.waitReady(2)
	for _, r := range readReports[envReport](t, reports, 2) {
		want := map[string]string{
			"LISTEN_PID":       strconv.Itoa(r.PID),
			"LISTEN_FDS":       "2",
			"LISTEN_FDNAMES":   "web:dns",
			"BATON_GENERATION": "1",
		}
		for k, v := range want {
			if r.Env[k] != v {
				t.Errorf("worker %d: %s=%q, want %q", r.PID, k, r.Env[k], v)
			}
		}
		if s := r.Env["BATON_SLOT"]; s != "0" && s != "1" {
			t.Errorf("worker %d: BATON_SLOT=%q", r.PID, s)
		}
		if r.Env["NOTIFY_SOCKET"] == manager.Addr() || !strings.HasPrefix(r.Env["NOTIFY_SOCKET"], "@baton/") {
			t.Errorf("worker %d: NOTIFY_SOCKET=%q; want baton's own, never its service manager's", r.PID, r.Env["NOTIFY_SOCKET"])
		}
		if !strings.HasPrefix(r.Env["BATON_SOCKET"], "@baton/") {
			t.Errorf("worker %d: BATON_SOCKET=%q", r.PID, r.Env["BATON_SOCKET"])
		}
		var fds []string
		for fd := range r.Fds {
			fds = append(fds, fd)
		}
		sort.Strings(fds)
		if diff := cmp.Diff([]string{"0", "1", "2", "3", "4"}, fds); diff != "" {
			t.Errorf("worker %d open descriptors (-want +got):\n%s\nlinks: %v", r.PID, diff, r.Fds)
		}
		if r.Fds["0"] != "/dev/null" || !strings.HasPrefix(r.Fds["3"], "socket:[") || !strings.HasPrefix(r.Fds["4"], "socket:[") {
			t.Errorf("worker %d descriptors: %v; want /dev/null, output, two sockets", r.PID, r.Fds)
		}
		if got := fmt.Sprintf("socket:[%d]", st.Listeners[0].Inode); r.Fds["3"] != got {
			t.Errorf("worker %d fd 3 is %s, want baton's listener %s", r.PID, r.Fds["3"], got)
		}
		if r.Fd3Flags&unix.O_NONBLOCK == 0 {
			t.Errorf("worker %d: the shared listener arrived in blocking mode (flags %#x): starting a worker must not flip O_NONBLOCK", r.PID, r.Fd3Flags)
		}
	}

	if out, code := b.cli("reload"); code != 0 {
		t.Fatal(out)
	}
	b.stop(20 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	want := []string{"READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}
	if diff := cmp.Diff(want, told); diff != "" {
		t.Errorf("notifications baton sent its service manager (-want +got):\n%s", diff)
	}
}

func TestGoSystemdWorkerSeesEveryNamedSocket(t *testing.T) {
	requireE2E(t)
	reports := t.TempDir()
	env := []string{workerEnv + "=gosystemd", reportDir + "=" + reports}
	abstract := fmt.Sprintf("@baton-e2e-admin-%d", os.Getpid())
	b := startBaton(t, env, "-l", "web=tcp://127.0.0.1:0", "-l", "admin=unix://"+abstract, "-l", "dns=udp6://[::1]:0",
		"-n", "1", "--ready", "notify", "--", testBin)
	b.waitReady(1)
	r := readReports[activationReport](t, reports, 1)[0]
	want := map[string][]string{"web": {"*net.TCPListener"}, "admin": {"*net.UnixListener"}, "dns": {"*net.UDPConn"}}
	if diff := cmp.Diff(want, r.Names); diff != "" {
		t.Errorf("sockets go-systemd's activation.Files found (-want +got):\n%s", diff)
	}
}

func TestPythonWorkerServesThroughReloads(t *testing.T) {
	requireE2E(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed; the Python example cannot be tested")
	}
	script, _ := filepath.Abs("../../examples/python/server.py")
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", python, script)
	b.waitReady(2)
	wait := startLoad(b.addr("http"), 5*time.Second)
	for i := 0; i < 5; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(400 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())
}

func TestUDPAnsweredAcrossReloads(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, []string{workerEnv + "=udp-echo"}, "-l", "echo=udp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", testBin)
	b.waitReady(2)
	raddr, err := net.ResolveUDPAddr("udp", b.addr("echo"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 4; i++ {
			// Pacing: the reloads spread over the load.
			time.Sleep(300 * time.Millisecond)
			if out, code := b.cli("reload"); code != 0 {
				t.Errorf("reload %d: %s", i+1, out)
			}
		}
	}()
	answered, pids := 0, map[string]bool{}
	buf := make([]byte, 2048)
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			payload := fmt.Sprintf("datagram %d", i)
			c.Write([]byte(payload))
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("datagram %d not answered: %v (answered %d)", i, err, answered)
			}
			pid, got, _ := strings.Cut(string(buf[:n]), ":")
			if got != payload {
				t.Fatalf("datagram %d answered with %q", i, buf[:n])
			}
			answered++
			pids[pid] = true
			time.Sleep(2 * time.Millisecond) // pacing: a steady stream of datagrams across the reloads
			continue
		}
		break
	}
	if len(pids) < 4 {
		t.Errorf("%d datagrams answered by only %d processes; the reloads did not swap workers", answered, len(pids))
	}
}

func TestFastCGIOnFd0(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, []string{workerEnv + "=fcgi"}, "-l", "fcgi=tcp://127.0.0.1:0", "--fd0", "fcgi", "-n", "2", "--ready", "delay:300ms", "--", testBin)
	b.waitReady(2)
	addr := b.addr("fcgi")
	body, err := fcgiGet(addr, "/hello")
	if err != nil || !strings.Contains(body, "fastcgi ok /hello") {
		t.Fatalf("FastCGI request: %q, %v", body, err)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Fatal(out)
	}
	if body, err := fcgiGet(addr, "/again"); err != nil || !strings.Contains(body, "fastcgi ok /again") {
		t.Errorf("FastCGI request after reload: %q, %v", body, err)
	}

	// An independent client: cgi-fcgi from the FastCGI developer's kit.
	cgiFcgi, err := exec.LookPath("cgi-fcgi")
	if err != nil {
		t.Skip("cgi-fcgi (Debian libfcgi-bin) is not installed; checked with the built-in client only")
	}
	cmd := exec.Command(cgiFcgi, "-bind", "-connect", addr)
	cmd.Env = []string{"REQUEST_METHOD=GET", "SERVER_PROTOCOL=HTTP/1.1", "REQUEST_URI=/kit", "SCRIPT_NAME=/kit", "HTTP_HOST=localhost", "SERVER_NAME=localhost", "SERVER_PORT=80"}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fastcgi ok /kit") {
		t.Errorf("cgi-fcgi: %v\n%s", err, out)
	}
}

// fcgiGet sends one FastCGI responder request and returns the STDOUT
// stream. It is a minimal client of the FastCGI 1.0 specification.
func fcgiGet(addr, uri string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	const (
		beginRequest = 1
		endRequest   = 3
		params       = 4
		stdin        = 5
		stdout       = 6
	)
	record := func(typ byte, content []byte) []byte {
		h := []byte{1, typ, 0, 1, byte(len(content) >> 8), byte(len(content)), 0, 0}
		return append(h, content...)
	}
	var p bytes.Buffer
	for _, kv := range [][2]string{{"REQUEST_METHOD", "GET"}, {"SERVER_PROTOCOL", "HTTP/1.1"}, {"REQUEST_URI", uri}, {"SCRIPT_NAME", uri}, {"HTTP_HOST", "localhost"}} {
		p.WriteByte(byte(len(kv[0])))
		p.WriteByte(byte(len(kv[1])))
		p.WriteString(kv[0] + kv[1])
	}
	var req []byte
	req = append(req, record(beginRequest, []byte{0, 1, 0, 0, 0, 0, 0, 0})...) // role responder, no keep-conn
	req = append(req, record(params, p.Bytes())...)
	req = append(req, record(params, nil)...)
	req = append(req, record(stdin, nil)...)
	if _, err := c.Write(req); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	var out bytes.Buffer
	for {
		var h [8]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return out.String(), fmt.Errorf("reading a record header: %w", err)
		}
		n, pad := binary.BigEndian.Uint16(h[4:6]), h[6]
		content := make([]byte, int(n)+int(pad))
		if _, err := io.ReadFull(r, content); err != nil {
			return out.String(), err
		}
		switch h[1] {
		case stdout:
			out.Write(content[:n])
		case endRequest:
			return out.String(), nil
		}
	}
}

func TestBatonAsPID1ReapsOrphans(t *testing.T) {
	requireE2E(t)
	requireRoot(t)
	ctl := filepath.Join(shortDir(t), "ctl.sock")
	cmd := exec.Command(batonBin, "run", "--control", ctl, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", testBin)
	cmd.Env = append(os.Environ(), workerEnv+"=orphan")
	log := &logBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot make a PID namespace here: %v", err)
	}
	b := &instance{t: t, cmd: cmd, ctl: ctl, log: log, done: make(chan struct{})}
	go func() { b.err = cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		b.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("baton output:\n%s", log)
		}
	})
	st := b.waitReady(2)
	if st.PID != 1 {
		t.Fatalf("baton sees itself as pid %d, want 1 in its namespace", st.PID)
	}
	batontest.WaitFor(t, 20*time.Second, func() error {
		if n := b.status().Process.OrphansReap; n < 2 {
			return fmt.Errorf("orphans reaped: %d, want 2 (each worker leaves one)", n)
		}
		return nil
	})
	if z := zombiesOf(cmd.Process.Pid); len(z) > 0 {
		t.Errorf("zombie children of baton: %v", z)
	}
}
