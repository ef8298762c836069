package handoff

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// runHelper runs the test binary as a helper process.
func runHelper(mode string) int {
	var err error
	switch mode {
	case "sender":
		err = senderHelper()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// senderHelper accepts HELPER_N connections on fd 3, hands the first
// half off to the store at HELPER_PATH in transfers of HELPER_BATCH,
// saying "stored K" after each, then waits to be killed.
func senderHelper() error {
	n, _ := strconv.Atoi(os.Getenv("HELPER_N"))
	batch, _ := strconv.Atoi(os.Getenv("HELPER_BATCH"))
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return err
	}
	var cs []*net.TCPConn
	for range n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		cs = append(cs, c.(*net.TCPConn))
	}
	ctx := context.Background()
	s, err := DialSender(ctx, os.Getenv("HELPER_PATH"))
	if err != nil {
		return err
	}
	for stored := 0; stored < n/2; stored += batch {
		var out []Conn
		for _, c := range cs[stored : stored+batch] {
			raw, _ := c.SyscallConn()
			raw.Control(func(fd uintptr) {
				out = append(out, Conn{Fd: int(fd), Listener: "web", State: []byte(c.RemoteAddr().String())})
			})
		}
		if err := s.Send(ctx, out); err != nil {
			return err
		}
		for _, c := range cs[stored : stored+batch] {
			c.Close()
		}
		fmt.Printf("stored %d\n", stored+batch)
	}
	select {} // until killed, the rest still open
}

// TestSenderKilled kills a worker process halfway through handing off
// its connections: what it handed off is adopted, the rest close with it
// (their clients read EOF, not a hang), and the store leaks nothing.
func TestSenderKilled(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n, batch = 200, 20
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=sender", "HELPER_N="+strconv.Itoa(n), "HELPER_BATCH="+strconv.Itoa(batch), "HELPER_PATH="+h.path)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	addr := ln.Addr().(*net.TCPAddr)
	var clients []*net.TCPConn
	for range n {
		c, err := net.DialTCP("tcp", nil, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	lines := bufio.NewScanner(out)
	for lines.Scan() && lines.Text() != fmt.Sprintf("stored %d", n/2) {
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, out)
	cmd.Wait()

	st := h.waitStats("the sender gone", func(st Stats) bool { return st.Senders == 0 })
	if st.Stored != n/2 || st.Held != n/2 {
		t.Fatalf("after the kill: %+v; want %d stored and held", st, n/2)
	}
	// Which clients did the helper hand off? The state says.
	a := h.adopter(0)
	h.allow()
	got := adoptN(t, a, n/2)
	handed := map[string]bool{}
	for port, f := range got {
		if string(f.Meta) != "127.0.0.1:"+strconv.Itoa(port) {
			t.Errorf("state %q for the connection from port %d", f.Meta, port)
		}
		handed[string(f.Meta)] = true
	}
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if handed[c.LocalAddr().String()] {
			f := got[localPort(c)]
			conn := fileConn(t, f.Fd)
			delete(got, localPort(c))
			fmt.Fprintf(conn, "adopted\n")
			conn.Close()
			if b, err := io.ReadAll(c); err != nil || string(b) != "adopted\n" {
				t.Errorf("handed-off client %s: %q, %v", c.LocalAddr(), b, err)
			}
			continue
		}
		if b, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") || len(b) != 0 {
			t.Errorf("client %s the killed worker kept: read %q, %v; want EOF", c.LocalAddr(), b, err)
		}
	}
}
