package baton

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/listener"
)

// signals is a fake signal.Notify: the channels a Worker registered, and
// a way to deliver a signal to them without signalling the test process.
type signals struct {
	mu   sync.Mutex
	regs []signalReg
}

type signalReg struct {
	c    chan<- os.Signal
	sigs []os.Signal
}

// notify is the Worker's signal.Notify.
func (s *signals) notify(c chan<- os.Signal, sigs ...os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.regs = append(s.regs, signalReg{c, sigs})
}

// send delivers sig, as the runtime does: to every channel registered for
// it, without blocking.
func (s *signals) send(sig os.Signal) (delivered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.regs {
		if slices.Contains(r.sigs, sig) {
			select {
			case r.c <- sig:
			default:
			}
			delivered++
		}
	}
	return delivered
}

// testWorker is a Worker of a fake environment: the variables in vars, a
// pid of its own (fakePID, not the test process's), inherited descriptors
// from the protocol's fd 3, and signals that only sig delivers.
func testWorker(t *testing.T, vars map[string]string) (w *Worker, sig *signals) {
	t.Helper()
	return testWorkerAt(t, vars, listener.FirstFd)
}

// testWorkerAt is testWorker with inherited descriptors from first.
func testWorkerAt(t *testing.T, vars map[string]string, first int) (w *Worker, sig *signals) {
	t.Helper()
	sig = &signals{}
	w = newWorker(env{
		lookupEnv:    func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
		pid:          fakePID,
		firstFd:      first,
		notifySignal: sig.notify,
	})
	return w, sig
}

// fakePID is the pid of a testWorker's process.
const fakePID = 1 << 22

func TestWorkerReadsItsEnvironmentOnce(t *testing.T) {
	tests := []struct {
		name             string
		vars             map[string]string
		slot, generation int
	}{
		{"not under baton", map[string]string{}, -1, -1},
		{"under baton", map[string]string{"BATON_SLOT": "3", "BATON_GENERATION": "12"}, 3, 12},
		{"not numbers", map[string]string{"BATON_SLOT": "three", "BATON_GENERATION": ""}, -1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, _ := testWorker(t, tt.vars)
			// Changes after the Worker is made do not reach it.
			tt.vars["BATON_SLOT"], tt.vars["LISTEN_FDS"], tt.vars["LISTEN_PID"] = "99", "1", fmt.Sprint(fakePID)
			if got := w.Slot(); got != tt.slot {
				t.Errorf("Slot() = %d, want %d", got, tt.slot)
			}
			if got := w.Generation(); got != tt.generation {
				t.Errorf("Generation() = %d, want %d", got, tt.generation)
			}
			if w.Activated() {
				t.Error("Activated() with no LISTEN_FDS when the Worker was made")
			}
		})
	}
}

func TestDefaultIsOneWorker(t *testing.T) {
	if a, b := Default(), Default(); a == nil || a != b {
		t.Fatal("Default() is not one Worker")
	}
	if (ServeOptions{}).worker() != Default() {
		t.Error("ServeOptions without a Worker does not use Default()")
	}
	w, _ := testWorker(t, nil)
	if w == Default() || (ServeOptions{Worker: w}).worker() != w {
		t.Error("ServeOptions.Worker is not the Worker used")
	}
}

