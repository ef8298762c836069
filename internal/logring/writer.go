package logring

import "bytes"

// Writer adds what is written to it to a Ring as lines of one source and
// stream: baton's log handler writes each record with one Write.
type Writer struct {
	Ring           *Ring
	Source, Stream string
}

// Write adds each line of p (a last line without a newline too) and
// never fails.
func (w Writer) Write(p []byte) (int, error) {
	rest := p
	for len(rest) > 0 {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		text := line
		if len(text) > MaxLine {
			text = text[:MaxLine+1] // Add cuts it and marks it; no need to copy more
		}
		w.Ring.Add(Line{Source: w.Source, Stream: w.Stream, Text: string(text)})
	}
	return len(p), nil
}
