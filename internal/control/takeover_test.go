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

// takeoverServer serves ServeConns on an abstract socket: "keep" is
// answered and then taken over by an echo of lines; "plain" is answered
// like a Handler's reply.
func takeoverServer(t *testing.T, requestTimeout time.Duration) (string, chan error) {
	t.Helper()
	name := fmt.Sprintf("@baton-control-test/%d/%s", os.Getpid(), t.Name())
	s, err := ListenAbstract(name, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	s.requestTimeout = requestTimeout
	ended := make(chan error, 1)
	go s.ServeConns(func(ctx context.Context, p Peer, r Request) (any, Takeover, error) {
		switch r.Method {
		case "plain":
			return map[string]int{"pid": p.PID}, nil, nil
		case "keep":
			return "go on", func(ctx context.Context, c *net.UnixConn) {
				// Outlive the request timeout: the deadlines were cleared.
				time.Sleep(2 * requestTimeout)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "echo %s\n", sc.Text()); err != nil {
						ended <- err
						return
					}
				}
				ended <- sc.Err()
			}, nil
		}
		return nil, nil, errors.New("unknown method")
	})
	t.Cleanup(func() { s.Close() })
	return name, ended
}

func TestServeConnsTakeover(t *testing.T) {
	path, ended := takeoverServer(t, 100*time.Millisecond)
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
			t.Fatalf("after the takeover: %q, %v", got, err)
		}
	}
	c.(*net.UnixConn).CloseWrite()
	if _, err := r.ReadString('\n'); err == nil {
		t.Error("the connection stayed open after the takeover returned")
	}
	if err := <-ended; err != nil {
		t.Errorf("takeover: %v", err)
	}
}

func TestServeConnsRefusesBytesAfterTheRequest(t *testing.T) {
	path, _ := takeoverServer(t, time.Second)
	got := raw(t, path, []byte(`{"method":"keep"}`+"\nBFDB..."), false)
	if !strings.Contains(got, "7 bytes followed the keep request before its reply; send nothing more until baton answers") {
		t.Errorf("reply to a request with bytes after it: %q", got)
	}
	// A plain request is answered as by Serve, and the connection closed.
	got = raw(t, path, []byte(`{"method":"plain"}`+"\n"), false)
	if got != fmt.Sprintf(`{"ok":true,"result":{"pid":%d}}`+"\n", os.Getpid()) {
		t.Errorf("plain request: %q", got)
	}
}
