package inspect

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// BenchmarkInspect measures one kernel view: a TCP listener with 400
// accepted connections that this process (the one worker) holds, so every
// part runs: the accept queue, the port's connections by state, the owner
// scan of the worker's fds, its fd limits, and the host counters. On a
// host with many sockets the port query dominates; see
// BenchmarkPortQuery in internal/sockdiag.
func BenchmarkInspect(b *testing.B) {
	const conns = 400
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ino := inodeOf(b, ln.(*net.TCPListener))
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		held = append(held, c, s)
	}
	input := Input{
		Listeners: []Listener{{Name: "http", Protocol: TCP, Addr: netip.MustParseAddrPort(ln.Addr().String()), Backlog: 4096,
			Sockets: []Socket{{Slot: Shared, Inode: ino}}}},
		Workers: []Worker{{PID: os.Getpid(), Slot: 0, Generation: 1}},
	}
	in := New(Options{})
	defer in.Close()
	if v := in.Inspect(context.Background(), input); v.Workers[0].Connections["ESTAB"] != conns || len(v.Errors) > 0 {
		b.Fatalf("view: %+v", v)
	}
	if ss, err := sockdiag.ReadSockstat(); err == nil {
		b.Logf("host: %d TCP sockets in use, %d in TIME-WAIT (the port query walks them all)", ss["TCP"]["inuse"]+ss["TCP6"]["inuse"], ss["TCP"]["tw"])
	}
	b.ReportAllocs()
	for b.Loop() {
		in.Inspect(context.Background(), input)
	}
}
