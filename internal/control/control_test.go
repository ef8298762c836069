package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func serve(t *testing.T, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(path, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(h)
	t.Cleanup(func() { s.Close() })
	return path
}

func echo(ctx context.Context, p Peer, r Request) (any, error) {
	switch r.Method {
	case "echo":
		var v map[string]any
		if err := DecodeParams(r.Params, &v); err != nil {
			return nil, err
		}
		return map[string]any{"params": v, "pid": p.PID}, nil
	case "fail":
		return nil, errors.New("it failed: do something else")
	case "wait":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("unknown method %q", r.Method)
}

func call(t *testing.T, path, method string, params any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Call(ctx, path, method, params)
}

func TestCallRoundTrip(t *testing.T) {
	path := serve(t, echo)
	raw, err := call(t, path, "echo", map[string]int{"n": 7})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Params map[string]int
		PID    int
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("reply %s: %v", raw, err)
	}
	if got.Params["n"] != 7 || got.PID != os.Getpid() {
		t.Errorf("got %+v", got)
	}
	_, err = call(t, path, "fail", nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Msg != "it failed: do something else" {
		t.Errorf("remote error: %v", err)
	}
}

func TestConcurrentClients(t *testing.T) {
	path := serve(t, echo)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := call(t, path, "echo", nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// raw sends bytes and returns the reply line.
func raw(t *testing.T, path string, req []byte, closeWrite bool) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	c.Write(req)
	if closeWrite {
		c.(*net.UnixConn).CloseWrite()
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestBadRequests(t *testing.T) {
	path := serve(t, echo)
	tests := []struct {
		name  string
		req   []byte
		close bool
		want  string
	}{
		{"not json", []byte("reload please\n"), false, "not valid JSON"},
		{"no method", []byte(`{"params":{}}` + "\n"), false, `no "method"`},
		{"unknown field", []byte(`{"method":"echo","verbose":true}` + "\n"), false, `unknown field "verbose"`},
		{"two objects", []byte(`{"method":"echo"}{"method":"echo"}` + "\n"), false, "data after the JSON object"},
		{"oversize", append([]byte(`{"method":"`+strings.Repeat("a", MaxRequest+10)), '\n'), false, "over 65536 bytes"},
		{"no newline", []byte(`{"method":"echo"}`), true, "closed before a complete request"},
		{"unknown method", []byte(`{"method":"nope"}` + "\n"), false, `unknown method \"nope\"`},
		{"bad params", []byte(`{"method":"echo","params":[1]}` + "\n"), false, "params:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := raw(t, path, tt.req, tt.close)
			var r Reply
			if err := json.Unmarshal([]byte(got), &r); err != nil {
				t.Fatalf("reply %q is not JSON: %v", got, err)
			}
			if r.OK || !strings.Contains(r.Error, strings.ReplaceAll(tt.want, `\"`, `"`)) {
				t.Errorf("reply %+v, want an error containing %q", r, tt.want)
			}
		})
	}
}

func TestSlowClientHitsDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(path, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	s.requestTimeout = 200 * time.Millisecond
	go s.Serve(echo)
	defer s.Close()
	got := raw(t, path, []byte(`{"method":`), false)
	if !strings.Contains(got, "no complete request within 200ms") {
		t.Errorf("reply to a client that never finishes: %q", got)
	}
	// The server still answers others.
	if _, err := call(t, path, "echo", nil); err != nil {
		t.Error(err)
	}
}

func TestClientHangupCancelsWait(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	path := serve(t, func(ctx context.Context, p Peer, r Request) (any, error) {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return nil, ctx.Err()
	})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"method":"wait"}` + "\n"))
	// The client goes away while the handler waits, not before it runs.
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler never got the request")
	}
	c.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's context was not cancelled when the client went away")
	}
}

func TestListenRefusesLiveAndReplacesStale(t *testing.T) {
	path := serve(t, echo)
	_, err := Listen(path, quietLog())
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("second Listen on a live socket: %v", err)
	}

	stale := filepath.Join(t.TempDir(), "stale.sock")
	fd, _ := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	syscall.Bind(fd, &syscall.SockaddrUnix{Name: stale})
	syscall.Close(fd)
	s, err := Listen(stale, quietLog())
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer s.Close()
	fi, _ := os.Stat(stale)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestCallErrorsSayWhatToDo(t *testing.T) {
	_, err := call(t, filepath.Join(t.TempDir(), "none.sock"), "status", nil)
	if err == nil || !strings.Contains(err.Error(), "no baton is running") {
		t.Errorf("no socket: %v", err)
	}
}

// TestOtherUserIsRefused connects from a child running as uid 65534.
func TestOtherUserIsRefused(t *testing.T) {
	if os.Getenv("CONTROL_TEST_CHILD") != "" {
		_, err := Call(context.Background(), os.Getenv("CONTROL_TEST_CHILD"), "echo", nil)
		fmt.Print(err)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "ctl.sock")
	s, err := Listen(path, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.Serve(echo)
	os.Chmod(path, 0o666) // let the kernel pass it; baton's own check must refuse
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^TestOtherUserIsRefused$")
	cmd.Env = append(os.Environ(), "CONTROL_TEST_CHILD="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("cannot run the test binary as uid 65534 here: %v %s", err, out)
	}
	if !strings.Contains(string(out), "permission denied: uid 65534 may not control this baton") {
		t.Errorf("client of another uid got %q", out)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"method":"status"}`, `{"method":"reload","params":{"wait":false}}`, `{}`, `[]`, `{"method":1}`, "\x00\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err == nil && req.Method == "" {
			t.Fatal("accepted a request without a method")
		}
	})
}
