package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
)

// The programs of docs/workers.md, "Programs you did not write", each run
// with the command and the files that page gives, read from it: the
// page's ports and /srv paths are replaced by a free port and a directory
// of the test's own, and nothing else. Each is reloaded every half second
// under a load that never retries (keep-alive clients and a connection
// per request); every reload must succeed and every request get a 2xx.

// programsDoc is the "Programs you did not write" section of
// docs/workers.md.
func programsDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/workers.md")
	if err != nil {
		t.Fatal(err)
	}
	_, s, ok := strings.Cut(string(b), "## Programs you did not write")
	if !ok {
		t.Fatal(`docs/workers.md has no "## Programs you did not write" section`)
	}
	return s
}

// fenced returns the body of the first block of doc fenced as lang that
// contains marker.
func fenced(t *testing.T, doc, lang, marker string) string {
	t.Helper()
	for _, block := range strings.Split(doc, "```"+lang+"\n")[1:] {
		body, _, _ := strings.Cut(block, "```")
		if strings.Contains(body, marker) {
			return body
		}
	}
	t.Fatalf("docs/workers.md has no %s block with %q: update this test to run what the page says now", lang, marker)
	return ""
}

// shellWords splits a command line as sh would, for the quoting the docs
// use: words, 'single' and "double" quotes.
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

// program is one program of the page, set up in a directory of its own.
type program struct {
	t    *testing.T
	dir  string // stands for /srv
	port int    // stands for the page's port
	repl *strings.Replacer
}

