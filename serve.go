package baton

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Stopping calls Stopping on the Default Worker: a channel closed when
// the stop signal arrives.
func Stopping() <-chan struct{} { return Default().Stopping() }

// Stopping returns a channel that is closed when the stop signal arrives:
// the signal named in BATON_STOP_SIGNAL (SIGTERM unless baton was told
// otherwise), SIGTERM or SIGINT. Once Stopping has been called those
// signals no longer end the process by themselves: the program drains and
// exits. Every call returns the same channel.
func (w *Worker) Stopping() <-chan struct{} {
	w.stop.once.Do(func() {
		w.stop.ch = make(chan struct{})
		c := make(chan os.Signal, 1)
		w.env.notifySignal(c, stopSignals(w.stopSignal)...)
		go func() {
			<-c
			close(w.stop.ch)
		}()
	})
	return w.stop.ch
}

// ServeOptions tune Serve. The zero value is ready to use.
type ServeOptions struct {
	// Worker is the Worker whose sockets, readiness report and stop
	// signal Serve uses; nil means Default().
	Worker *Worker
	// Listener is the name of the inherited socket to serve; empty means
	// "http" if there is one, else the only stream socket.
	Listener string
	// DrainWindow is how long, after the stop signal, connections that
	// are still open may come back with another request; each answer in
	// that window carries "Connection: close", so a keep-alive client
	// moves to a new connection (served by the next generation) instead
	// of having its idle connection closed under it. Default 2s; the
	// window ends early once every connection has closed.
	DrainWindow time.Duration
	// ShutdownTimeout bounds the wait for requests still running after
	// the window. Default 30s.
	ShutdownTimeout time.Duration
}

// Serve serves srv on its inherited socket (or on srv.Addr when not
// socket-activated), reports ready, and on the stop signal drains without
// losing a request, with the Default Worker and the default ServeOptions.
// To drain, it wraps srv.Handler (every response says "Connection: close"
// while draining) and srv.ConnState (it counts the open connections):
// ServeOptions.Serve says how.
func Serve(srv *http.Server) error { return ServeOptions{}.Serve(srv) }

// Serve is ServeOptions{Worker: w}.Serve(srv): it serves srv on w's
// socket, reports ready to w's NOTIFY_SOCKET, and drains on w's stop
// signal, wrapping srv.Handler and srv.ConnState as ServeOptions.Serve
// says.
func (w *Worker) Serve(srv *http.Server) error { return ServeOptions{Worker: w}.Serve(srv) }

// Serve serves srv on its inherited socket (or on srv.Addr when not
// socket-activated; ":http" if empty), reports ready, and when the stop
// signal arrives drains without losing a request:
//
//  1. it closes its listener and waits for http.Server.Serve to return,
//     so no connection is left between accept and the server's tracking;
//  2. for DrainWindow, or until no connection is left, every response
//     says "Connection: close", so keep-alive clients reconnect, to the
//     next generation, instead of racing a close of their idle connection;
//  3. it calls Shutdown for what is left.
//
// It returns nil after a clean drain, and an error if it could not get its
// socket, could not report ready, or a Serve of srv failed.
//
// To do this Serve wraps two of srv's fields before it serves, and leaves
// them wrapped (an http.Server cannot serve again after Shutdown): Handler
// (nil: http.DefaultServeMux) becomes a handler that sets
// "Connection: close" on every response while draining and then calls it;
// ConnState becomes a function that counts the open connections (the
// drain window ends when none is left) and then calls the original, if
// any. While it serves, it also counts the connections it accepts and the
// requests it answers with a 5xx status, and reports both to baton twice
// a second, when they changed (X_BATON_ACCEPTED= and X_BATON_ERRORS= on
// NOTIFY_SOCKET: baton status shows them, and a canary reload fails on
// errors). The handler the requests reach gets a ResponseWriter that
// records the status and passes Flush, Hijack and ReadFrom through (and
// unwraps, for http.ResponseController).
func (o ServeOptions) Serve(srv *http.Server) error {
	ln, err := o.listener(srv)
	if err != nil {
		return err
	}
	return o.ServeListeners(srv, ln)
}

