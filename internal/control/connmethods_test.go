package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// connServer serves an abstract socket where "keep" is a conn method: its
// handler answers on the connection, then echoes lines; "plain" is
// answered as usual.
func connServer(t *testing.T, requestTimeout time.Duration) (string, chan error) {
	t.Helper()
	name := fmt.Sprintf("@baton-control-test/%d/%s", os.Getpid(), t.Name())
	s, err := ListenAbstract(name, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	s.requestTimeout = requestTimeout
	s.ConnMethods("keep")
	ended := make(chan error, 1)
	go s.Serve(func(ctx context.Context, p Peer, r Request) (any, error) {
		switch r.Method {
		case "plain":
			return map[string]int{"pid": p.PID}, nil
		case "keep":
			c := ConnFrom(ctx)
			fmt.Fprintf(c, `{"ok":true,"result":"go on"}`+"\n")
			// Outlive the request timeout: no deadline is left behind.
			time.Sleep(2 * requestTimeout)
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := fmt.Fprintf(c, "echo %s\n", sc.Text()); err != nil {
					ended <- err
					return Hijacked, nil
				}
			}
			ended <- sc.Err()
			return Hijacked, nil
		}
		return nil, errors.New("unknown method")
	})
	t.Cleanup(func() { s.Close() })
	return name, ended
}

func TestConnMethodKeepsTheConnection(t *testing.T) {
	path, ended := connServer(t, 100*time.Millisecond)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprintf(c, `{"method":"keep"}`+"\n")
	line, _ := r.ReadString('\n')
	var reply Reply
	if err := json.Unmarshal([]byte(line), &reply); err != nil || !reply.OK || string(reply.Result) != `"go on"` {
		t.Fatalf("reply %q, %v", line, err)
	}
	for i := range 3 {
		fmt.Fprintf(c, "line %d\n", i)
		if got, err := r.ReadString('\n'); err != nil || got != fmt.Sprintf("echo line %d\n", i) {
			t.Fatalf("after the reply: %q, %v", got, err)
		}
	}
	c.(*net.UnixConn).CloseWrite()
	if got, err := r.ReadString('\n'); err == nil {
		t.Errorf("the connection stayed open after the handler returned; read %q", got)
	}
	if err := <-ended; err != nil {
		t.Errorf("handler: %v", err)
	}
}

func TestConnMethodRefusesBytesAfterTheRequest(t *testing.T) {
	path, _ := connServer(t, time.Second)
	got := raw(t, path, []byte(`{"method":"keep"}`+"\nBFDB..."), false)
	if !strings.Contains(got, "7 bytes followed the keep request before its reply; send nothing more until baton answers") {
		t.Errorf("reply to a request with bytes after it: %q", got)
	}
	got = raw(t, path, []byte(`{"method":"plain"}`+"\n"), false)
	if got != fmt.Sprintf(`{"ok":true,"result":{"pid":%d}}`+"\n", os.Getpid()) {
		t.Errorf("plain request: %q", got)
	}
}
