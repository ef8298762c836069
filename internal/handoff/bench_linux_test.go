package handoff

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/fdpass"
)

// BenchmarkStoreMove moves 2,000 connections (unix socket pairs) per
// iteration from a Sender, through a Store, to an Adopter, all in this
// process: the protocol's cost without the workers' own.
func BenchmarkStoreMove(b *testing.B) {
	const n = 2000
	t := &testing.T{}
	_ = t
	h := newBenchHarness(b)
	a, err := DialAdopter(ctxB(b), h.path, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	h.store.SetWorkers([]Worker{{PID: os.Getpid(), Adopt: true}})
	var pairs [][2]int
	for range n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		pairs = append(pairs, p)
	}
	defer func() {
		for _, p := range pairs {
			unix.Close(p[0])
			unix.Close(p[1])
		}
	}()
	cs := make([]Conn, n)
	for i, p := range pairs {
		cs[i] = Conn{Fd: p[0], Listener: "web", State: []byte("some state of a connection")}
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		s, err := DialSender(ctxB(b), h.path)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			got := 0
			for got < n {
				fds, err := a.Next(ctxB(b))
				if err != nil {
					done <- err
					return
				}
				got += len(fds)
				for _, f := range fds {
					unix.Close(f.Fd)
				}
			}
			done <- nil
		}()
		rest := cs
		for len(rest) > 0 {
			k := min(len(rest), s.Grant().MaxFDs)
			if err := s.Send(ctxB(b), rest[:k]); err != nil {
				b.Fatal(err)
			}
			rest = rest[k:]
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "conns/s")
	_ = fdpass.MaxFDsPerBatch
}
