package baton

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
)

const childEnv = "BATON_LIBRARY_TEST_CHILD"

func TestMain(m *testing.M) {
	spawn.RunShim() // children are started through baton's shim
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	if mode := os.Getenv(handoffChildEnv); mode != "" {
		os.Exit(handoffChild(mode))
	}
	os.Exit(m.Run())
}

// child reports what the library sees when started with sockets.
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
	ready, err := notify.Listen(fmt.Sprintf("@baton-lib-test-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	readyFrom := make(chan int, 1)
	go ready.Serve(func(m notify.Message) {
		if m.Fields["READY"] == "1" {
			readyFrom <- m.PID
		}
	})

	r, w, _ := os.Pipe()
	defer r.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	exe, _ := os.Executable()
	env := append(os.Environ(), childEnv+"=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:dns", "BATON_SLOT=4", "NOTIFY_SOCKET="+ready.Addr())
	done := make(chan spawn.Exit, 1)
	p, err := spawn.New().Start(spawn.Spec{Path: exe, Args: []string{exe}, Env: env,
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
	spec, err := listener.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestListenerBindsItselfWhenNotActivated(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	for _, addr := range []string{"127.0.0.1:0", "tcp://127.0.0.1:0"} {
		ln, err := listenOwn(addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		ln.Close()
	}
	if _, err := listenOwn("udp://127.0.0.1:0"); err == nil {
		t.Error("a datagram address was accepted as a listener")
	}
	pc, err := listenOwnPacket("udp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}

// TestServeDrains stops Serve with a real SIGTERM while a request is in
// flight and a keep-alive connection is open.
func TestServeDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-release; io.WriteString(w, "slow ok\n") })
	served := make(chan error, 1)
	go func() {
		served <- ServeOptions{DrainWindow: 3 * time.Second}.Serve(&http.Server{Addr: addr, Handler: mux})
	}()

	var keep net.Conn
	for i := 0; ; i++ {
		if keep, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if i > 200 {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	time.Sleep(100 * time.Millisecond)
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)

	// The listener is closed, but the open connection is answered, with
	// Connection: close so the client moves on.
	if resp := get("/"); !resp.Close {
		t.Error("a response during the drain did not say Connection: close")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts after the stop signal")
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
}

func ExampleServe() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello\n")
	})
	// Under baton: serves on the inherited "http" socket, sends READY=1,
	// drains on SIGTERM. Alone: listens on 127.0.0.1:8080.
	if err := Serve(&http.Server{Addr: "127.0.0.1:8080"}); err != nil {
		fmt.Println(err)
	}
}

func ExampleListener() {
	ln, err := Listener("web", "127.0.0.1:8080")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	Ready()
	go func() {
		<-Stopping()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.WriteString(c, "hi\n"); c.Close() }()
	}
}
