package steer

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// BenchmarkUDPEcho measures UDP echo round trips on loopback through a
// reuseport group of two sockets, each read by its own goroutine, with
// 64 peers sending one datagram at a time: without a program (the
// kernel's hash, as baton with flows=off and balance=reuseport) and with
// the steering program (flows kept), side by side in one run; then with
// the program and the kernel's BPF statistics on, to report the
// program's own cost per datagram (the statistics slow it a little
// themselves, so the throughput is compared without them); last, with the
// statistics on, a program that only passes each datagram on to the
// kernel's choice: what the statistics' own clock reads and the call of
// any program cost, the floor under the steering program's figure.
//
//	go test ./internal/steer -run - -bench UDPEcho -benchtime 5s -count 5
func BenchmarkUDPEcho(b *testing.B) {
	for _, mode := range []string{"plain", "steered", "steered+stats", "floor+stats"} {
		steered := mode == "steered" || mode == "steered+stats"
		b.Run(mode, func(b *testing.B) {
			var g *Group
			var floor *ebpf.Program
			if mode == "floor+stats" {
				var err error
				if floor, err = passProgram(); err != nil {
					b.Skipf("cannot load a program here: %v", err)
				}
				defer floor.Close()
			}
			if steered {
				var err error
				if g, err = New(Options{}); err != nil {
					b.Skipf("cannot steer here: %v", err)
				}
				defer g.Close()
			}
			first, port := benchSocket(b, 0)
			second, _ := benchSocket(b, port)
			if g != nil {
				if err := g.Attach(first); err != nil {
					b.Fatal(err)
				}
				g.Put(0, first)
				g.Put(1, second)
				g.Serve([]int{0, 1})
			}
			if floor != nil {
				if err := unix.SetsockoptInt(first, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, floor.FD()); err != nil {
					b.Fatal(err)
				}
			}
			if strings.HasSuffix(mode, "+stats") {
				// The statistics cost a little themselves: apart.
				stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
				if err != nil {
					b.Skipf("kernel BPF statistics: %v", err)
				}
				defer stats.Close()
			}
			var done atomic.Bool
			var wg sync.WaitGroup
			for _, fd := range []int{first, second} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					echo(fd, &done)
				}()
			}
			addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
			var before Stats
			if g != nil {
				before, _ = g.Stats(false)
			}
			var floorBefore ebpf.ProgramStats
			if floor != nil {
				if st, err := floor.Stats(); err == nil {
					floorBefore = *st
				}
			}
			b.ResetTimer()
			start := time.Now()
			var sent atomic.Int64
			const peers = 64
			var cw sync.WaitGroup
			per := b.N/peers + 1
			for range peers {
				cw.Add(1)
				go func() {
					defer cw.Done()
					c, err := net.DialUDP("udp", nil, addr)
					if err != nil {
						b.Error(err)
						return
					}
					defer c.Close()
					buf := make([]byte, 64)
					for range per {
						c.Write(buf[:32])
						c.SetReadDeadline(time.Now().Add(time.Second))
						if _, err := c.Read(buf); err == nil {
							sent.Add(1)
						}
					}
				}()
			}
			cw.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			done.Store(true)
			wg.Wait()
			b.ReportMetric(float64(sent.Load())/elapsed.Seconds(), "echoes/s")
			if g != nil {
				after, _ := g.Stats(false)
				if runs := after.Runs - before.Runs; runs > 0 {
					b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "prog-ns/datagram")
				}
			}
			if floor != nil {
				if st, err := floor.Stats(); err == nil && st.RunCount > floorBefore.RunCount {
					b.ReportMetric(float64(st.Runtime-floorBefore.Runtime)/float64(st.RunCount-floorBefore.RunCount), "prog-ns/datagram")
				}
			}
		})
	}
}

// passProgram is the least SK_REUSEPORT program: SK_PASS, leaving the
// choice of socket to the kernel's hash.
func passProgram() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "baton_pass",
		Type:         ebpf.SkReuseport,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
}

// benchSocket is a non-blocking SO_REUSEPORT UDP socket on 127.0.0.1.
func benchSocket(b *testing.B, port int) (int, int) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	return fd, sa.(*unix.SockaddrInet4).Port
}

// echo answers every datagram on fd until done.
func echo(fd int, done *atomic.Bool) {
	buf := make([]byte, 2048)
	for !done.Load() {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		unix.Sendto(fd, buf[:n], 0, from)
	}
}

// TestFlowTableMemory reports what the kernel charges for a flow table
// of 100,000 peers (an LRU hash allocates its entries up front), for
// docs/benchmarks.md.
func TestFlowTableMemory(t *testing.T) {
	g, err := New(Options{Flows: 100_000, Sockets: 16})
	if err != nil {
		t.Skipf("cannot steer here: %v", err)
	}
	defer g.Close()
	n, err := memlock(g.flows.FD())
	if err != nil {
		t.Skip(err)
	}
	t.Logf("flow table of 100,000 peers: %d bytes (%.1f MiB, %d bytes a peer)", n, float64(n)/(1<<20), n/100_000)
	if n > 64<<20 {
		t.Errorf("a flow table of 100,000 peers costs %d bytes; expected well under 64 MiB", n)
	}
}

// memlock reads the memory the kernel charges a BPF object from
// /proc/self/fdinfo.
func memlock(fd int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no memlock in fdinfo %d", fd)
}

// BenchmarkStats: Stats with the flow table walked, holding 100,000
// peers: the figure the comments on Stats and on the status's flows
// (read off the supervisor's loop) give, 11.6 ms on 2 CPUs.
func BenchmarkStats(b *testing.B) {
	g, err := New(Options{Flows: 1 << 17})
	if errors.Is(err, ErrNotSupported) {
		b.Skipf("cannot steer here: %v", err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	const peers = 100_000
	var key [keySize]byte
	for i := range peers {
		key[0], key[1], key[2] = byte(i), byte(i>>8), byte(i>>16)
		if err := g.flows.Update(key, uint64(i%16), ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		st, err := g.Stats(true)
		if err != nil {
			b.Fatal(err)
		}
		if st.Entries != peers {
			b.Fatalf("walked %d entries, want %d", st.Entries, peers)
		}
	}
}
