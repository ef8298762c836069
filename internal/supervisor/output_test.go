package supervisor

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/outbuf"
)

// TestWorkerOutputNeverBlocks: worker lines copied to an outbuf.Writer
// whose file nobody reads never wait; status counts what was dropped,
// and says when stdout and stderr share one buffer.
func TestWorkerOutputNeverBlocks(t *testing.T) {
	batontest.CheckLeaks(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// A one-page pipe: the writer's first batch past it blocks for good,
	// so the drops stay pending (DroppingSince) instead of going into a
	// notice, as they may when a batch happens to fill a 64 KiB pipe
	// exactly and the writer finds its buffer empty.
	raw, err := w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { _, err = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 4096) })
	if err != nil {
		t.Fatalf("F_SETPIPE_SZ: %v", err)
	}
	out := outbuf.New("stdout and stderr", w, outbuf.Options{Limit: 64 << 10})
	t.Cleanup(func() {
		// The writer writes to w's descriptor by its number: its
		// goroutine must end before w is closed, or it writes to
		// whatever reuses the number (the next test's pipe). Closing
		// the read end fails its write (EPIPE), and Close waits for it.
		r.Close()
		out.Close(10 * time.Second)
		w.Close()
	})
	s := &Supervisor{opts: Options{Stdout: out.Alias(os.Stdout), Stderr: out}}
	s.stdout = &sink{w: s.opts.Stdout}

	in := strings.Repeat(strings.Repeat("z", 200)+"\n", 5000) // 1 MB, the pipe holds 64 KiB
	done := make(chan struct{})
	go func() {
		copyLines(strings.NewReader(in), s.stdout, "[g1 s0 42] ", &tail{}, nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("copying worker output blocked on a pipe nobody reads")
	}
	st := s.outputStatus()
	if st.Stdout.DroppedLines == 0 || st.Stdout.BufferedBytes > 64<<10 || st.Stdout.LimitBytes != 64<<10 || st.Stdout.DroppingSince == nil ||
		!st.Stdout.Shared || !st.Stderr.Shared || st.Stderr.DroppedLines != st.Stdout.DroppedLines {
		t.Errorf("output status %+v; want lines dropped, at most 64 KiB buffered, shared", st)
	}
	if f := outputFile(s.opts.Stdout); f != os.Stdout {
		t.Errorf("a worker without a prefix would inherit %v as stdout, want os.Stdout", f)
	}
	if f := outputFile(s.opts.Stderr); f != w {
		t.Errorf("a worker without a prefix would inherit %v as stderr, want the pipe", f)
	}
}
