package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/baton-dev/baton"
)

// Knobs of the hold worker (environment variables):
const (
	// adoptGate: the worker adopts only once this file exists.
	adoptGate = "E2E_ADOPT_GATE"
	// handoffPause: on the stop signal the worker hands off this many
	// connections, writes the file handoffPauseFile with their clients'
	// addresses, one a line, and then hangs (to be killed).
	handoffPause     = "E2E_HANDOFF_PAUSE"
	handoffPauseFile = "E2E_HANDOFF_PAUSE_FILE"
)

// holdReport is what the hold worker writes to reportDir: every 20ms
// while something changed, and when it exits.
type holdReport struct {
	PID        int      `json:"pid"`
	Generation int      `json:"generation"`
	Accepted   int64    `json:"accepted"`
	Adopted    int64    `json:"adopted"`
	HandedOff  int64    `json:"handed_off"`
	Refused    int64    `json:"refused"`          // Handoff calls that failed
	Errors     []string `json:"errors,omitempty"` // distinct Handoff errors
	// Times in Unix nanoseconds: the stop signal, the last Handoff
	// returning, the first and last adoption.
	StopNS       int64 `json:"stop_ns,omitempty"`
	HandedNS     int64 `json:"handed_ns,omitempty"`
	FirstAdoptNS int64 `json:"first_adopt_ns,omitempty"`
	LastAdoptNS  int64 `json:"last_adopt_ns,omitempty"`
	// CPU time (user and system) the process had used at the stop
	// signal, and when it exits.
	CPUStopNS int64 `json:"cpu_stop_ns,omitempty"`
	CPUExitNS int64 `json:"cpu_exit_ns,omitempty"`
}

// cpuNS is the CPU time this process has used.
func cpuNS() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// holdWorker serves the "echo" listener: each line is answered with
// "PID GENERATION line". On the stop signal every connection stops at a
// line boundary and is handed off with the bytes read but not answered as
// its state; adopted connections carry on. A connection that cannot be
// handed off is served on until its client leaves.
func holdWorker() error {
	ln, err := baton.Listener("echo", "127.0.0.1:0")
	if err != nil {
		return err
	}
	w := &holder{rep: holdReport{PID: os.Getpid(), Generation: baton.Generation()}, conns: map[net.Conn]bool{},
		prefix: fmt.Sprintf("%d %d ", os.Getpid(), baton.Generation())}
	if n, err := strconv.Atoi(os.Getenv(handoffPause)); err == nil {
		w.pause = int64(n)
	}
	stop := baton.Stopping()
	var adopted sync.WaitGroup
	adopted.Add(1)
	adopt := func() {
		defer adopted.Done()
		for a := range baton.Adopted() {
			now := time.Now().UnixNano()
			w.mu.Lock()
			if w.rep.FirstAdoptNS == 0 {
				w.rep.FirstAdoptNS = now
			}
			w.rep.LastAdoptNS = now
			w.rep.Adopted++
			w.mu.Unlock()
			w.serve(a.Conn, a.State)
		}
	}
	if gate := os.Getenv(adoptGate); gate != "" {
		go func() {
			for {
				if _, err := os.Stat(gate); err == nil {
					break
				}
				select {
				case <-stop:
					adopted.Done() // never adopted
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
			adopt()
		}()
	} else {
		go adopt()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.rep.Accepted++
			w.mu.Unlock()
			w.serve(c, nil)
		}
	}()
	go w.reportLoop()
	// E2E_CPUPROFILE=DIR: CPU profiles at 1 kHz of the start (adoption,
	// then whatever comes until the stop signal) and of the stop (the
	// handoff) of every worker, in DIR/{start,stop}-PID.prof.
	profDir := os.Getenv("E2E_CPUPROFILE")
	profile := func(phase string) {
		if profDir == "" {
			return
		}
		pprof.StopCPUProfile()
		f, err := os.Create(filepath.Join(profDir, fmt.Sprintf("%s-%d.prof", phase, os.Getpid())))
		if err == nil {
			runtime.SetCPUProfileRate(1000)
			pprof.StartCPUProfile(f)
		}
	}
	if baton.Generation() > 1 {
		profile("start")
	}
	if err := baton.Ready(); err != nil {
		return err
	}
	<-stop
	profile("stop")
	defer pprof.StopCPUProfile()
	w.mu.Lock()
	w.rep.StopNS = time.Now().UnixNano()
	w.rep.CPUStopNS = cpuNS()
	w.stopping = true
	for c := range w.conns {
		c.SetReadDeadline(time.Now())
	}
	w.mu.Unlock()
	ln.Close()
	adopted.Wait()
	w.wg.Wait()
	w.mu.Lock()
	w.rep.CPUExitNS = cpuNS()
	w.mu.Unlock()
	return w.writeReport()
}

type holder struct {
	mu       sync.Mutex
	rep      holdReport
	conns    map[net.Conn]bool
	stopping bool
	prefix   string // of every answer: pid and generation
	pause    int64  // hand off this many, then hang
	started  atomic.Int64
	paused   []string
	wg       sync.WaitGroup
	dirty    atomic.Bool
	wmu      sync.Mutex // one report written at a time
}

func (w *holder) serve(c net.Conn, pending []byte) {
	w.mu.Lock()
	w.conns[c] = true
	if w.stopping {
		c.SetReadDeadline(time.Now())
	}
	w.wg.Add(1)
	w.mu.Unlock()
	w.dirty.Store(true)
	go func() {
		defer w.wg.Done()
		defer func() {
			w.mu.Lock()
			delete(w.conns, c)
			w.mu.Unlock()
			w.dirty.Store(true)
		}()
		// Idle connections with short lines: a small buffer each.
		prefix := w.prefix
		r := bufio.NewReaderSize(c, 256)
		if len(pending) > 0 {
			r = bufio.NewReaderSize(&prefixReader{pending: pending, r: c}, 256)
		}
		for {
			line, err := r.ReadString('\n')
			if err == nil {
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte(prefix + line)); err != nil {
					c.Close()
					return
				}
				continue
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				c.Close()
				return
			}
			buffered, _ := r.Peek(r.Buffered())
			state := append([]byte(line), buffered...)
			if !w.handOff(c, state) {
				// Serve on: it stays here.
				c.SetReadDeadline(time.Time{})
				r = bufio.NewReader(&prefixReader{pending: state, r: c})
			} else {
				return
			}
		}
	}()
}

