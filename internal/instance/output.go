package instance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/outbuf"
)

// newLogger is baton's log, in format ("text" or "json") at level, written
// to w.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	return slog.New(logHandler(w, format, &slog.HandlerOptions{Level: lv})), nil
}

// logHandler is the slog handler of format.
func logHandler(w io.Writer, format string, opts *slog.HandlerOptions) slog.Handler {
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// output is baton's stdout and stderr behind outbuf Writers: neither
// baton's log nor its workers' lines ever wait for whoever reads them
// (a stopped `| tee`, a log driver that blocks); what does not fit in
// their 1 MiB is dropped, counted in status, and reported by a warning
// in the log's format once the reader reads again.
type output struct{ stdout, stderr *outbuf.Writer }

// flushOnExit bounds how long baton, exiting, waits for its output to
// be read: a stopped reader must not keep it from exiting.
const flushOnExit = time.Second

// newOutput puts baton's stdout and stderr behind outbuf Writers whose
// drop notices are in the log's format.
func newOutput(format string) *output {
	notice := func(d outbuf.Drop) []byte {
		var b bytes.Buffer
		r := slog.NewRecord(time.Now(), slog.LevelWarn, "baton's output lines were dropped: nothing read them", 0)
		r.AddAttrs(slog.String("output", d.Name), slog.Int64("lines", d.Lines), slog.Time("since", d.Since), slog.String("reason", d.Reason()))
		logHandler(&b, format, nil).Handle(context.Background(), r)
		return b.Bytes()
	}
	if sameFile(os.Stdout, os.Stderr) {
		// One file (2>&1, the journal's stream): one buffer, so that lines
		// keep their order and never interleave.
		both := outbuf.New("stdout and stderr", os.Stderr, outbuf.Options{Notice: notice})
		return &output{stdout: both.Alias(os.Stdout), stderr: both}
	}
	return &output{
		stdout: outbuf.New("stdout", os.Stdout, outbuf.Options{Notice: notice}),
		stderr: outbuf.New("stderr", os.Stderr, outbuf.Options{Notice: notice}),
	}
}

// flush writes what is buffered, waiting at most timeout (before baton
// re-executes itself, which would lose the buffers).
func (o *output) flush(timeout time.Duration) {
	o.stdout.Flush(timeout)
	if !o.stdout.Same(o.stderr) {
		o.stderr.Flush(timeout)
	}
}

// close writes what is buffered, at most flushOnExit.
func (o *output) close() {
	var wg sync.WaitGroup
	for _, w := range []*outbuf.Writer{o.stdout, o.stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Close(flushOnExit) // nothing is left to tell if it fails
		}()
	}
	wg.Wait()
}

// sameFile reports whether a and b are the same file (device and inode),
// read with fstat on their descriptors.
func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	return fstat(a, &sa) == nil && fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// fstat wraps fstat(2) on f's descriptor, reached without File.Fd.
func fstat(f *os.File, st *unix.Stat_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), st) }); err != nil {
		return err
	}
	return os.NewSyscallError("fstat", serr)
}
