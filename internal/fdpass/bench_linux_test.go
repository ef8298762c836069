package fdpass

import (
	"context"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkTransfer moves transfers of n descriptors over a stream
// socketpair between two goroutines, and reports descriptors per second.
// The receiver closes what it got after each transfer. The descriptors
// are a pool of 2048 sockets sent again and again (each arrives as a new
// descriptor): a sender and a receiver in one process must fit under the
// hard RLIMIT_NOFILE (20000 on the test machine), so the largest single
// transfer is 15000; "100000" moves 100,000 in ten transfers of 10,000.
func BenchmarkTransfer(b *testing.B) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	pool := sockets(b, 2048)
	tests := []struct {
		per, transfers, meta int
	}{
		{per: 1000, transfers: 1},
		{per: 10_000, transfers: 1},
		{per: 15_000, transfers: 1},
		{per: 10_000, transfers: 10},
		{per: 10_000, transfers: 1, meta: 1024},
	}
	for _, tt := range tests {
		n := tt.per * tt.transfers
		if uint64(tt.per+len(pool)+100) > lim.Cur {
			b.Logf("skipping %d per transfer: RLIMIT_NOFILE %d is too low", tt.per, lim.Cur)
			continue
		}
		b.Run(fmt.Sprintf("fds=%d/per=%d/meta=%d", n, tt.per, tt.meta), func(b *testing.B) {
			fds := make([]FD, tt.per)
			for i := range fds {
				fds[i] = FD{Fd: pool[i%len(pool)], Name: "http", Kind: "conn", Meta: make([]byte, tt.meta)}
			}
			a, c := pair(b, unix.SOCK_STREAM)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errs := make(chan error, 1)
			go func() {
				for {
					got, err := Recv(ctx, c, Limits{MaxFDs: tt.per})
					if err != nil {
						errs <- err
						return
					}
					closeFDs(got)
				}
			}()
			b.ResetTimer()
			for range b.N {
				for range tt.transfers {
					if err := Send(ctx, a, fds); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "fds/s")
			b.ReportMetric(0, "ns/op")
			cancel()
			<-errs
		})
	}
}
