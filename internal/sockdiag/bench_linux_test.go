package sockdiag

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkPortQuery measures what `baton status` asks for one listener —
// connections by state and the accept queue of one port — on a host
// crowded with established loopback connections, beside
// `ss -tan '( sport = :PORT )'` in the same run:
//
//	go test -run '^$' -bench BenchmarkPortQuery -benchtime 50x ./internal/sockdiag/
//
// The crowd is SOCKDIAG_BENCH_CONNS connections (default 50,000, that is
// 100,000 sockets) held by helper processes of at most 9,000 connections
// each, both ends in one process, so each stays under a hard
// RLIMIT_NOFILE of 20,000. The port under test has 300 established
// connections. Helpers reset their connections when they exit, leaving no
// TIME-WAIT behind.
func BenchmarkPortQuery(b *testing.B) {
	total := 50_000
	if s := os.Getenv("SOCKDIAG_BENCH_CONNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			b.Fatalf("SOCKDIAG_BENCH_CONNS=%q: want a number of connections", s)
		}
		total = n
	}
	const perHelper, onPort = 9_000, 300

	start := time.Now()
	for left := total - onPort; left > 0; left -= perHelper {
		startHelper(b, "hold", strconv.Itoa(min(left, perHelper)))
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	type acceptResult struct {
		conns []net.Conn
		err   error
	}
	accepted := make(chan acceptResult, 1)
	go func() {
		var r acceptResult
		for range onPort {
			c, err := ln.Accept()
			if err != nil {
				r.err = err
				break
			}
			c.(*net.TCPConn).SetLinger(0)
			r.conns = append(r.conns, c)
		}
		accepted <- r
	}()
	for range onPort {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		c.(*net.TCPConn).SetLinger(0)
		b.Cleanup(func() { c.Close() })
	}
	r := <-accepted
	for _, c := range r.conns {
		b.Cleanup(func() { c.Close() })
	}
	if r.err != nil {
		b.Fatal(r.err)
	}

	c, err := Dial()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	q := Query{LocalPort: port}
	socks, err := c.Query(q)
	if err != nil {
		b.Fatal(err)
	}
	if n := CountByState(socks); n[Listen] != 1 || n[Established] != onPort {
		b.Fatalf("port %d: %v, want 1 LISTEN and %d ESTAB", port, n, onPort)
	}
	all, err := c.Query(Query{States: States(Established)})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("setup %v: %d established TCP sockets on the host, %d sockets on port %d",
		time.Since(start).Round(time.Millisecond), len(all), len(socks), port)

	// The answer baton wants: counts by state and the listener's queue.
	portQuery := func(c *Conn) (map[State]int, Queue) {
		socks, err := c.Query(q)
		if err != nil {
			b.Fatal(err)
		}
		var queue Queue
		for _, s := range socks {
			if s.State == Listen {
				queue = Queue{State: s.State, RecvQ: s.RecvQ, SendQ: s.SendQ}
			}
		}
		return CountByState(socks), queue
	}

	b.Run("sockdiag", func(b *testing.B) {
		for b.Loop() {
			portQuery(c)
		}
	})
	b.Run("sockdiag-ipv4", func(b *testing.B) {
		// baton knows its listener's family: one walk of the kernel's
		// connection table instead of one per family.
		q := q
		q.Family = unix.AF_INET
		for b.Loop() {
			socks, err := c.Query(q)
			if err != nil {
				b.Fatal(err)
			}
			CountByState(socks)
		}
	})
	b.Run("listenqueues", func(b *testing.B) {
		// The listener's queue alone, by inode: only the kernel's table
		// of listening sockets is walked.
		_, ino := connFD(b, ln.(*net.TCPListener))
		for b.Loop() {
			q, err := c.ListenQueues(ino)
			if err != nil {
				b.Fatal(err)
			}
			if q[ino].State != Listen {
				b.Fatalf("inode %d: %+v", ino, q)
			}
		}
	})
	b.Run("sockdiag-dial", func(b *testing.B) {
		// A fresh netlink socket each time, as a one-shot `baton status`.
		for b.Loop() {
			c, err := Dial()
			if err != nil {
				b.Fatal(err)
			}
			portQuery(c)
			c.Close()
		}
	})
	b.Run("sockdiag-unfiltered", func(b *testing.B) {
		// Without the bytecode filter: every socket crosses into user
		// space and is filtered there. What the filter saves.
		for b.Loop() {
			all, err := c.Query(Query{})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for _, s := range all {
				if s.Local.Port() == port {
					n++
				}
			}
			if n != onPort+1 {
				b.Fatalf("%d sockets on port %d, want %d", n, port, onPort+1)
			}
		}
	})
	b.Run("ss", func(b *testing.B) {
		if ssPath == "" {
			b.Skip("ss (iproute2) is not installed: nothing to compare with")
		}
		filter := fmt.Sprintf("( sport = :%d )", port)
		for b.Loop() {
			out, err := exec.Command(ssPath, "-tan", filter).Output()
			if err != nil {
				b.Fatal(err)
			}
			if len(out) == 0 {
				b.Fatal("ss printed nothing")
			}
		}
	})
}
