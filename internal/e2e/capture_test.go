package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/capture"
	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
)

func requireCapture(t *testing.T) {
	t.Helper()
	if err := capture.Supported(); err != nil {
		t.Skipf("bind capture is not available here: %v", err)
	}
}

// closeLoad runs a load of new connections per request only.
func closeLoad(addr string, d time.Duration) func() *loadgen.Result {
	ch := make(chan *loadgen.Result, 1)
	go func() { ch <- loadgen.Run(context.Background(), loadgen.Config{Addr: addr, Close: 8, Duration: d}) }()
	return func() *loadgen.Result { return <-ch }
}

func TestCapturePythonHTTPServer(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	port := strconv.Itoa(freePort(t))
	// python3 -m http.server dies on SIGTERM: baton stops it only when it
	// holds no connection (--stop-when-idle).
	b := startBaton(t, nil, "--capture-bind", "--ready", "bind", "--stop-when-idle", "5s", "-l", "http=tcp://127.0.0.1:"+port, "-n", "2",
		"--", python, "-m", "http.server", "--bind", "127.0.0.1", port)
	st := b.waitReady(2)
	for _, w := range st.Workers {
		if len(w.Captures) != 1 || w.Captures[0].Listener != "http" {
			t.Errorf("worker %d captures: %+v; want its bind of the http listener", w.PID, w.Captures)
		}
	}
	wait := closeLoad("127.0.0.1:"+port, 12*time.Second)
	for i := 0; i < 10; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(300 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())
	if strings.Contains(b.log.String(), "Address already in use") {
		t.Errorf("a generation failed to bind the port:\n%s", b.log)
	}
}

func TestCaptureStaticGoProgram(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	port := strconv.Itoa(freePort(t))
	b := startBaton(t, nil, "--capture-bind", "--ready", "bind", "-l", "http=tcp://127.0.0.1:"+port, "-n", "2",
		"--", selfbindBin, "-addr", "127.0.0.1:"+port)
	b.waitReady(2)
	wait := startLoad("127.0.0.1:"+port, 8*time.Second)
	for i := 0; i < 10; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(400 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())
}

// TestCaptureLeavesOtherBindsAlone: a bind of a port baton does not hold,
// and of port 0, go ahead exactly as without baton.
func TestCaptureLeavesOtherBindsAlone(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	port, admin := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	b := startBaton(t, nil, "--capture-bind", "--ready", "bind", "-l", "http=tcp://127.0.0.1:"+port, "-n", "1",
		"--", selfbindBin, "-addr", "127.0.0.1:"+port, "-admin", "127.0.0.1:"+admin)
	st := b.waitReady(1)
	w := st.Workers[0]
	if len(w.Captures) != 1 || w.Captures[0].Addr != "127.0.0.1:"+port {
		t.Errorf("captures %+v; want only the http listener's address", w.Captures)
	}
	resp, err := http.Get("http://127.0.0.1:" + admin + "/")
	if err != nil {
		t.Fatalf("the program's own second port: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("admin of pid %d", w.PID); !strings.Contains(string(body), want) {
		t.Errorf("second port answered %q, want %q", body, want)
	}
	// The program owns that socket itself; baton holds nothing there.
	for ino := range socketsHeld(b.cmd.Process.Pid) {
		for pino := range socketsHeld(w.PID) {
			if ino == pino && !heldByBaton(st, ino) {
				t.Errorf("baton shares socket %d with the program although it is no listener of baton", ino)
			}
		}
	}
}

func heldByBaton(st supervisor.Status, ino uint64) bool {
	for _, l := range st.Listeners {
		for _, s := range l.Sockets {
			if s.Inode == ino {
				return true
			}
		}
	}
	return false
}

// nginxConf writes a minimal nginx configuration that binds port itself.
func nginxConf(t *testing.T, dir, port string) string {
	t.Helper()
	conf := filepath.Join(dir, "nginx.conf")
	text := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]s;
		location / { return 200 "hello from nginx\n"; }
	}
}
`, dir, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestCaptureNginx runs Debian's nginx, which binds its port itself (its
// master binds, its workers accept), under baton with a stop signal of
// SIGQUIT (nginx's graceful shutdown).
func TestCaptureNginx(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if nginx, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			t.Skip("nginx is not installed (apt-get install nginx); .ci/run installs it")
		}
	}
	dir := shortDir(t)
	os.Chmod(dir, 0o755)
	port := strconv.Itoa(freePort(t))
	conf := nginxConf(t, dir, port)
	b := startBaton(t, nil, "--capture-bind", "--ready", "bind", "--stop-signal", "QUIT", "-l", "http=tcp://127.0.0.1:"+port, "-n", "1",
		"--", nginx, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	b.waitReady(1)
	addr := "127.0.0.1:" + port

	wait := closeLoad(addr, 8*time.Second)
	for i := 0; i < 10; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(400 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())

	// Keep-alive: nginx closes idle keep-alive connections itself when it
	// stops, so errors are possible; report them beside nginx's own
	// `nginx -s reload` on the same load.
	ka := func(addr string, reload func()) *loadgen.Result {
		ch := make(chan *loadgen.Result, 1)
		go func() {
			ch <- loadgen.Run(context.Background(), loadgen.Config{Addr: addr, KeepAlive: 8, Duration: 5 * time.Second})
		}()
		for i := 0; i < 10; i++ {
			// Pacing: the reloads spread over the load.
			time.Sleep(400 * time.Millisecond)
			reload()
		}
		return <-ch
	}
	underBaton := ka(addr, func() { b.cli("reload") })
	t.Logf("keep-alive load, 10 reloads under baton: %v", underBaton)

	dir2 := shortDir(t)
	os.Chmod(dir2, 0o755)
	port2 := strconv.Itoa(freePort(t))
	conf2 := nginxConf(t, dir2, port2)
	own := exec.Command(nginx, "-c", conf2, "-e", filepath.Join(dir2, "error.log"))
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { own.Process.Signal(syscall.SIGQUIT); own.Wait() }()
	batontest.WaitFor(t, 10*time.Second, func() error { // nginx listens
		c, err := net.Dial("tcp", "127.0.0.1:"+port2)
		if err == nil {
			c.Close()
		}
		return err
	})
	alone := ka("127.0.0.1:"+port2, func() { exec.Command(nginx, "-c", conf2, "-s", "reload").Run() })
	t.Logf("keep-alive load, 10 x nginx -s reload:   %v", alone)
}