// ServeListeners is Serve on listeners the caller chose (several sockets
// served by one http.Server, say every one from Listeners), with the same
// readiness report, the same drain, and the same wrapping of srv's Handler
// and ConnState. It closes the listeners before it returns.
func (o ServeOptions) ServeListeners(srv *http.Server, listeners ...net.Listener) error {
	w := o.worker()
	if o.DrainWindow == 0 {
		o.DrainWindow = 2 * time.Second
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if len(listeners) == 0 {
		return errors.New("baton.ServeListeners: no listener to serve: pass at least one")
	}
	var counted []*countingListener
	for _, ln := range listeners {
		counted = append(counted, &countingListener{Listener: ln})
	}
	var serverErrors atomic.Int64 // 5xx answers, for a canary's verdict
	stopReports := w.reportAccepted(counted, &serverErrors)
	defer stopReports()
	stop := w.Stopping()

	var draining atomic.Bool
	var open atomic.Int64
	handler := srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		sw := &statusWriter{ResponseWriter: w}
		handler.ServeHTTP(sw, r)
		if sw.status >= 500 {
			serverErrors.Add(1)
		}
	})
	userState := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
		if userState != nil {
			userState(c, s)
		}
	}

	served := make(chan error, len(counted))
	for _, ln := range counted {
		go func() { served <- srv.Serve(ln) }()
	}
	closeAll := func() error {
		for _, ln := range counted {
			ln.Close()
		}
		var first error
		for range counted {
			if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && first == nil {
				first = err
			}
		}
		return first
	}
	if err := w.Ready(); err != nil {
		closeAll()
		return err
	}
	select {
	case err := <-served:
		served <- err // closeAll collects every Serve's result
		if cerr := closeAll(); cerr != nil {
			return cerr
		}
		return err
	case <-stop:
	}
	draining.Store(true)
	// Every Serve returns before Shutdown: no connection is left between
	// Accept and the server's tracking.
	if err := closeAll(); err != nil {
		return err
	}
	deadline := time.Now().Add(o.DrainWindow)
	for open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	return srv.Shutdown(ctx)
}

// worker is the Worker o uses.
func (o ServeOptions) worker() *Worker {
	if o.Worker != nil {
		return o.Worker
	}
	return Default()
}

// listener picks the socket Serve uses.
func (o ServeOptions) listener(srv *http.Server) (net.Listener, error) {
	w := o.worker()
	addr := srv.Addr
	if addr == "" {
		addr = ":http"
	}
	if o.Listener != "" {
		return w.Listener(o.Listener, addr)
	}
	if !w.Activated() {
		return listenOwn(addr)
	}
	if ln, err := w.Listener("http", addr); err == nil {
		return ln, nil
	}
	all, err := w.Listeners()
	if err != nil {
		return nil, err
	}
	if len(all) != 1 {
		names := make([]string, 0, len(all))
		for name := range all {
			names = append(names, name)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("baton.Serve: this process has %d stream sockets (%s) and none is called \"http\": set ServeOptions.Listener to the one to serve", len(all), strings.Join(names, ", "))
	}
	for _, ln := range all {
		return ln, nil
	}
	return nil, nil
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

// Accept accepts a connection and counts it.
func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// reportAccepted tells baton, twice a second when they changed, how many
// connections the worker accepted (X_BATON_ACCEPTED=, shown in baton
// status) and how many requests it answered with a 5xx status
// (X_BATON_ERRORS=, which a canary reload judges), until the returned
// function is called.
func (w *Worker) reportAccepted(ls []*countingListener, serverErrors *atomic.Int64) (stop func()) {
	if w.notifySocket == "" {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		last, lastErrs := int64(-1), int64(0)
		for {
			var n int64
			for _, l := range ls {
				n += l.n.Load()
			}
			errs := serverErrors.Load()
			if n != last || errs != lastErrs {
				// A lost report is made good by the next one.
				msg := "X_BATON_ACCEPTED=" + strconv.FormatInt(n, 10)
				if errs > 0 {
					msg += "\nX_BATON_ERRORS=" + strconv.FormatInt(errs, 10)
				}
				w.notify(msg)
				last, lastErrs = n, errs
			}
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// statusWriter records the status of a response. It passes Flush,
// Hijack and ReadFrom (sendfile) through to the ResponseWriter it wraps,
// and unwraps for http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records the status and writes it.
func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write writes the body; without a WriteHeader before, the status is 200.
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom writes the body from r, with the wrapped writer's ReadFrom
// (sendfile) when it has one.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

// Flush flushes, when the wrapped writer can.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack hands the connection over, when the wrapped writer can.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, fmt.Errorf("baton.Serve: the response writer %T cannot be hijacked", w.ResponseWriter)
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
