package baton

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/spawn"
)

// handoffChildEnv makes the test binary a worker that hands off (send) or
// adopts (adopt) HANDOFF_TEST_N connections.
const handoffChildEnv = "BATON_HANDOFF_TEST_CHILD"

// handoffChild runs a worker for TestHandoffAndAdopted.
func handoffChild(mode string) int {
	n, _ := strconv.Atoi(os.Getenv("HANDOFF_TEST_N"))
	switch mode {
	case "send":
		ln, err := Listener("web", "")
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			c, err := ln.Accept()
			if err != nil {
				fmt.Println("error:", err)
				return 1
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Read the first line, 10 bytes, with a 16-byte buffer: 6
				// bytes of the second line were read and go in the state;
				// the rest of it stays in the socket.
				r := bufio.NewReaderSize(c, 16)
				first, _ := r.ReadString('\n')
				buffered, _ := r.Peek(r.Buffered())
				state := append([]byte(strings.TrimSpace(first)+"|"), buffered...)
				errs <- Handoff(c, state)
			}()
		}
		wg.Wait()
		close(errs)
		ok := 0
		for err := range errs {
			if err != nil {
				fmt.Println("error:", err)
				continue
			}
			ok++
		}
		fmt.Println("handed off", ok)
	case "adopt":
		got := 0
		for a := range Adopted() {
			first, pending, _ := strings.Cut(string(a.State), "|")
			r := bufio.NewReader(io.MultiReader(strings.NewReader(pending), a.Conn))
			a.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			second, _ := r.ReadString('\n')
			fmt.Fprintf(a.Conn, "adopted %s by %d: %s, then %s", a.Listener, os.Getpid(), first, second)
			a.Conn.Close()
			if got++; got == n {
				fmt.Println("adopted", got)
				return 0
			}
		}
		fmt.Println("the subscription ended after", got)
		return 1
	}
	return 2
}

