package supervisor

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/baton-dev/baton/internal/control"
)

// This file decides, off the loop, who may be heard on the notify socket
// and the worker socket. Both are abstract unix sockets: any local process
// can reach them (they are listed in /proc/net/unix), so a process that
// does not descend from baton is refused before it costs the loop
// anything, and one worker's process tree can hold at most
// maxWorkerConns connections on the worker socket.

// maxWorkerConns bounds the worker socket connections one worker and its
// descendants hold at once. baton's library opens at most three (two
// handoff senders and an adopt subscription).
const maxWorkerConns = 64

// lineage finds which child of baton a process descends from. It reads
// /proc, remembers refusals for a short while (a flood from one process
// costs a map lookup), and is safe for concurrent use.
type lineage struct {
	self int

	mu      sync.Mutex
	cache   map[int]lineageEntry
	conns   map[int]int      // worker socket connections open, by child of baton
	workers map[int]struct{} // the live workers' pids, as the loop last said
}

// lineageEntry is a remembered refusal: the pid did not descend from
// baton at that time.
type lineageEntry struct {
	at time.Time
}

// lineageTTL is how long a refusal is remembered.
const lineageTTL = time.Second

// maxDepth bounds the walk up the process tree.
const maxDepth = 16

func newLineage() *lineage {
	return &lineage{self: os.Getpid(), cache: map[int]lineageEntry{}, conns: map[int]int{}, workers: map[int]struct{}{}}
}

// setWorker records that pid is (or, with live false, no longer is) a
// worker. The loop calls it as it registers and reaps workers, right
// after the fork: before the worker could connect.
func (l *lineage) setWorker(pid int, live bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if live {
		l.workers[pid] = struct{}{}
	} else {
		delete(l.workers, pid)
		// Its connections no longer count: a worker restarted in the
		// slot gets a pid, and a budget, of its own.
		delete(l.conns, pid)
	}
}

// child returns the pid of baton's child that pid is or descends from, or
// 0 when pid does not descend from baton (or is gone).
func (l *lineage) child(pid int) int {
	now := time.Now()
	l.mu.Lock()
	if _, ok := l.workers[pid]; ok {
		// A worker itself, the common case, needs no /proc (which may
		// not even be this pid namespace's, as when baton is PID 1 of a
		// container that did not mount its own).
		l.mu.Unlock()
		return pid
	}
	if e, ok := l.cache[pid]; ok && now.Sub(e.at) < lineageTTL {
		l.mu.Unlock()
		return 0
	}
	l.mu.Unlock()
	child := 0
	for p, depth := pid, 0; p > 1 && depth < maxDepth; depth++ {
		pp := parentPID(p)
		if pp == l.self {
			child = p
			break
		}
		p = pp
	}
	if child == 0 {
		// Only refusals are remembered: a stranger's flood costs a map
		// lookup, and a pid reused by a worker's child is refused for at
		// most lineageTTL. An answer that admits is never reused, so a
		// pid a stranger reuses is never taken for a worker's.
		l.mu.Lock()
		if len(l.cache) >= 4096 {
			clear(l.cache) // a flood of pids: start again rather than grow
		}
		l.cache[pid] = lineageEntry{at: now}
		l.mu.Unlock()
	}
	return child
}

// admit decides at accept whether a worker socket peer is served: it
// must be a live worker or descend from one (a process a worker left
// behind is re-parented to baton, the subreaper, and is none), and its
// worker's tree may hold at most maxWorkerConns connections. The release
// func ends the connection's count.
func (l *lineage) admit(p control.Peer) (func(), error) {
	child := l.child(p.PID)
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.workers[child]; !ok {
		return nil, fmt.Errorf("pid %d is not a worker of this baton", p.PID)
	}
	if l.conns[child] >= maxWorkerConns {
		return nil, fmt.Errorf("pid %d: worker %d and its processes hold %d connections to the worker socket already, the most baton allows; close some", p.PID, child, maxWorkerConns)
	}
	l.conns[child]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if n, ok := l.conns[child]; ok {
			if n <= 1 {
				delete(l.conns, child)
			} else {
				l.conns[child] = n - 1
			}
		}
	}, nil
}
