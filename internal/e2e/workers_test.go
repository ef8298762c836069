package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton"
)

// The test binary doubles as a worker: baton runs it with workerEnv set to
// a mode. Workers read their knobs from the environment, which baton passes
// through from its own.
const workerEnv = "E2E_WORKER"

// Knobs (environment variables) the workers read:
const (
	// failFile: when it exists and holds "fail", the http worker exits 1
	// at start, like a bad deploy. When it holds "noready" the worker
	// serves but never sends READY=1; "slow", it waits 3s before it
	// serves and says it is ready; "fail-slot N", it exits 1 at start in
	// slot N only; "crash-after-2s", it serves, then exits 2 after 2s;
	// "errors", it answers 500 to one request in 10 and reports its
	// count of them on NOTIFY_SOCKET (X_BATON_ERRORS=N), as a canary
	// with a bug does.
	failFile = "E2E_FAIL_FILE"
	// drainDelay: the http worker lingers this long after it has drained,
	// like a worker with long-lived connections.
	drainDelay = "E2E_DRAIN_DELAY"
	// reportDir: the env and activation workers write a JSON report
	// there, one file per process.
	reportDir = "E2E_REPORT_DIR"
	// nofile: the http worker lowers its soft RLIMIT_NOFILE to this.
	nofile = "E2E_NOFILE"
)

func runWorker(mode string) int {
	var err error
	switch mode {
	case "http":
		err = httpWorker()
	case "http-all":
		err = httpAllWorker()
	case "crash":
		fmt.Println("crashing on purpose")
		return 3
	case "env":
		err = envWorker()
	case "gosystemd":
		err = goSystemdWorker()
	case "udp-flows":
		err = udpFlowsWorker()
	case "udp-echo":
		err = udpEchoWorker()
	case "fcgi":
		err = fcgiWorker()
	case "orphan":
		err = orphanWorker()
	case "hold":
		err = holdWorker()
	case "hold-fds":
		err = rawHoldWorker()
	case "hold-clients":
		err = holdClients() // not a worker: the handoff benchmark's clients
	case "stall", "leak", "fds":
		err = observeWorker(mode)
	case "stranger-notify":
		err = strangerNotify() // not a worker: another user abusing NOTIFY_SOCKET
	case "stranger-worker-socket":
		err = strangerWorkerSocket() // not a worker: another user on BATON_SOCKET
	case "junk-handoff":
		err = junkHandoffWorker()
	case "maxreq", "leak-rss":
		err = recycleWorker(mode) // recycle_workers_test.go
	default:
		err = fmt.Errorf("unknown worker mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}

func httpWorker() error {
	var report500 bool
	if f := os.Getenv(failFile); f != "" {
		b, _ := os.ReadFile(f)
		how := strings.TrimSpace(string(b))
		switch how {
		case "fail":
			return errors.New("bad deploy: refusing to start")
		case "noready":
			<-baton.Stopping()
			return nil
		case "slow":
			time.Sleep(3 * time.Second) // the worker under test: ready after 3s
		case "crash-after-2s":
			time.AfterFunc(2*time.Second, func() {
				fmt.Println("crashing after 2s on purpose")
				os.Exit(2)
			})
		case "errors":
			report500 = true
		}
		if slot, ok := strings.CutPrefix(how, "fail-slot "); ok && slot == strconv.Itoa(baton.Slot()) {
			return fmt.Errorf("bad deploy in slot %s: refusing to start", slot)
		}
	}
	if n, err := strconv.ParseUint(os.Getenv(nofile), 10, 64); err == nil {
		lim := unix.Rlimit{Cur: n, Max: n}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("lowering RLIMIT_NOFILE to %d: %w", n, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok generation %d slot %d pid %d\n", baton.Generation(), baton.Slot(), os.Getpid())
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond) // the slow answer asked for
		fmt.Fprintf(w, "slow ok pid %d\n", os.Getpid())
	})
	var h http.Handler = mux
	if report500 {
		h = erring(mux)
	}
	err := baton.Serve(&http.Server{Handler: h})
	if d, perr := time.ParseDuration(os.Getenv(drainDelay)); perr == nil {
		fmt.Println("drained; lingering for", d)
		time.Sleep(d) // the worker under test lingers after draining
	}
	return err
}

// erring answers 500 to one request in 10 and tells baton how many it
// answered so, as X_BATON_ERRORS=N on NOTIFY_SOCKET (docs/workers.md).
func erring(h http.Handler) http.Handler {
	var mu sync.Mutex
	var requests, errs int
	notify := os.Getenv("NOTIFY_SOCKET")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		fail := requests%10 == 0
		if fail {
			errs++
		}
		n := errs
		mu.Unlock()
		if !fail {
			h.ServeHTTP(w, r)
			return
		}
		http.Error(w, "a bug", http.StatusInternalServerError)
		if c, err := net.Dial("unixgram", notify); err == nil {
			fmt.Fprintf(c, "X_BATON_ERRORS=%d", n)
			c.Close()
		}
	})
}