// handoffStore is baton's fd store behind a worker socket like baton's,
// for the length of the test: it takes connections of the listeners
// given and returns its path (BATON_SOCKET).
func handoffStore(t *testing.T, listeners map[string][]net.Addr) (*handoff.Store, string) {
	t.Helper()
	st, err := handoff.NewStore(handoff.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	path := fmt.Sprintf("@baton-lib-handoff-test/%d/%s", os.Getpid(), t.Name())
	srv, err := control.ListenAbstract(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.ConnMethods(handoff.MethodHandoff, handoff.MethodAdopt)
	go srv.Serve(func(ctx context.Context, p control.Peer, r control.Request) (any, error) {
		c := control.ConnFrom(ctx)
		switch r.Method {
		case handoff.MethodHandoff:
			if answered, err := st.ServeHandoff(ctx, c, handoff.Source{PID: p.PID, Listeners: listeners}); !answered {
				return nil, err
			}
			return control.Hijacked, nil
		case handoff.MethodAdopt:
			var ap handoff.AdoptParams
			if err := control.DecodeParams(r.Params, &ap); err != nil {
				return nil, err
			}
			sub, err := st.Subscribe(ap)
			if err != nil {
				return nil, err
			}
			if handoff.WriteResult(c, sub) == nil {
				st.Adopt(ctx, c, handoff.Worker{PID: p.PID}, sub)
			}
			return control.Hijacked, nil
		}
		return nil, fmt.Errorf("unknown method %q", r.Method)
	})
	return st, path
}

// TestHandoffAndAdopted runs the library in two worker processes against
// baton's fd store: one hands off connections with unread and half-read
// bytes, the other adopts them and reads on where the first stopped.
func TestHandoffAndAdopted(t *testing.T) {
	const n = 300
	web, err := listener.Bind(mustSpec(t, "web=tcp://127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	st, path := handoffStore(t, map[string][]net.Addr{"web": {web.Addr()}})

	run := func(mode string, files []int) (out func() string, pid int) {
		t.Helper()
		r, w, _ := os.Pipe()
		exe, _ := os.Executable()
		env := append(os.Environ(), handoffChildEnv+"="+mode, "HANDOFF_TEST_N="+strconv.Itoa(n), "BATON_SOCKET="+path)
		if len(files) > 3 {
			env = append(env, "LISTEN_FDS=1", "LISTEN_FDNAMES=web")
		}
		files[1], files[2] = int(w.Fd()), int(w.Fd())
		done := make(chan string, 1)
		p, err := spawner().Start(spawn.Spec{Path: exe, Args: []string{exe}, Env: env, Files: files}, func(spawn.Exit) {})
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			b, _ := io.ReadAll(r)
			r.Close()
			done <- string(b)
		}()
		return func() string {
			select {
			case s := <-done:
				return s
			case <-time.After(30 * time.Second):
				syscall.Kill(p.Pid, syscall.SIGKILL)
				return "timed out: " + <-done
			}
		}, p.Pid
	}
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	sent, _ := run("send", []int{int(devnull.Fd()), -1, -1, web.Fd()})
	var clients []*net.TCPConn
	for i := range n {
		c, err := net.DialTCP("tcp", nil, web.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "first %03d\nsecond %03d and more\n", i, i)
		clients = append(clients, c)
	}
	if out := sent(); out != fmt.Sprintf("handed off %d\n", n) {
		t.Fatalf("the sending worker: %q", out)
	}
	if s := st.Stats(); s.Stored != n || s.Held != n {
		t.Fatalf("store after the handoff: %+v", s)
	}
	adopted, pid := run("adopt", []int{int(devnull.Fd()), -1, -1})
	st.SetWorkers([]handoff.Worker{{PID: pid, Adopt: true}})
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		want := fmt.Sprintf("adopted web by %d: first %03d, then second %03d and more\n", pid, i, i)
		if err != nil || string(b) != want {
			t.Errorf("client %d: %q, %v; want %q", i, b, err, want)
		}
	}
	if out := adopted(); out != fmt.Sprintf("adopted %d\n", n) {
		t.Errorf("the adopting worker: %q", out)
	}
}

// TestHandoffFromItsWorker hands off, in this process, a connection of a
// Worker of a fake environment: the Worker finds baton at its own
// BATON_SOCKET and names the listener from the sockets it inherited.
func TestHandoffFromItsWorker(t *testing.T) {
	web := bindSocket(t, "web=tcp://127.0.0.1:0")
	st, path := handoffStore(t, map[string][]net.Addr{"web": {web.Addr()}})
	vars := map[string]string{"LISTEN_PID": strconv.Itoa(fakePID), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "BATON_SOCKET": path}
	w, _ := testWorkerAt(t, vars, inheritAt(t, web))
	ln, err := w.Listener("web", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", web.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Handoff(c, []byte("state")); err != nil {
		t.Fatalf("Handoff: %v", err)
	}
	if s := st.Stats(); s.Stored != 1 || s.Held != 1 {
		t.Errorf("store after the handoff: %+v; want the connection held", s)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the connection in this process after Handoff: %v; want it closed", err)
	}

	// A connection from a listener the Worker did not inherit is not
	// handed off, and stays open.
	own, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	client2, err := net.Dial("tcp", own.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client2.Close()
	c2, err := own.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	err = w.Handoff(c2, nil)
	if !errors.Is(err, ErrNoHandoff) || !strings.Contains(err.Error(), "none of this process's listeners (web="+web.Addr().String()+")") {
		t.Errorf("Handoff of a connection from elsewhere: %v", err)
	}
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Errorf("the connection after a refused Handoff: %v; want it open", err)
	}
}

func TestSameListener(t *testing.T) {
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	unix := func(s string) net.Addr { return &net.UnixAddr{Name: s, Net: "unix"} }
	tests := []struct {
		name     string
		ln, conn net.Addr
		want     bool
	}{
		{"same address", tcp("127.0.0.1:80"), tcp("127.0.0.1:80"), true},
		{"wildcard v4", tcp("0.0.0.0:80"), tcp("10.1.2.3:80"), true},
		{"wildcard v6 takes v4", tcp("[::]:80"), tcp("127.0.0.1:80"), true},
		{"other port", tcp("0.0.0.0:80"), tcp("127.0.0.1:81"), false},
		{"other address", tcp("127.0.0.1:80"), tcp("127.0.0.2:80"), false},
		{"unix path", unix("/run/app.sock"), unix("/run/app.sock"), true},
		{"abstract", unix("@app"), unix("@app"), true},
		{"other path", unix("/run/a.sock"), unix("/run/b.sock"), false},
		{"families differ", tcp("0.0.0.0:80"), unix("/run/a.sock"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameListener(tt.ln, tt.conn); got != tt.want {
				t.Errorf("sameListener(%v, %v) = %v, want %v", tt.ln, tt.conn, got, tt.want)
			}
		})
	}
}

// TestTakeGroupsWithinTheGrant checks how queued Handoff calls become a
// transfer: as many as granted, within the byte bound, and an oversize
// state fails alone.
func TestTakeGroupsWithinTheGrant(t *testing.T) {
	var q handoffQueue
	req := func(state int) *handoffReq {
		return &handoffReq{conn: handoff.Conn{Listener: "web", State: make([]byte, state)}, done: make(chan error, 1)}
	}
	big, rs := req(200), []*handoffReq{req(10), req(10), req(10), req(10), req(10)}
	q.pending = append([]*handoffReq{rs[0], big}, rs[1:]...)
	g := handoff.Grant{MaxFDs: 3, MaxState: 100, MaxBytes: 1 << 20}
	if got := q.take(g); len(got) != 3 || got[0] != rs[0] || got[1] != rs[1] || got[2] != rs[2] {
		t.Errorf("first transfer: %d requests", len(got))
	}
	var tooLarge handoff.StateTooLarge
	if err := <-big.done; !errors.As(err, &tooLarge) || tooLarge.Size != 200 {
		t.Errorf("oversize state: %v", err)
	}
	// Two entries of 6+3+4+10 bytes fit in 46, not three.
	if got := q.take(handoff.Grant{MaxFDs: 3, MaxState: 100, MaxBytes: 46}); len(got) != 2 || len(q.pending) != 0 {
		t.Errorf("second transfer: %d requests, %d left", len(got), len(q.pending))
	}
}
