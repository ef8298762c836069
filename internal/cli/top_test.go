package cli

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// A frame drawn on a terminal starts at the top left, clears each line's
// rest and what is below, and fits the screen (24x80 when the size is
// unknown).
func TestDrawFitsTheScreen(t *testing.T) {
	var text strings.Builder
	for range 30 {
		text.WriteString(strings.Repeat("x", 120) + "\n")
	}
	var b bytes.Buffer
	draw(&b, &screenSize{fd: -1}, text.String())
	out := b.String()
	if !strings.HasPrefix(out, "\x1b[H") || !strings.HasSuffix(out, "\x1b[J") {
		t.Errorf("frame does not start at home and clear below: %q...%q", out[:10], out[len(out)-10:])
	}
	lines := strings.Split(strings.TrimSuffix(strings.TrimPrefix(out, "\x1b[H"), "\x1b[J"), "\r\n")
	if len(lines) != 24 {
		t.Errorf("%d lines, want 24", len(lines))
	}
	for _, l := range lines {
		l = strings.TrimSuffix(l, "\x1b[K")
		if n := utf8.RuneCountInString(l); n != 80 {
			t.Errorf("line of %d columns, want 80", n)
			break
		}
	}
}

func TestQuitKeys(t *testing.T) {
	for _, tt := range []struct {
		name  string
		read  func(r *strings.Reader, quit func())
		input string
		quits bool
	}{
		{"key q", func(r *strings.Reader, q func()) { readKeys(r, q) }, "abq", true},
		{"ctrl-c byte", func(r *strings.Reader, q func()) { readKeys(r, q) }, "\x03", true},
		{"other keys", func(r *strings.Reader, q func()) { readKeys(r, q) }, "abc", false},
		{"line q", func(r *strings.Reader, q func()) { readLines(r, q) }, "x\n q \n", true},
		{"end of input", func(r *strings.Reader, q func()) { readLines(r, q) }, "quiet\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			quit := false
			tt.read(strings.NewReader(tt.input), func() { quit = true })
			if quit != tt.quits {
				t.Errorf("quit %v, want %v", quit, tt.quits)
			}
		})
	}
}

// Every command builds (flag names and shorthands do not clash) and
// answers --help.
func TestEveryCommandHelps(t *testing.T) {
	for _, c := range newRoot().Commands() {
		var out bytes.Buffer
		if code := Main([]string{c.Name(), "--help"}, &out, &out); code != 0 {
			t.Errorf("baton %s --help exited %d:\n%s", c.Name(), code, &out)
		}
	}
}
