package takeover

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/fdpass"
)

// giver serves one takeover request on a unix socket, as baton's control
// socket would, and reports Give's outcome.
func giver(t *testing.T, socks []Socket) (string, chan error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan error, 1)
	go func() {
		err := serveOne(ln, socks)
		ln.Close()
		out <- err // after every descriptor of this side is closed
	}()
	return path, out
}

func serveOne(ln *net.UnixListener, socks []Socket) error {
	c, err := ln.AcceptUnix()
	if err != nil {
		return err
	}
	defer c.Close()
	var req struct {
		Method string
		Params api.TakeoverParams
	}
	if err := readLine(context.Background(), c, &req); err != nil || req.Method != "takeover" {
		return errors.New("bad request")
	}
	within, err := req.Params.CommitWithin()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = Give(ctx, c, socks, within, func(fdpass.Cred) error { return nil })
	return err
}

func listeners(t *testing.T, n int) []Socket {
	t.Helper()
	var socks []Socket
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, _ := ln.(*net.TCPListener).File()
		ln.Close()
		t.Cleanup(func() { f.Close() })
		socks = append(socks, Socket{Name: "l", URL: "tcp://" + ln.Addr().String(), Slot: -1, Fd: int(f.Fd())})
	}
	return socks
}

func TestTakeCommit(t *testing.T) {
	before := batontest.NumFDs(t)
	socks := listeners(t, 3)
	path, gave := giver(t, socks)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	taken, err := Take(ctx, path, Window{Commit: 10 * time.Second, GiveUp: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if taken.OldPID != os.Getpid() || len(taken.Sockets) != 3 {
		t.Fatalf("taken: pid %d, %d sockets", taken.OldPID, len(taken.Sockets))
	}
	for i, s := range taken.Sockets {
		var a, b unix.Stat_t
		unix.Fstat(s.Fd, &a)
		unix.Fstat(socks[i].Fd, &b)
		if a.Ino != b.Ino || s.URL != socks[i].URL {
			t.Errorf("socket %d: inode %d url %s; sent inode %d url %s", i, a.Ino, s.URL, b.Ino, socks[i].URL)
		}
		unix.Close(s.Fd)
		taken.Sockets[i].Fd = -1
	}
	if err := taken.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-gave; err != nil {
		t.Errorf("Give after a commit: %v", err)
	}
	for _, s := range socks {
		unix.Close(s.Fd)
	}
	if after := batontest.NumFDs(t); after > before {
		t.Errorf("%d descriptors before, %d after", before, after)
	}
}

// A new instance that takes the sockets and then neither commits nor
// aborts: the old one gives up once the time it asked for has passed.
func TestTakeStallsPastItsDeadline(t *testing.T) {
	socks := listeners(t, 1)
	path, gave := giver(t, socks)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	taken, err := Take(ctx, path, Window{Commit: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.conn.Close()
	for i, s := range taken.Sockets {
		unix.Close(s.Fd)
		taken.Sockets[i].Fd = -1
	}
	select {
	case err := <-gave:
		if !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), "did not commit within 300ms") {
			t.Errorf("Give past the deadline: %v; want ErrAborted naming it", err)
		}
	case <-ctx.Done():
		t.Fatal("Give still waits for a verdict 20s after a 300ms deadline")
	}
	if err := taken.Commit(ctx); err == nil {
		t.Error("a commit after the old instance gave up was confirmed")
	}
}

func TestTakeAbortAndVanish(t *testing.T) {
	for _, how := range []string{"abort", "vanish"} {
		t.Run(how, func(t *testing.T) {
			socks := listeners(t, 2)
			before := batontest.NumFDs(t)
			path, gave := giver(t, socks)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			taken, err := Take(ctx, path, Window{Commit: 10 * time.Second, GiveUp: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if how == "vanish" {
				for i, s := range taken.Sockets {
					unix.Close(s.Fd)
					taken.Sockets[i].Fd = -1
				}
			}
			if how == "abort" { // which closes the sockets not taken
				taken.Abort("the new configuration does not match")
			} else {
				taken.conn.Close()
			}
			err = <-gave
			if !errors.Is(err, ErrAborted) {
				t.Errorf("Give after the new instance went away (%s): %v, want ErrAborted", how, err)
			}
			if how == "abort" && err != nil && !strings.Contains(err.Error(), "does not match") {
				t.Errorf("the reason did not reach the old instance: %v", err)
			}
			if after := batontest.NumFDs(t); after > before {
				t.Errorf("%d descriptors before, %d after", before, after)
			}
		})
	}
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte(`{"verdict":"commit","pid":12}` + "\n"))
	f.Add([]byte("{\n"))
	f.Add([]byte("\x00\xff\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, c := net.Pipe()
		defer a.Close()
		go func() { c.Write(b); c.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var v verdict
		readLine(ctx, a, &v)
	})
}