// httpAllWorker serves HTTP on every stream socket it inherited.
func httpAllWorker() error {
	lns, err := baton.Listeners()
	if err != nil {
		return err
	}
	var all []net.Listener
	for _, ln := range lns {
		all = append(all, ln)
	}
	return baton.ServeOptions{}.ServeListeners(&http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok generation %d pid %d\n", baton.Generation(), os.Getpid())
	})}, all...)
}

// envReport is what the env worker writes.
type envReport struct {
	PID       int               `json:"pid"`
	Env       map[string]string `json:"env"`
	Fds       map[string]string `json:"fds"` // fd number -> readlink
	Fd3Flags  int               `json:"fd3_flags"`
	Fd0IsSock bool              `json:"fd0_is_socket"`
}

func writeReport(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	name := filepath.Join(os.Getenv(reportDir), strconv.Itoa(os.Getpid())+".json")
	if err := os.WriteFile(name+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(name+".tmp", name)
}

func envWorker() error {
	r := envReport{PID: os.Getpid(), Env: map[string]string{}, Fds: map[string]string{}}
	// Probe descriptor numbers instead of reading /proc/self/fd: opening
	// a directory would itself add descriptors (the directory and the
	// runtime's poller). Only descriptors without close-on-exec can have
	// come from baton: what the Go runtime opens at start (cgroup files)
	// has it set.
	for fd := 0; fd < 1024; fd++ {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			r.Fds[strconv.Itoa(fd)] = link
		}
	}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		r.Env[k] = v
	}
	var err error
	if r.Fd3Flags, err = unix.FcntlInt(3, unix.F_GETFL, 0); err != nil {
		r.Fd3Flags = -1
	}
	_, err = unix.GetsockoptInt(0, unix.SOL_SOCKET, unix.SO_TYPE)
	r.Fd0IsSock = err == nil
	if err := writeReport(r); err != nil {
		return err
	}
	baton.Ready()
	<-baton.Stopping()
	return nil
}

// activationReport is what the go-systemd worker writes.
type activationReport struct {
	PID   int                 `json:"pid"`
	Names map[string][]string `json:"names"` // name -> Go types of its sockets
}

// goSystemdWorker takes its sockets with go-systemd, an implementation of
// the activation protocol independent of baton's.
func goSystemdWorker() error {
	r := activationReport{PID: os.Getpid(), Names: map[string][]string{}}
	for _, f := range activation.Files(false) {
		kind := "other"
		if l, err := net.FileListener(f); err == nil {
			kind = fmt.Sprintf("%T", l)
			l.Close()
		} else if pc, err := net.FilePacketConn(f); err == nil {
			kind = fmt.Sprintf("%T", pc)
			pc.Close()
		}
		r.Names[f.Name()] = append(r.Names[f.Name()], kind)
	}
	if err := writeReport(r); err != nil {
		return err
	}
	baton.Ready()
	<-baton.Stopping()
	return nil
}

// udpEchoWorker answers each datagram on the "echo" socket with
// "PID:payload". On the stop signal it stops reading: datagrams it has
// not read stay in the shared socket for the next generation.
func udpEchoWorker() error {
	pc, err := baton.PacketConn("echo", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stop := baton.Stopping()
	baton.Ready()
	buf := make([]byte, 2048)
	prefix := []byte(strconv.Itoa(os.Getpid()) + ":")
	for {
		select {
		case <-stop:
			return pc.Close()
		default:
		}
		pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		pc.WriteTo(append(append([]byte(nil), prefix...), buf[:n]...), from)
	}
}

// fcgiWorker serves FastCGI on fd 0, as net/http/fcgi does when given no
// listener: the convention fcgistarter and spawn-fcgi use.
func fcgiWorker() error {
	return fcgi.Serve(nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "fastcgi ok %s pid %d\n", r.URL.Path, os.Getpid())
	}))
}

// orphanWorker leaves an orphan behind, the classic double fork (a shell
// that backgrounds a sleep and exits), then serves HTTP. When baton is
// PID 1 the orphan is re-parented to baton, which must reap it.
func orphanWorker() error {
	if err := exec.Command("/bin/sh", "-c", "sleep 0.3 &").Run(); err != nil {
		return err
	}
	return httpWorker()
}
