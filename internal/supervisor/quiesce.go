package supervisor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/sockdiag"
)

// quiesceThenSignal is the freeze-and-check drain (DrainWhenIdle, drain.go:
// --stop-when-idle, or a worker that would die on its stop signal): it
// waits, up to wait, for a moment when the worker's process group
// holds no connection on baton's TCP listeners, checked while the group
// is stopped (SIGSTOP) so that it cannot accept one in between; then it
// sends the stop signal and lets the group continue. A program that dies
// on the stop signal (python3 -m http.server, most programs that know
// nothing of draining) therefore never takes a request it accepted with
// it: the connections still queued stay in the shared socket for the next
// generation. Past the deadline the stop signal goes anyway. It runs on
// its own goroutine.
func (s *Supervisor) quiesceThenSignal(w *worker, ports []uint16, wait time.Duration) {
	deadline := time.Now().Add(wait)
	conn, err := sockdiag.Dial()
	if err != nil {
		s.log.Warn("cannot watch the worker's connections; sending the stop signal now", w.attrs("err", err)...)
		s.signalStop(w)
		return
	}
	defer conn.Close()
	for tries := 1; ; tries++ {
		if err := w.proc.SignalGroup(syscall.SIGSTOP); err != nil {
			return // it is gone
		}
		busy, err := holdsConnections(conn, processGroup(w.pid), ports)
		if err == nil && !busy || time.Now().After(deadline) {
			if err != nil {
				s.log.Warn("cannot tell whether the worker holds connections", w.attrs("err", err)...)
			}
			if busy {
				s.log.Warn("worker still held connections when its wait for an idle moment ran out; sending the stop signal", w.attrs("waited", wait)...)
			} else {
				s.log.Debug("worker idle; sending the stop signal", w.attrs("tries", tries)...)
			}
			// A fatal signal kills a stopped process at once; a handled
			// one is delivered when the group continues.
			s.signalStop(w)
			w.proc.SignalGroup(syscall.SIGCONT)
			return
		}
		w.proc.SignalGroup(syscall.SIGCONT)
		time.Sleep(5 * time.Millisecond)
	}
}

// signalStop sends the worker its stop signal, then SIGCONT as systemd
// does: a worker someone stopped (SIGSTOP, a debugger's detach, a frozen
// terminal) would otherwise keep the signal pending and the connections
// it accepted unanswered until the drain deadline kills it; continued, it
// drains them.
func (s *Supervisor) signalStop(w *worker) {
	if err := w.proc.Signal(w.gen.cfg.StopSignal); err != nil {
		s.log.Debug("stop signal not delivered", w.attrs("err", err)...)
		return
	}
	w.proc.Signal(syscall.SIGCONT)
}

// tcpPorts lists the ports of the generation's TCP listeners.
func (g *generation) tcpPorts() []uint16 {
	var ports []uint16
	for _, l := range g.listeners {
		if l.Spec.IsInet() && l.Spec.Kind == listener.Stream {
			if socks := l.Sockets(); len(socks) > 0 {
				ports = append(ports, uint16(socks[0].Port()))
			}
		}
	}
	return ports
}

// holdsConnections reports whether any of pids holds a TCP connection
// whose local port is one of ports.
func holdsConnections(conn *sockdiag.Conn, pids []int, ports []uint16) (bool, error) {
	owned, err := sockdiag.Owners(pids...)
	if err != nil {
		return false, err
	}
	for _, p := range ports {
		socks, err := conn.Query(sockdiag.Query{LocalPort: p, States: sockdiag.AllStates &^ sockdiag.States(sockdiag.Listen)})
		if err != nil {
			return false, err
		}
		for _, sk := range socks {
			if _, ok := owned[sk.Inode]; ok && sk.Inode != 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

// processGroup lists the processes of process group pgid (a worker and
// everything it forked that stayed in its group).
func processGroup(pgid int) []int {
	pids := []int{pgid}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		// state ppid pgrp ...
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != pgid {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
