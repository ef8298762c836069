package baton

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
)

// childEnv makes the test binary a worker that reports what the library
// sees of the sockets it was started with (TestInheritedSockets).
const childEnv = "BATON_LIBRARY_TEST_CHILD"

// child reports what the library sees when started with sockets: the
// package-level functions, on the Default Worker of a real environment.
func child() int {
	out := map[string]string{"activated": fmt.Sprint(Activated()), "slot": fmt.Sprint(Slot())}
	lns, err := Listeners()
	if err != nil {
		out["error"] = err.Error()
	}
	for name, ln := range lns {
		out["listener "+name] = ln.Addr().String()
	}
	if pc, err := PacketConn("dns", ""); err == nil {
		out["packet dns"] = pc.LocalAddr().String()
	} else {
		out["packet error"] = err.Error()
	}
	if _, err := Listener("nope", ""); err != nil {
		out["missing"] = err.Error()
	}
	if _, err := PacketConn("web", ""); err != nil {
		out["wrong type"] = err.Error()
	}
	if err := Ready(); err != nil {
		out["ready error"] = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// TestInheritedSockets starts the test binary as a worker, through baton's
// shim (which sets LISTEN_PID), with two sockets at fds 3 and 4.
func TestInheritedSockets(t *testing.T) {
	web, err := listener.Bind(mustSpec(t, "web=tcp://127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	dns, err := listener.Bind(mustSpec(t, "dns=udp://127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	ready, msgs := notifyServer(t)
	readyFrom := make(chan int, 1)
	go func() {
		for m := range msgs {
			if m.Fields["READY"] == "1" {
				readyFrom <- m.PID
			}
		}
	}()

	r, w, _ := os.Pipe()
	defer r.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	exe, _ := os.Executable()
	env := append(os.Environ(), childEnv+"=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:dns", "BATON_SLOT=4", "NOTIFY_SOCKET="+ready.Addr())
	done := make(chan spawn.Exit, 1)
	p, err := spawner().Start(spawn.Spec{Path: exe, Args: []string{exe}, Env: env,
		Files: []int{int(devnull.Fd()), int(w.Fd()), int(w.Fd()), web.Fd(), dns.Fd()}}, func(e spawn.Exit) { done <- e })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	raw, _ := io.ReadAll(r)
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("child output %q: %v", raw, err)
	}
	<-done
	want := map[string]string{
		"activated":    "true",
		"slot":         "4",
		"listener web": web.Addr().String(),
		"packet dns":   dns.Addr().String(),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if !strings.Contains(got["missing"], `socket "nope": no inherited socket with that name; this process has dns, web`) {
		t.Errorf("missing name: %q", got["missing"])
	}
	if !strings.Contains(got["wrong type"], `socket "web" is a stream (use Listener) socket`) {
		t.Errorf("wrong type: %q", got["wrong type"])
	}
	select {
	case pid := <-readyFrom:
		if pid != p.Pid {
			t.Errorf("READY=1 from pid %d, want the child %d", pid, p.Pid)
		}
	case <-time.After(10 * time.Second):
		t.Error("the child's READY=1 never arrived")
	}
}

func mustSpec(t *testing.T, s string) listener.Spec {
	t.Helper()
	spec, err := listener.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// bindSocket binds spec for the length of the test.
func bindSocket(t *testing.T, spec string) *listener.Socket {
	t.Helper()
	s, err := listener.Bind(mustSpec(t, spec))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// inheritAt places duplicates of socks at consecutive descriptors, as a
// supervisor places them from fd 3, but high enough that this process
// leaves them alone, and returns the first. Those still open at the end
// of the test are closed.
func inheritAt(t *testing.T, socks ...*listener.Socket) (first int) {
	t.Helper()
	free := func(fd int) bool { _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); return err != nil }
	for first = 700; ; first += 50 {
		if first > 2000 {
			t.Fatal("no free range of descriptors from 700 to 2000")
		}
		if !slices.ContainsFunc(socks, func(s *listener.Socket) bool { return !free(first + slices.Index(socks, s)) }) {
			break
		}
	}
	for i, s := range socks {
		if err := unix.Dup3(s.Fd(), first+i, 0); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range socks {
			if !free(first + i) {
				unix.Close(first + i)
			}
		}
	})
	return first
}

// TestWorkerInheritsInProcess gives Workers of fake environments real
// sockets at the descriptors their environment names, and checks what
// each makes of them: names, kinds, errors, and that a Worker holds its
// sockets only in what it returned.
func TestWorkerInheritsInProcess(t *testing.T) {
	web := bindSocket(t, "web=tcp://127.0.0.1:0")
	dns := bindSocket(t, "dns=udp://127.0.0.1:0")
	api := bindSocket(t, "api=tcp://127.0.0.1:0")
	api2 := bindSocket(t, "api=tcp://127.0.0.1:0")
	anon := bindSocket(t, "x=tcp://127.0.0.1:0")
	first := inheritAt(t, web, dns, api, api2, anon)
	pid := strconv.Itoa(fakePID)
	w, _ := testWorkerAt(t, map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": "5", "LISTEN_FDNAMES": "web:dns:api:api:"}, first)

	if !w.Activated() {
		t.Fatal("Activated() = false")
	}
	all, err := w.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	unnamed := "fd" + strconv.Itoa(first+4)
	want := map[string]net.Addr{"web": web.Addr(), "api": api.Addr(), "api.3": api2.Addr(), unnamed: anon.Addr()}
	if len(all) != len(want) {
		t.Errorf("Listeners() = %v; want %v", all, want)
	}
	for name, addr := range want {
		if ln, ok := all[name]; !ok || ln.Addr().String() != addr.String() {
			t.Errorf("listener %s: %v, want one on %v", name, ln, addr)
		}
	}
	if ln, err := w.Listener("web", "127.0.0.1:1"); err != nil || ln != all["web"] {
		t.Errorf("Listener(web) = %v, %v; want the one Listeners returned", ln, err)
	}
	pc, err := w.PacketConn("dns", "")
	if err != nil || pc.LocalAddr().String() != dns.Addr().String() {
		t.Fatalf("PacketConn(dns) = %v, %v", pc, err)
	}
	if again, _ := w.PacketConn("dns", ""); again != pc {
		t.Error("PacketConn(dns) made a second socket")
	}
	if _, err := w.PacketConn("web", ""); !errors.Is(err, errWrongType) || !strings.Contains(err.Error(), `socket "web" is a stream (use Listener) socket`) {
		t.Errorf("PacketConn(web): %v", err)
	}
	if _, err := w.Listener("dns", ""); !errors.Is(err, errWrongType) || !strings.Contains(err.Error(), `socket "dns" is a datagram (use PacketConn) socket`) {
		t.Errorf("Listener(dns): %v", err)
	}
	wantMissing := fmt.Sprintf(`socket "nope": no inherited socket with that name; this process has api, api.3, dns, %s, web (LISTEN_FDNAMES)`, unnamed)
	if _, err := w.Listener("nope", "127.0.0.1:0"); !errors.Is(err, ErrNotFound) || err.Error() != wantMissing {
		t.Errorf("Listener(nope): %v\nwant %s", err, wantMissing)
	}
	// Every inherited descriptor was taken, and closed: the socket lives
	// on in the returned net.Listener or net.PacketConn only.
	for fd := first; fd < first+5; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("fd %d is still open after the Worker took it (%v)", fd, err)
		}
	}
	c, err := net.Dial("tcp", web.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if s, err := all["web"].Accept(); err != nil {
		t.Errorf("accepting on the inherited web: %v", err)
	} else {
		s.Close()
	}
	for _, ln := range all {
		ln.Close()
	}
	pc.Close()

	// Another Worker, in the same process, has sockets of its own.
	other := bindSocket(t, "web=tcp://127.0.0.1:0")
	w2, _ := testWorkerAt(t, map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, inheritAt(t, other))
	if ln, err := w2.Listener("web", ""); err != nil || ln.Addr().String() != other.Addr().String() {
		t.Errorf("the second Worker's web: %v, %v; want %v", ln, err, other.Addr())
	} else {
		ln.Close()
	}
}

func TestWorkerNotActivated(t *testing.T) {
	web := bindSocket(t, "web=tcp://127.0.0.1:0")
	first := inheritAt(t, web)
	tests := []struct {
		name    string
		vars    map[string]string
		wantErr string
	}{
		{"another process's variables", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, ""},
		{"no LISTEN_PID", map[string]string{"LISTEN_FDS": "1"}, ""},
		{"names that do not match", map[string]string{"LISTEN_PID": strconv.Itoa(fakePID), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web:api"}, "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, _ := testWorkerAt(t, tt.vars, first)
			if w.Activated() {
				t.Error("Activated() = true")
			}
			ln, err := w.Listener("web", "127.0.0.1:0")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Listener: %v, %v; want an error with %q", ln, err, tt.wantErr)
				}
				if _, err := w.Listeners(); err == nil {
					t.Error("Listeners: no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if ln.Addr().String() == web.Addr().String() {
				t.Error("Listener took a descriptor meant for another process")
			}
			if _, err := unix.FcntlInt(uintptr(first), unix.F_GETFD, 0); err != nil {
				t.Errorf("the descriptor of another process was closed: %v", err)
			}
		})
	}
}

// notifyServer is a notification socket like baton's, for the length of
// the test, and the messages it receives.
func notifyServer(t *testing.T) (*notify.Server, <-chan notify.Message) {
	t.Helper()
	srv, err := notify.Listen(fmt.Sprintf("@baton-lib-test/%d/%s", os.Getpid(), t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan notify.Message, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(msgs)
		srv.Serve(func(m notify.Message) { msgs <- m })
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return srv, msgs
}

// next is the next message of msgs that has key, within 10 seconds.
func next(t *testing.T, msgs <-chan notify.Message, key string) notify.Message {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-msgs:
			if _, ok := m.Fields[key]; ok {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s= notification in 10s", key)
		}
	}
}

func TestReadyAndStatusGoToTheWorkersSocket(t *testing.T) {
	srv, msgs := notifyServer(t)
	w, _ := testWorker(t, map[string]string{"NOTIFY_SOCKET": srv.Addr()})
	if err := w.Ready(); err != nil {
		t.Fatal(err)
	}
	if m := next(t, msgs, "READY"); m.Fields["READY"] != "1" || m.PID != os.Getpid() {
		t.Errorf("Ready sent %+v", m)
	}
	if err := w.Status("two\nlines"); err != nil {
		t.Fatal(err)
	}
	if m := next(t, msgs, "STATUS"); m.Fields["STATUS"] != "two lines" {
		t.Errorf("Status sent %+v; want one line", m)
	}
	none, _ := testWorker(t, map[string]string{})
	if err := none.Ready(); err != nil {
		t.Errorf("Ready without NOTIFY_SOCKET: %v", err)
	}
	gone := "@baton-lib-test/nobody/" + strconv.Itoa(os.Getpid())
	lost, _ := testWorker(t, map[string]string{"NOTIFY_SOCKET": gone})
	if err := lost.Ready(); err == nil || !strings.Contains(err.Error(), "sd_notify to "+gone) {
		t.Errorf("Ready to a socket nobody holds: %v", err)
	}
}

// TestServeReportsToItsWorker runs Serve on a Worker of a fake environment:
// READY=1, the count of accepted connections and of 5xx answers go to that
// Worker's NOTIFY_SOCKET, and its stop signal ends the drain.
func TestServeReportsToItsWorker(t *testing.T) {
	srv, msgs := notifyServer(t)
	w, sig := testWorker(t, map[string]string{"NOTIFY_SOCKET": srv.Addr()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, "broken", http.StatusBadGateway)
			return
		}
		io.WriteString(w, "ok")
	})}
	go func() { served <- ServeOptions{Worker: w, DrainWindow: time.Millisecond}.ServeListeners(hs, ln) }()
	next(t, msgs, "READY")
	for _, path := range []string{"/", "/fail", "/"} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// A new connection each time: the count is of connections.
		http.DefaultClient.CloseIdleConnections()
	}
	for {
		// The 5xx answer is reported as an error (X_BATON_ERRORS), which
		// a canary reload judges; the others are not.
		if m := next(t, msgs, "X_BATON_ACCEPTED"); m.Fields["X_BATON_ACCEPTED"] == "3" {
			if m.Fields["X_BATON_ERRORS"] != "1" {
				t.Errorf("report %v: want X_BATON_ERRORS=1 for the one 502", m.Fields)
			}
			break
		}
	}
	sig.send(syscall.SIGTERM)
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the stop signal")
	}
}

func TestStopSignals(t *testing.T) {
	tests := []struct {
		name string
		want []os.Signal
	}{
		{"", []os.Signal{unix.SIGTERM, unix.SIGINT}},
		{"SIGQUIT", []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGQUIT}},
		{"SIGNOPE", []os.Signal{unix.SIGTERM, unix.SIGINT}},
	}
	for _, tt := range tests {
		if got := stopSignals(tt.name); !slices.Equal(got, tt.want) {
			t.Errorf("stopSignals(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestStopSignalFromEnvironment delivers a real signal, the one
// BATON_STOP_SIGNAL names, to the test process.
func TestStopSignalFromEnvironment(t *testing.T) {
	w := newWorker(env{
		lookupEnv: func(k string) (string, bool) {
			return map[string]string{"BATON_STOP_SIGNAL": "SIGUSR1"}[k], k == "BATON_STOP_SIGNAL"
		},
		pid:          os.Getpid(),
		firstFd:      listener.FirstFd,
		notifySignal: signal.Notify,
	})
	stop := w.Stopping()
	if err := unix.Kill(os.Getpid(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-stop:
	case <-ctx.Done():
		t.Fatal("SIGUSR1, the BATON_STOP_SIGNAL, did not close Stopping's channel")
	}
}
