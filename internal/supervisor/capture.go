package supervisor

import (
	"context"
	"errors"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/capture"
)

// captureStart is the socketpair over which a worker's shim hands baton
// the notification descriptor of its seccomp filter.
type captureStart struct {
	baton, shim int
	fdNum       int // the shim's end, as numbered in the worker
}

func newCaptureStart(fdNum int) (*captureStart, error) {
	b, sh, err := capture.Socketpair()
	if err != nil {
		return nil, err
	}
	return &captureStart{baton: b, shim: sh, fdNum: fdNum}, nil
}

func (c *captureStart) env() string { return capture.EnvFD + "=" + strconv.Itoa(c.fdNum) }

// started closes the shim's end, which the worker has its own copy of (a
// dying shim then shows as end of file), and baton's end too when the
// worker did not start.
func (c *captureStart) started(ok bool) {
	unix.Close(c.shim)
	if !ok {
		unix.Close(c.baton)
	}
}

// serveCapture takes the notification descriptor from w's shim (or uses
// nfd, one inherited across an upgrade) and answers the binds of w and
// everything it forks, until they have all exited. It runs on its own
// goroutine; what it learns goes to the loop.
func (s *Supervisor) serveCapture(w *worker, batonEnd, nfd int) {
	if nfd < 0 {
		var err error
		nfd, err = capture.ReceiveNotifFd(batonEnd)
		unix.Close(batonEnd)
		if err != nil {
			s.log.Error("bind capture: no notification descriptor from the worker's shim; it will not run", "pid", w.pid, "err", err)
			return
		}
	}
	s.post(func() { w.captureFd = nfd })
	var held []capture.Listener
	for _, l := range w.gen.listeners {
		if sock := l.SocketOf(w.gen.id, w.slot.index); sock != nil {
			held = append(held, capture.Listener{Name: l.Spec.Name, Fd: sock.Fd()})
		}
	}
	err := capture.Serve(s.ctx, nfd, held, func(ev capture.Event) {
		s.post(func() { s.captureEvent(w, ev) })
	})
	switch {
	case err == nil:
		// Every process under the filter has exited: nothing can bind
		// through it any more.
		s.call(func() { w.captureFd = -1 })
		unix.Close(nfd)
	case errors.Is(err, context.Canceled):
		// baton is exiting; the descriptor goes with the process.
	default:
		// Closing it makes further binds fail with ENOSYS instead of
		// hanging with nobody to answer them.
		s.call(func() { w.captureFd = -1 })
		unix.Close(nfd)
		s.log.Error("bind capture stopped for a worker; its further binds fail", "pid", w.pid, "err", err)
	}
}

// captureEvent records what the capture server did with one bind.
func (s *Supervisor) captureEvent(w *worker, ev capture.Event) {
	attrs := w.attrs("bind_pid", ev.PID, "fd", ev.Fd, "addr", ev.Addr)
	switch ev.Action {
	case capture.Captured:
		w.captures = append(w.captures, CaptureStatus{Listener: ev.Listener, Addr: ev.Addr, PID: ev.PID, Fd: ev.Fd, Time: ev.Time})
		s.log.Info("bind captured: the program got baton's socket", append(attrs, "listener", ev.Listener)...)
		if w.gen.cfg.Ready.Kind() == ReadyBind && w.state == Starting && w.boundAll() {
			s.workerReady(w)
		}
	case capture.Passed:
		if ev.Err != nil {
			s.log.Warn("bind passed through: baton holds this port but not this address", append(attrs, "err", ev.Err)...)
		} else {
			s.log.Debug("bind passed through", attrs...)
		}
	case capture.Gone:
		s.log.Debug("bind abandoned", attrs...)
	case capture.Failed:
		s.log.Warn("bind capture failed; the bind went ahead unchanged", append(attrs, "err", ev.Err)...)
	}
}

// boundAll reports whether w has bound every listener.
func (w *worker) boundAll() bool {
	for _, l := range w.gen.listeners {
		found := false
		for _, c := range w.captures {
			found = found || c.Listener == l.Spec.Name
		}
		if !found {
			return false
		}
	}
	return true
}