func TestListenerBindsItselfWhenNotActivated(t *testing.T) {
	w, _ := testWorker(t, map[string]string{})
	for _, addr := range []string{"127.0.0.1:0", "tcp://127.0.0.1:0"} {
		ln, err := w.Listener("web", addr)
		if err != nil {
			t.Fatalf("Listener(web, %s): %v", addr, err)
		}
		ln.Close()
	}
	if _, err := w.Listener("web", "udp://127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "use PacketConn") {
		t.Errorf("a datagram address as a listener: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:0", "udp://127.0.0.1:0"} {
		pc, err := w.PacketConn("dns", addr)
		if err != nil {
			t.Fatalf("PacketConn(dns, %s): %v", addr, err)
		}
		pc.Close()
	}
	if _, err := w.PacketConn("dns", "tcp://127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "use Listener") {
		t.Errorf("a stream address as a datagram socket: %v", err)
	}
	if all, err := w.Listeners(); err != nil || len(all) != 0 {
		t.Errorf("Listeners() = %v, %v; want none", all, err)
	}
}

func TestStoppingIsEachWorkers(t *testing.T) {
	a, sigA := testWorker(t, map[string]string{})
	b, _ := testWorker(t, map[string]string{})
	stopA := a.Stopping()
	if a.Stopping() != stopA {
		t.Fatal("Stopping returned another channel on the second call")
	}
	stopB := b.Stopping()
	if n := sigA.send(syscall.SIGTERM); n != 1 {
		t.Fatalf("SIGTERM reached %d channels; the Worker registered %v", n, sigA.regs)
	}
	select {
	case <-stopA:
	case <-time.After(10 * time.Second):
		t.Fatal("Stopping's channel stayed open after SIGTERM")
	}
	select {
	case <-stopB:
		t.Error("the stop signal of one Worker closed another's channel")
	default:
	}
	// A fresh Worker starts serving again: nothing is left closed.
	c, sigC := testWorker(t, map[string]string{})
	stopC := c.Stopping()
	select {
	case <-stopC:
		t.Fatal("a new Worker's Stopping is closed already")
	default:
	}
	if n := sigC.send(os.Interrupt); n != 1 {
		t.Errorf("SIGINT reached %d channels, want 1", n)
	}
	<-stopC
}

func TestHandoffNotUnderBaton(t *testing.T) {
	w, _ := testWorker(t, map[string]string{})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	err := w.Handoff(a, nil)
	if !errors.Is(err, ErrNoHandoff) {
		t.Errorf("Handoff outside baton: %v; want ErrNoHandoff", err)
	}
	if runtime.GOOS == "linux" {
		if !strings.Contains(err.Error(), "not running under baton") {
			t.Errorf("Handoff outside baton: %v", err)
		}
	} else if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), runtime.GOOS) {
		t.Errorf("Handoff on %s: %v; want ErrNotSupported naming the system", runtime.GOOS, err)
	}
	// The connection is still the caller's: open (a write with no reader
	// on a net.Pipe times out rather than failing as closed).
	a.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := a.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the connection after a failed Handoff: %v; want it open", err)
	}
	ch := w.Adopted()
	if _, ok := <-ch; ok {
		t.Error("Adopted delivered a connection outside baton")
	}
	if w.Adopted() != ch {
		t.Error("Adopted returned another channel on the second call")
	}
}

// TestServeDrains stops Serve with the stop signal while a request is in
// flight and a keep-alive connection is open, and checks that the
// server's own ConnState still runs under Serve's.
func TestServeDrains(t *testing.T) {
	w, sig := testWorker(t, map[string]string{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	inSlow := make(chan struct{})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(inSlow)
		<-release
		io.WriteString(w, "slow ok\n")
	})
	var states sync.Map
	srv := &http.Server{Addr: addr, Handler: mux, ConnState: func(c net.Conn, s http.ConnState) { states.Store(s, true) }}
	served := make(chan error, 1)
	go func() { served <- ServeOptions{Worker: w, DrainWindow: 3 * time.Second}.Serve(srv) }()

	var keep net.Conn
	batontest.WaitFor(t, 10*time.Second, func() (err error) {
		keep, err = net.Dial("tcp", addr)
		return err
	})
	defer keep.Close()
	br := bufio.NewReader(keep)
	get := func(path string) *http.Response {
		t.Helper()
		fmt.Fprintf(keep, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s on the keep-alive connection: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get("/"); resp.Close {
		t.Fatal("keep-alive refused before the stop")
	}
	slow := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(b)
	}()
	<-inSlow
	stop := w.Stopping()
	sig.send(syscall.SIGTERM)
	<-stop
	// The listener is closed once Serve has seen the signal: wait for
	// that, then the open connection is answered, with Connection: close
	// so the client moves on.
	batontest.WaitFor(t, 10*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return errors.New("the listener still accepts")
		}
		return nil
	})
	if resp := get("/"); !resp.Close {
		t.Error("a response during the drain did not say Connection: close")
	}
	close(release)
	if got := <-slow; got != "slow ok\n" {
		t.Errorf("in-flight request: %q", got)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v after a clean drain", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	for _, s := range []http.ConnState{http.StateNew, http.StateActive, http.StateIdle, http.StateClosed} {
		if _, ok := states.Load(s); !ok {
			t.Errorf("the server's own ConnState never saw %v", s)
		}
	}
}
