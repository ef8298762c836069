package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton"
	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/handoff"
)

// rawHoldWorker is the hold worker of a program that keeps its idle
// connections as plain descriptors, as an event-loop server in C or Rust
// does, and speaks the handoff protocol of docs/handoff.md itself instead
// of through the Go library: no goroutine, no poller registration, no
// buffer per connection. It measures the move itself: what baton and the
// protocol cost, without what a goroutine-per-connection worker spends on
// its connections.
//
// It accepts on the "echo" listener and holds what it accepts; it
// subscribes to adopt before it is ready and holds what it adopts. When
// the file check-GENERATION appears in reportDir, it answers one line on
// every connection it holds, "PID GENERATION line", so that the benchmark
// can see who holds each connection. On the stop signal it hands every
// connection off, as many per transfer as baton grants, with an empty
// state, and exits. It reports as the hold worker does.
func rawHoldWorker() error {
	ln, err := baton.Listener("echo", "127.0.0.1:0")
	if err != nil {
		return err
	}
	path := os.Getenv("BATON_SOCKET")
	if path == "" {
		return errors.New("no BATON_SOCKET: the raw hold worker runs under baton only")
	}
	w := &rawHolder{holder: holder{rep: holdReport{PID: os.Getpid(), Generation: baton.Generation()}}}
	adopted := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	a, err := handoff.DialAdopter(ctx, path, 0)
	cancel()
	if err != nil {
		return err
	}
	go func() { adopted <- w.adopt(a, path) }()
	var stop [2]int
	if err := unix.Pipe2(stop[:], unix.O_CLOEXEC); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		w.accept(ln, stop[0])
	}()
	go w.reportLoop()
	go w.answerWhenAsked()
	if err := baton.Ready(); err != nil {
		return err
	}
	<-baton.Stopping()
	w.mu.Lock()
	w.rep.StopNS = time.Now().UnixNano()
	w.rep.CPUStopNS = cpuNS()
	w.mu.Unlock()
	unix.Close(stop[1]) // wakes accept
	<-accepting
	ln.Close()
	if err := <-adopted; err != nil {
		w.fail(err)
	}
	w.handOff(path)
	w.mu.Lock()
	w.rep.CPUExitNS = cpuNS()
	w.mu.Unlock()
	return w.writeReport()
}

type rawHolder struct {
	holder
	fds []int // held connections, under holder.mu
}

// accept takes connections off the listener until a byte arrives on
// stop (a pipe). It polls the listener's descriptor itself (the net
// package lends a listener's descriptor to Control only); the caller
// closes the listener after accept has returned.
func (w *rawHolder) accept(ln net.Listener, stop int) {
	raw, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		w.fail(err)
		return
	}
	lfd := -1
	raw.Control(func(fd uintptr) { lfd = int(fd) })
	pfds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(pfds, -1); err != nil {
			continue // EINTR
		}
		if pfds[1].Revents != 0 {
			return
		}
		for {
			nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err != nil {
				break // EAGAIN: the queue is empty
			}
			w.mu.Lock()
			w.fds = append(w.fds, nfd)
			w.rep.Accepted++
			w.mu.Unlock()
			w.dirty.Store(true)
		}
	}
}

// adopt holds every connection baton pushes until baton ends the
// subscription for good (the worker is stopping).
func (w *rawHolder) adopt(a *handoff.Adopter, path string) error {
	for {
		fds, err := a.Next(context.Background())
		if errors.Is(err, io.EOF) {
			a.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			a, err = handoff.DialAdopter(ctx, path, 0)
			cancel()
			if errors.Is(err, handoff.ErrRefused) {
				return nil // stopping
			}
			if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			a.Close()
			return err
		}
		now := time.Now().UnixNano()
		w.mu.Lock()
		for _, f := range fds {
			w.fds = append(w.fds, f.Fd)
		}
		if w.rep.FirstAdoptNS == 0 {
			w.rep.FirstAdoptNS = now
		}
		w.rep.LastAdoptNS = now
		w.rep.Adopted += int64(len(fds))
		w.mu.Unlock()
		w.dirty.Store(true)
	}
}

// handOff sends every held connection to baton and closes this
// process's copies of those baton took.
func (w *rawHolder) handOff(path string) {
	w.mu.Lock()
	rest := w.fds
	w.fds = nil
	w.mu.Unlock()
	if len(rest) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := handoff.DialSender(ctx, path)
	if err != nil {
		w.fail(err)
		return
	}
	defer s.Close()
	conns := make([]handoff.Conn, 0, handoff.MaxFDs)
	for len(rest) > 0 {
		k := min(len(rest), s.Grant().MaxFDs)
		conns = conns[:0]
		for _, fd := range rest[:k] {
			conns = append(conns, handoff.Conn{Fd: fd, Listener: "echo"})
		}
		if err := s.Send(ctx, conns); err != nil {
			w.fail(err)
			return
		}
		for _, fd := range rest[:k] {
			unix.Close(fd)
		}
		rest = rest[k:]
		w.mu.Lock()
		w.rep.HandedOff += int64(k)
		w.rep.HandedNS = time.Now().UnixNano()
		w.mu.Unlock()
		w.dirty.Store(true)
	}
}

func (w *rawHolder) fail(err error) {
	w.mu.Lock()
	w.rep.Refused++
	w.rep.Errors = append(w.rep.Errors, err.Error())
	w.mu.Unlock()
	w.dirty.Store(true)
}

// answerWhenAsked waits for this generation's check file, then answers
// one line on every connection held.
func (w *rawHolder) answerWhenAsked() {
	gate := filepath.Join(os.Getenv(reportDir), fmt.Sprintf("check-%d", w.rep.Generation))
	err := batontest.Wait(10*time.Minute, func() error {
		_, err := os.Stat(gate)
		return err
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.rep.Errors = append(w.rep.Errors, fmt.Sprintf("never asked to answer: %v", err))
		w.dirty.Store(true)
		return
	}
	if err := answerAll(w.fds, fmt.Sprintf("%d %d ", w.rep.PID, w.rep.Generation)); err != nil {
		w.rep.Errors = append(w.rep.Errors, err.Error())
		w.dirty.Store(true)
	}
}

// answerAll reads one line on each of fds (blocking sockets) as it
// arrives, with poll(2), and answers it with prefix+line. It gives up
// after a minute.
func answerAll(fds []int, prefix string) error {
	pfds := make([]unix.PollFd, len(fds))
	for i, fd := range fds {
		pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	deadline := time.Now().Add(time.Minute)
	buf := make([]byte, 256)
	left := len(fds)
	for left > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections sent no line within a minute", left)
		}
		n, err := unix.Poll(pfds, 1000)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			return os.NewSyscallError("poll", err)
		}
		for i := range pfds {
			if pfds[i].Fd < 0 || pfds[i].Revents == 0 {
				continue
			}
			fd := int(pfds[i].Fd)
			pfds[i].Fd = -1 // one line each
			left--
			m, err := unix.Read(fd, buf)
			if err != nil || m == 0 || buf[m-1] != '\n' {
				return fmt.Errorf("connection fd %d: read %q, %v: want one line", fd, buf[:max(m, 0)], err)
			}
			if _, err := unix.Write(fd, append([]byte(prefix), buf[:m]...)); err != nil {
				return os.NewSyscallError("write", err)
			}
		}
	}
	return nil
}
