package supervisor

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/baton-dev/baton/internal/outbuf"
)

// maxLine is the longest line of worker output copied as one line; longer
// lines are split.
const maxLine = 64 << 10

// sink serializes whole lines onto one of baton's outputs, so lines from
// different workers never interleave mid-line. With an outbuf.Writer (as
// baton run gives) a line never waits for the file: it is buffered, or
// dropped and counted when nothing reads baton's output.
type sink struct {
	mu sync.Mutex
	w  io.Writer
}

// lineWriter takes a line in parts and serializes lines itself
// (outbuf.Writer).
type lineWriter interface{ WriteLine(prefix, line string) }

func (s *sink) writeLine(prefix, line string) {
	if lw, ok := s.w.(lineWriter); ok {
		lw.WriteLine(prefix, line)
		return
	}
	b := make([]byte, 0, len(prefix)+len(line)+1)
	b = append(append(append(b, prefix...), line...), '\n')
	s.mu.Lock()
	s.w.Write(b) // baton keeps running if its own output is gone
	s.mu.Unlock()
}

// tail keeps a worker's last lines of output, to quote in error messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

const tailLines = 8

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(line) > 300 {
		line = line[:300] + "..."
	}
	if len(t.lines) == tailLines {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:tailLines-1]
	}
	t.lines = append(t.lines, line)
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, " | ")
}

// copyLines copies r to dst line by line with prefix, recording each line
// in t and giving it to keep (baton's ring buffer) unless nil, until EOF
// or a read error.
func copyLines(r io.Reader, dst *sink, prefix string, t *tail, keep func(string)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	sc.Split(splitLines)
	for sc.Scan() {
		line := string(sc.Bytes())
		dst.writeLine(prefix, line)
		t.add(line)
		if keep != nil {
			keep(line)
		}
	}
}

// splitLines is bufio.ScanLines without the error on long lines: a line
// longer than maxLine comes out in pieces, and CR is kept.
func splitLines(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if len(data) >= maxLine || atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// outputFile is the file a worker without a log prefix inherits as its
// stdout or stderr: Options.Stdout or Stderr itself, or the file the
// outbuf.Writer there stands for. Such a worker writes to it directly,
// without baton's buffer: if nothing reads it, the worker waits, baton
// does not.
func outputFile(w io.Writer) *os.File {
	switch f := w.(type) {
	case *os.File:
		return f
	case interface{ File() *os.File }:
		return f.File()
	}
	return nil
}

// outputStatus reads the counts of baton's outputs; zero for an output
// that is not an outbuf.Writer.
func (s *Supervisor) outputStatus() OutputStatus {
	out, _ := s.opts.Stdout.(*outbuf.Writer)
	errw, _ := s.opts.Stderr.(*outbuf.Writer)
	shared := out != nil && out.Same(errw)
	return OutputStatus{Stdout: outputStream(out, shared), Stderr: outputStream(errw, shared)}
}

func outputStream(w *outbuf.Writer, shared bool) OutputStream {
	if w == nil {
		return OutputStream{}
	}
	st := w.Stats()
	o := OutputStream{BufferedBytes: st.Buffered, LimitBytes: st.Limit, DroppedLines: st.Dropped, Shared: shared}
	if !st.DroppingSince.IsZero() {
		t := st.DroppingSince
		o.DroppingSince = &t
	}
	if !st.WritingSince.IsZero() {
		o.BlockedFor = Duration(time.Since(st.WritingSince))
	}
	if st.Err != nil {
		o.Error = st.Err.Error()
	}
	return o
}