// handOff hands c off, or with a pause set hangs once the pause count is
// reached. It reports whether c is gone.
func (w *holder) handOff(c net.Conn, state []byte) bool {
	if w.pause > 0 {
		if n := w.started.Add(1); n > w.pause {
			select {} // the test kills this process
		}
	}
	var remote string
	if w.pause > 0 {
		remote = c.RemoteAddr().String()
	}
	err := baton.Handoff(c, state)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dirty.Store(true)
	if err != nil {
		w.rep.Refused++
		msg := err.Error()
		for _, e := range w.rep.Errors {
			if e == msg {
				return false
			}
		}
		w.rep.Errors = append(w.rep.Errors, msg)
		return false
	}
	w.rep.HandedOff++
	w.rep.HandedNS = time.Now().UnixNano()
	if w.pause > 0 {
		w.paused = append(w.paused, remote)
		if int64(len(w.paused)) == w.pause {
			w.writePauseFile()
		}
	}
	return true
}

func (w *holder) writePauseFile() {
	name := os.Getenv(handoffPauseFile)
	var b []byte
	for _, a := range w.paused {
		b = append(b, a+"\n"...)
	}
	os.WriteFile(name+".tmp", b, 0o644)
	os.Rename(name+".tmp", name)
}

func (w *holder) reportLoop() {
	for range time.Tick(20 * time.Millisecond) {
		if w.dirty.Swap(false) {
			w.writeReport()
		}
	}
}

func (w *holder) writeReport() error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.Lock()
	b, err := json.Marshal(w.rep)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	name := filepath.Join(os.Getenv(reportDir), strconv.Itoa(os.Getpid())+".json")
	if err := os.WriteFile(name+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(name+".tmp", name)
}

// prefixReader reads pending, then r.
type prefixReader struct {
	pending []byte
	r       net.Conn
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// readHoldReports reads every hold worker's report in dir, by pid.
func readHoldReports(dir string) (map[int]holdReport, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[int]holdReport{}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var r holdReport
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", e.Name(), err)
		}
		out[r.PID] = r
	}
	return out, nil
}
