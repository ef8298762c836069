package supervisor

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/outbuf"
)

// TestWorkerOutputNeverBlocks: worker lines copied to an outbuf.Writer
// whose file nobody reads never wait; status counts what was dropped,
// and says when stdout and stderr share one buffer.
func TestWorkerOutputNeverBlocks(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	out := outbuf.New("stdout and stderr", w, outbuf.Options{Limit: 64 << 10})
	defer out.Close(0)
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
