package supervisor

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"sync"
)

// maxLine is the longest line of worker output copied as one line; longer
// lines are split.
const maxLine = 64 << 10

// sink serializes whole lines onto one of baton's outputs, so lines from
// different workers never interleave mid-line.
type sink struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *sink) writeLine(prefix, line string) {
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
// in t, until EOF or a read error.
func copyLines(r io.Reader, dst *sink, prefix string, t *tail) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	sc.Split(splitLines)
	for sc.Scan() {
		line := string(sc.Bytes())
		dst.writeLine(prefix, line)
		t.add(line)
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
