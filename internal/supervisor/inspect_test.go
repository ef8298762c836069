package supervisor

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/inspect"
)

func TestKernelInput(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	st := Status{
		Listeners: []ListenerStatus{
			{Name: "http", URL: "tcp://127.0.0.1:0?backlog=64", Kind: "stream", Address: "127.0.0.1:41000", Port: 41000, Backlog: 64, Inode: 11},
			{Name: "v6", URL: "tcp6://[::]:8080?balance=reuseport", Kind: "stream", Balance: "reuseport", Address: "[::]:8080", Port: 8080, Backlog: 4096, Inode: 12,
				Sockets: []SocketStatus{{Slot: 0, Inode: 12, Fd: 7}, {Slot: 1, Inode: 16, Fd: 8}}},
			{Name: "dns", URL: "udp4://0.0.0.0:53", Kind: "datagram", Address: "0.0.0.0:53", Port: 53, Inode: 13, Sockets: []SocketStatus{{Slot: -1, Inode: 13, Fd: 9}}},
			{Name: "admin", URL: "unix:///run/a.sock", Kind: "stream", Address: "/run/a.sock", Backlog: 128, Inode: 14},
			{Name: "log", URL: "unixgram://@log", Kind: "datagram", Address: "@log", Inode: 15},
		},
		Workers: []WorkerStatus{
			{Slot: 1, Generation: 3, PID: 77, State: Draining},
			{Slot: 0, Generation: 4, PID: 78, State: Ready, Started: started, Captures: []CaptureStatus{{Listener: "admin"}}},
		},
		SlotStates: []SlotStatus{
			{Slot: 0, State: SlotUp, PID: 78},
			{Slot: 1, State: SlotBackoff, Restarts: 4, Backoff: Duration(800 * time.Millisecond), NextIn: Duration(300 * time.Millisecond),
				LastError: "worker pid 79 exited with status 1", LastErrorTime: started},
		},
		Command: []string{"./server", "-p", "8080"},
	}
	shared := func(ino uint64) []inspect.Socket { return []inspect.Socket{{Slot: inspect.Shared, Inode: ino}} }
	want := inspect.Input{
		Listeners: []inspect.Listener{
			{Name: "http", Protocol: inspect.TCP, Addr: netip.MustParseAddrPort("127.0.0.1:41000"), Backlog: 64, Sockets: shared(11)},
			{Name: "v6", Protocol: inspect.TCP, Addr: netip.MustParseAddrPort("[::]:8080"), Backlog: 4096, Sockets: []inspect.Socket{{Slot: 0, Inode: 12}, {Slot: 1, Inode: 16}}},
			{Name: "dns", Protocol: inspect.UDP, Addr: netip.MustParseAddrPort("0.0.0.0:53"), Sockets: shared(13)},
			{Name: "admin", Protocol: inspect.Unix, Backlog: 128, Sockets: shared(14), Captured: true},
			{Name: "log", Protocol: inspect.UnixGram, Sockets: shared(15)},
		},
		Workers: []inspect.Worker{
			{PID: 77, Slot: 1, Generation: 3, State: "draining"},
			{PID: 78, Slot: 0, Generation: 4, State: "ready", Started: started},
		},
		Slots: []inspect.Slot{
			{Slot: 0, State: "up", PID: 78},
			{Slot: 1, State: "backoff", Restarts: 4, Backoff: 800 * time.Millisecond, NextIn: 300 * time.Millisecond,
				LastError: "worker pid 79 exited with status 1", LastErrorTime: started},
		},
		Command: []string{"./server", "-p", "8080"},
	}
	if diff := cmp.Diff(want, KernelInput(st), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("KernelInput (-want +got):\n%s", diff)
	}
}
