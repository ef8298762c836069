package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/logring"
)

// logsWriteTimeout bounds each write of a logs reply without --follow: a
// client that stops reading it is cut off. A follower's writes have no
// deadline: its queue in the ring drops what it cannot take, and its
// goroutine is the only one that waits.
const logsWriteTimeout = 30 * time.Second

// keepLine returns what copyLines gives each line of w's stream to: the
// ring buffer, with the worker's slot, generation and pid; nil without a
// ring.
func (s *Supervisor) keepLine(w *worker, stream string) func(string) {
	ring := s.opts.Logs
	if ring == nil {
		return nil
	}
	slot, gen, pid := w.slot.index, w.gen.id, w.pid
	return func(text string) {
		ring.Add(logring.Line{Source: logring.SourceWorker, Slot: slot, Generation: gen, PID: pid, Stream: stream, Text: text})
	}
}

// serveLogs answers api.MethodLogs on the connection itself (a
// control.ConnMethods method): {"ok":true}, then an api.LogEntry a line.
// It runs on the connection's goroutine, never on the loop, and reads
// the ring only, which never waits for it.
func (s *Supervisor) serveLogs(ctx context.Context, req control.Request) (any, error) {
	c := control.ConnFrom(ctx)
	if c == nil {
		return nil, fmt.Errorf("%s: no connection to stream on (the control server must list it in ConnMethods)", api.MethodLogs)
	}
	var p api.LogsParams
	if err := control.DecodeParams(req.Params, &p); err != nil {
		return nil, err
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	ring := s.opts.Logs
	if ring == nil {
		return nil, errors.New("logs: this baton keeps no output (it runs without a log buffer)")
	}
	f := logring.Filter{Slot: p.Slot, Generation: p.Generation}
	n := 0 // every line held
	if p.Lines != nil {
		n = *p.Lines
	}
	out := &entryWriter{c: c}
	if !p.Follow {
		var lines []logring.Line
		if p.Lines == nil || n > 0 {
			lines = ring.Tail(f, n)
		}
		out.deadline = logsWriteTimeout
		out.header()
		out.lines(lines)
		st := ring.Stats()
		out.write(api.LogEntry{End: &api.LogsEnd{Buffer: bufferStatus(st)}})
		return control.Hijacked, nil
	}
	if p.Lines != nil && n == 0 {
		n = -1 // only new lines
	}
	backlog, fl := ring.Follow(f, n, 0)
	defer fl.Close()
	// Closing the connection unblocks a write to a client that does not
	// read, so that baton's control server can stop.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	go func() {
		// The client hanging up ends the stream, even when no line comes.
		var b [1]byte
		c.Read(b[:])
		cancel()
	}()
	out.header()
	out.lines(backlog)
	for out.err == nil {
		lines, dropped, err := fl.Next(ctx)
		if err != nil {
			break
		}
		out.lines(lines)
		if dropped > 0 {
			out.write(api.LogEntry{Dropped: dropped})
		}
	}
	return control.Hijacked, nil
}

// entryWriter writes a logs reply's lines, and remembers the first
// error, after which it writes nothing.
type entryWriter struct {
	c        net.Conn
	deadline time.Duration // per write; 0: none
	buf      []byte
	err      error
}

// header writes the reply's first line.
func (w *entryWriter) header() {
	b, _ := json.Marshal(control.Reply{OK: true})
	w.flush(append(b, '\n'))
}

// lines writes each line as an entry, in writes of about 64 KiB.
func (w *entryWriter) lines(ls []logring.Line) {
	for i := range ls {
		w.append(api.LogEntry{Line: wireLine(&ls[i])})
		if len(w.buf) >= 64<<10 {
			w.flush(w.buf)
		}
	}
	w.flush(w.buf)
}

// write writes one entry.
func (w *entryWriter) write(e api.LogEntry) {
	w.append(e)
	w.flush(w.buf)
}

func (w *entryWriter) append(e api.LogEntry) {
	b, _ := json.Marshal(e) // plain values: it cannot fail
	w.buf = append(append(w.buf, b...), '\n')
}

// flush writes b (w.buf or a line of its own) and empties w.buf.
func (w *entryWriter) flush(b []byte) {
	if w.err == nil && len(b) > 0 {
		if w.deadline > 0 {
			w.c.SetWriteDeadline(time.Now().Add(w.deadline))
		}
		_, w.err = w.c.Write(b)
	}
	w.buf = w.buf[:0]
}

// wireLine is l as the control API sends it.
func wireLine(l *logring.Line) *api.LogLine {
	w := &api.LogLine{Seq: l.Seq, Time: l.Time, Source: l.Source, Generation: l.Generation,
		PID: l.PID, Stream: l.Stream, Text: l.Text, Truncated: l.Truncated}
	if l.Source == logring.SourceWorker {
		slot := l.Slot
		w.Slot = &slot
	}
	return w
}

// bufferStatus is the ring's figures as the control API sends them.
func bufferStatus(st logring.Stats) api.LogBufferStatus {
	return api.LogBufferStatus{Lines: st.Lines, Bytes: st.Bytes, LimitBytes: st.Limit, Added: st.Added, Evicted: st.Evicted,
		Truncated: st.Truncated, Followers: st.Followers, FollowerDropped: st.FollowerDropped}
}
