package supervisor

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/inspect"
)

// KernelStatus returns a snapshot with the kernel's view of its listeners
// and workers (Status.Kernel) when Options.Inspector is set. The snapshot
// is taken on the loop, which only copies its own state; the kernel is
// asked afterwards, on the caller's goroutine, so netlink dumps and /proc
// scans never hold up the state machine. It returns false if baton has
// finished.
func (s *Supervisor) KernelStatus(ctx context.Context) (Status, bool) {
	st, ok := s.Status()
	if ok && s.opts.Inspector != nil {
		st.Kernel = s.opts.Inspector.Inspect(ctx, KernelInput(st))
		// Counted again once the inspector holds its netlink socket, so
		// that the count is the same from one request to the next.
		st.Process.FDs, _ = handoff.CountFDs()
		st.Health = api.HealthOf(&st)
	}
	return st, ok
}

// WatchKernel asks for the kernel's view every interval until baton has
// finished, so that its warnings reach the log when they first appear
// even when nobody asks for the status. It does nothing without
// Options.Inspector. Run it on its own goroutine.
func (s *Supervisor) WatchKernel(every time.Duration) {
	if s.opts.Inspector == nil || every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), every)
			s.KernelStatus(ctx)
			cancel()
		}
	}
}

// KernelInput is what the inspector needs from a snapshot: each listener
// with its sockets' inodes, each live worker, the serving generation's
// slots and the command.
func KernelInput(st Status) inspect.Input {
	in := inspect.Input{Command: st.Command}
	captured := map[string]bool{}
	for _, w := range st.Workers {
		for _, c := range w.Captures {
			captured[c.Listener] = true
		}
	}
	for _, l := range st.Listeners {
		scheme, _, _ := strings.Cut(l.URL, "://")
		li := inspect.Listener{Name: l.Name, Backlog: l.Backlog, Sockets: listenerSockets(l), Captured: captured[l.Name]}
		switch strings.TrimRight(scheme, "46") {
		case "tcp":
			li.Protocol = inspect.TCP
		case "udp":
			li.Protocol = inspect.UDP
		case "unixgram":
			li.Protocol = inspect.UnixGram
		default:
			li.Protocol = inspect.Unix
		}
		if li.Protocol == inspect.TCP || li.Protocol == inspect.UDP {
			li.Addr, _ = netip.ParseAddrPort(l.Address)
		}
		in.Listeners = append(in.Listeners, li)
	}
	for _, w := range st.Workers {
		in.Workers = append(in.Workers, inspect.Worker{PID: w.PID, Slot: w.Slot, Generation: w.Generation, State: string(w.State), Started: w.Started})
	}
	for _, sl := range st.SlotStates {
		in.Slots = append(in.Slots, inspect.Slot{
			Slot: sl.Slot, State: sl.State, PID: sl.PID, Restarts: sl.Restarts,
			Backoff: time.Duration(sl.Backoff), NextIn: time.Duration(sl.NextIn),
			LastError: sl.LastError, LastErrorTime: sl.LastErrorTime,
		})
	}
	return in
}

// listenerSockets lists the sockets of a listener: the one every worker
// shares, or one SO_REUSEPORT socket per slot.
func listenerSockets(l ListenerStatus) []inspect.Socket {
	if len(l.Sockets) == 0 {
		return []inspect.Socket{{Slot: inspect.Shared, Inode: l.Inode}}
	}
	socks := make([]inspect.Socket, 0, len(l.Sockets))
	for _, s := range l.Sockets {
		slot := s.Slot
		if slot < 0 {
			slot = inspect.Shared
		}
		socks = append(socks, inspect.Socket{Slot: slot, Inode: s.Inode})
	}
	return socks
}