// newProgram makes the directory (readable by the user the workers run
// as) and the replacements of the page's port and paths.
func newProgram(t *testing.T, docPorts ...string) *program {
	t.Helper()
	p := &program{t: t, dir: shortDir(t), port: freePort(t)}
	if err := os.Chmod(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pairs := []string{"/srv/", p.dir + "/", "server.port = 8080", "server.port = " + strconv.Itoa(p.port)}
	for _, dp := range docPorts {
		pairs = append(pairs, "127.0.0.1:"+dp, "127.0.0.1:"+strconv.Itoa(p.port))
	}
	p.repl = strings.NewReplacer(pairs...)
	return p
}

// addr is where the program serves.
func (p *program) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// write writes text, with the page's port and paths replaced, to name
// under the program's directory.
func (p *program) write(name, text string) string {
	p.t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(p.repl.Replace(text)), 0o644); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// command is the page's `baton run` line that contains marker, as the
// arguments that follow `baton run`, with the port and paths replaced
// and extra flags put before the "--". Without root, --user is left out
// (only root can run workers as another user).
func (p *program) command(doc, marker string, extra ...string) []string {
	p.t.Helper()
	var line string
	for _, l := range strings.Split(fenced(p.t, doc, "sh", marker), "\n") {
		if strings.Contains(l, marker) {
			line = l
		}
	}
	words := shellWords(p.repl.Replace(line))
	if len(words) < 3 || words[0] != "baton" || words[1] != "run" {
		p.t.Fatalf("docs/workers.md: %q is not a baton run command", line)
	}
	var args []string
	for i := 2; i < len(words); i++ {
		if words[i] == "--user" && os.Geteuid() != 0 {
			p.t.Logf("not root: running the workers as baton's user instead of --user %s", words[i+1])
			i++
			continue
		}
		if words[i] == "--" {
			args = append(append(args, extra...), words[i:]...)
			break
		}
		args = append(args, words[i])
	}
	p.t.Logf("baton run %s", strings.Join(args, " "))
	return args
}

// requireProgram returns the path of a program the test runs, or skips
// the test, saying which Debian package has it.
func requireProgram(t *testing.T, name, pkg string, alt ...string) string {
	t.Helper()
	for _, n := range append([]string{name}, alt...) {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Skipf("%s is not installed (apt-get install %s; .ci/run installs it)", name, pkg)
	return ""
}

// workersOf is the number of workers a command asks for (-n).
func workersOf(t *testing.T, args []string) int {
	t.Helper()
	for i, a := range args {
		if (a == "-n" || a == "--workers") && i+1 < len(args) {
			n, err := strconv.Atoi(args[i+1])
			if err == nil {
				return n
			}
		}
	}
	t.Fatalf("the command %q does not say how many workers", args)
	return 0
}

// get GETs path from addr and returns the body, failing the test on
// anything but a 200.
func get(t *testing.T, addr, path string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET http://%s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET http://%s%s: %s: %s", addr, path, resp.Status, body)
	}
	return string(body)
}

// reloadUnderLoad puts a load on http://addr/path for d and reloads b
// every half second meanwhile: every reload must exit 0, every request
// get a 2xx.
func reloadUnderLoad(t *testing.T, b *instance, addr, path string, d time.Duration) {
	t.Helper()
	ch := make(chan *loadgen.Result, 1)
	go func() {
		ch <- loadgen.Run(context.Background(), loadgen.Config{Addr: addr, Path: path, KeepAlive: 4, Close: 4, Duration: d})
	}()
	end := time.Now().Add(d - time.Second)
	reloads, failed := 0, 0
	for time.Now().Before(end) {
		time.Sleep(500 * time.Millisecond)
		out, code := b.cli("reload")
		reloads++
		if code != 0 {
			if failed++; failed <= 3 {
				t.Errorf("reload %d exited %d: %s", reloads, code, strings.TrimSpace(out))
			}
		}
	}
	if failed > 3 {
		t.Errorf("... %d of %d reloads failed", failed, reloads)
	}
	t.Logf("%d reloads, %d failed", reloads, failed)
	checkLoad(t, <-ch)
}

// checkBacklog checks that the program, which calls listen(2) again on
// baton's socket, left it the listener's backlog (4096, or somaxconn
// when lower), as the page says to configure it.
func checkBacklog(t *testing.T, b *instance) {
	t.Helper()
	st := b.waitStatus("the kernel's view", func(st supervisor.Status) bool {
		return st.Kernel != nil && len(st.Kernel.Listeners) > 0 && len(st.Kernel.Listeners[0].Sockets) > 0
	})
	want := uint32(min(4096, st.Kernel.Host.Somaxconn))
	if got := st.Kernel.Listeners[0].Sockets[0].SendQ; want > 0 && got != want {
		t.Errorf("the accept queue's maximum is %d: the program's own listen(2) set it; want %d as the page configures it", got, want)
	}
}

// php-cgi on fd 0 behind nginx's fastcgi_pass. With recycling off it
// proves the FastCGI path; at php-cgi's default (500 requests, then exit
// 0) a new generation's worker exits before it counts as ready, which
// baton must restart in its slot instead of failing the reload.
func TestProgramPHPCGIBehindNginx(t *testing.T) {
	requireE2E(t)
	requireProgram(t, "php-cgi", "php-cgi")
	nginx := requireProgram(t, "nginx", "nginx-light", "/usr/sbin/nginx")
	if _, err := os.Stat("/etc/nginx/fastcgi_params"); err != nil {
		t.Skipf("nginx has no /etc/nginx/fastcgi_params: %v", err)
	}
	doc := programsDoc(t)
	for _, tt := range []struct {
		name  string
		extra []string
	}{
		{"recycling off (PHP_FCGI_MAX_REQUESTS=0)", []string{"-e", "PHP_FCGI_MAX_REQUESTS=0"}},
		{"php-cgi's default of 500 requests", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newProgram(t, "9000")
			p.write("www/index.php", "<?php echo \"hello from php-cgi pid \", getmypid(), \"\\n\";\n")
			args := p.command(doc, "php-cgi", tt.extra...)
			b := startBaton(t, nil, args...)
			b.waitReady(workersOf(t, args))

			// nginx as the page has it, on a port of its own, started
			// as usual (outside baton).
			web := freePort(t)
			server := strings.Replace(p.repl.Replace(fenced(t, doc, "nginx", "fastcgi_pass")), "listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", web), 1)
			conf := p.write("nginx/nginx.conf", fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx/nginx.pid;
error_log %[1]s/nginx/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/nginx/body;
	proxy_temp_path %[1]s/nginx/proxy;
	fastcgi_temp_path %[1]s/nginx/fastcgi;
	uwsgi_temp_path %[1]s/nginx/uwsgi;
	scgi_temp_path %[1]s/nginx/scgi;
	%[2]s
}
`, p.dir, server))
			// include fastcgi_params is relative to the configuration's
			// directory: Debian's file, as /etc/nginx has it.
			params, err := os.ReadFile("/etc/nginx/fastcgi_params")
			if err != nil {
				t.Fatal(err)
			}
			p.write("nginx/fastcgi_params", string(params))
			ng := exec.Command(nginx, "-c", conf, "-e", filepath.Join(p.dir, "nginx", "error.log"))
			var ngOut logBuffer
			ng.Stdout, ng.Stderr = &ngOut, &ngOut
			ng.WaitDelay = 10 * time.Second
			if err := ng.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				// SIGTERM: the master stops its workers too (killed, they
				// would keep the output pipe open, and Wait would wait).
				ng.Process.Signal(syscall.SIGTERM)
				ng.Wait()
				if t.Failed() {
					errLog, _ := os.ReadFile(filepath.Join(p.dir, "nginx", "error.log"))
					t.Logf("nginx output:\n%s%s", &ngOut, errLog)
				}
			})
			front := fmt.Sprintf("127.0.0.1:%d", web)
			waitAnswer(t, "http://"+front+"/index.php")
			if body := get(t, front, "/index.php"); !strings.Contains(body, "hello from php-cgi pid") {
				t.Fatalf("nginx -> php-cgi answered %q", body)
			}
			reloadUnderLoad(t, b, front, "/index.php", 8*time.Second)
		})
	}
}

// waitAnswer waits until url answers at all (a server starting).
func waitAnswer(t *testing.T, url string) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer within 30s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gunicorn takes baton's socket from LISTEN_FDS and tells baton it is
// ready; its --max-requests recycles its own workers (here every 50
// requests) under its arbiter, which baton supervises.
func TestProgramGunicorn(t *testing.T) {
	requireE2E(t)
	requireProgram(t, "gunicorn", "gunicorn")
	doc := programsDoc(t)
	p := newProgram(t, "8000")
	p.write("app/app.py", fenced(t, doc, "python", "def app("))
	args := p.command(doc, "gunicorn")
	for i, a := range args {
		if a == "--max-requests" {
			args[i+1] = "50"
			t.Log("with --max-requests 50: gunicorn's workers recycle often under the load")
		}
	}
	b := startBaton(t, nil, args...)
	b.waitReady(workersOf(t, args))
	if body := get(t, p.addr(), "/"); !strings.Contains(body, "hello from gunicorn worker") {
		t.Fatalf("gunicorn answered %q", body)
	}
	checkBacklog(t, b)
	reloadUnderLoad(t, b, p.addr(), "/", 8*time.Second)
}

// Node.js takes fd 3 with server.listen({fd: 3}) and drains as the page
// says, keep-alive clients included.
func TestProgramNode(t *testing.T) {
	requireE2E(t)
	requireProgram(t, "node", "nodejs")
	doc := programsDoc(t)
	p := newProgram(t, "8080")
	p.write("app/server.js", fenced(t, doc, "js", "listen({ fd: 3 }"))
	args := p.command(doc, "node ")
	b := startBaton(t, nil, args...)
	b.waitReady(workersOf(t, args))
	if body := get(t, p.addr(), "/"); !strings.Contains(body, "hello from node pid") {
		t.Fatalf("node answered %q", body)
	}
	checkBacklog(t, b)
	reloadUnderLoad(t, b, p.addr(), "/", 8*time.Second)
}

// Apache httpd binds its own Listen address (under --capture-bind) and
// stops gracefully on SIGWINCH; each generation has its own PidFile. With
// one PidFile for all, the new generation's Apache refuses to start.
func TestProgramApache(t *testing.T) {
	requireE2E(t)
	requireRoot(t) // Apache drops to the User of its configuration
	requireCapture(t)
	requireProgram(t, "apache2", "apache2", "/usr/sbin/apache2")
	doc := programsDoc(t)
	p := newProgram(t, "8080")
	conf := fenced(t, doc, "apache", "PidFile")
	p.write("apache/httpd.conf", strings.SplitN(conf, "\n", 2)[1]) // without its "# path" line
	p.write("www/index.html", "hello from apache\n")
	if err := os.MkdirAll(filepath.Join(p.dir, "apache", "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := p.command(doc, "apache2")
	b := startBaton(t, nil, args...)
	b.waitReady(workersOf(t, args))
	if body := get(t, p.addr(), "/"); !strings.Contains(body, "hello from apache") {
		t.Fatalf("apache answered %q", body)
	}
	checkBacklog(t, b)
	reloadUnderLoad(t, b, p.addr(), "/", 8*time.Second)

	// One PidFile per generation and slot: once the old generations have
	// gone, the serving one's alone is left, naming its worker.
	st := b.waitReady(workersOf(t, args))
	files, _ := filepath.Glob(filepath.Join(p.dir, "apache", "run", "httpd.*.pid"))
	want := filepath.Join(p.dir, "apache", "run", fmt.Sprintf("httpd.%d.0.pid", st.Generation))
	deadline := time.Now().Add(30 * time.Second)
	for (len(files) != 1 || files[0] != want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		files, _ = filepath.Glob(filepath.Join(p.dir, "apache", "run", "httpd.*.pid"))
	}
	if len(files) != 1 || files[0] != want {
		t.Errorf("pid files %v; want only %s", files, want)
	} else if b, _ := os.ReadFile(want); strings.TrimSpace(string(b)) != strconv.Itoa(st.Workers[0].PID) {
		t.Errorf("%s holds %q; want the worker's pid %d", want, b, st.Workers[0].PID)
	}

	t.Run("one PidFile for every generation", func(t *testing.T) {
		p := newProgram(t, "8080")
		p.write("apache/httpd.conf", strings.Replace(strings.SplitN(conf, "\n", 2)[1], "httpd.${BATON_GENERATION}.${BATON_SLOT}.pid", "httpd.pid", 1))
		p.write("www/index.html", "hello from apache\n")
		os.MkdirAll(filepath.Join(p.dir, "apache", "run"), 0o755)
		b := startBaton(t, nil, p.command(doc, "apache2")...)
		first := b.waitReady(1)
		out, code := b.cli("reload")
		if code == 0 || !strings.Contains(out, fmt.Sprintf("httpd (pid %d) already running", first.Workers[0].PID)) || !strings.Contains(out, "generation 1 keeps serving") {
			t.Errorf("reload with one PidFile exited %d: %s\nwant it refused with Apache's own reason", code, out)
		}
	})
}

// lighttpd takes baton's socket from LISTEN_FDS and stops gracefully on
// SIGINT.
func TestProgramLighttpd(t *testing.T) {
	requireE2E(t)
	requireProgram(t, "lighttpd", "lighttpd", "/usr/sbin/lighttpd")
	doc := programsDoc(t)
	p := newProgram(t, "8080")
	conf := fenced(t, doc, "lighttpd", "systemd-socket-activation")
	p.write("lighttpd/lighttpd.conf", strings.SplitN(conf, "\n", 2)[1])
	p.write("www/index.html", "hello from lighttpd\n")
	args := p.command(doc, "lighttpd")
	b := startBaton(t, nil, args...)
	b.waitReady(workersOf(t, args))
	if body := get(t, p.addr(), "/"); !strings.Contains(body, "hello from lighttpd") {
		t.Fatalf("lighttpd answered %q", body)
	}
	checkBacklog(t, b)
	st := b.status()
	if len(st.Workers[0].Captures) != 0 {
		t.Errorf("lighttpd bound a port itself: %+v; want it to take baton's from LISTEN_FDS", st.Workers[0].Captures)
	}
	reloadUnderLoad(t, b, p.addr(), "/", 8*time.Second)
}
