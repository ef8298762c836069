package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/api"
)

func newTopCmd() *cobra.Command {
	var cf controlFlags
	var every time.Duration
	var count int
	c := &cobra.Command{
		Use:   "top",
		Short: "Show the status, refreshing, with what the host's drop counters did",
		Long: `Show what baton status shows, refreshed every --interval, with how much the
host's counters of dropped connections (ListenOverflows, ListenDrops, SYN
cookies) rose since the previous frame. Press q (or Ctrl-C) to quit.

On a terminal top redraws one screen that fits it (80x24 and up): the
listeners with their queues and connections, the health, the warnings and
the slots without a worker, one line each, then as many workers as there
are rows for, and a line that counts the others. When its output is not a
terminal it prints baton status's full view once per interval, and reads
lines from stdin: a line "q" quits. --count stops after that many frames,
and top then exits as baton status would for the last frame (0 healthy, 3
degraded, 1 no baton answered); quitting with q or Ctrl-C exits 0.

When no baton answers at the start, top fails as baton status does (exit
1, the same message); once it runs, a frame without an answer says why
and keeps the last view.`,
		Example: `  baton top --name web
  baton top --interval 5s --count 3 > frames.txt`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if every < 10*time.Millisecond {
				return usagef("--interval %s: want 10ms or more", every)
			}
			if count < 0 {
				return usagef("--count %d: want 0 (no end) or more", count)
			}
			if _, err := cf.socketPath(); err != nil {
				return err
			}
			return top(c.InOrStdin(), c.OutOrStdout(), cf, every, count)
		},
	}
	cf.register(c)
	c.Flags().DurationVarP(&every, "interval", "i", time.Second, "time between frames")
	c.Flags().IntVar(&count, "count", 0, "stop after this many frames (0: until q)")
	return c
}

// top draws frames until q, a signal, or count frames. It fails as
// `baton status` does when the first status cannot be had (no baton
// answers at the socket): top of nothing is an error, not a screen that
// says so. Later frames that get no status say why and keep the last one
// shown (baton may be upgrading itself).
func top(in io.Reader, out io.Writer, cf controlFlags, every time.Duration, count int) error {
	first, err := status(cf, max(every, 5*time.Second))
	if err != nil {
		return err
	}
	quit := make(chan struct{}, 1)
	stop := func() {
		select {
		case quit <- struct{}{}:
		default:
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			stop()
		}
	}()

	screen := terminal(out)
	if restore, ok := rawInput(in); ok {
		defer restore()
		go readKeys(in, stop)
	} else {
		go readLines(in, stop)
	}
	if screen != nil {
		// The alternate screen keeps the shell's screen intact; the
		// cursor is hidden while frames are drawn.
		io.WriteString(out, "\x1b[?1049h\x1b[?25l")
		defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")
	}

	var prev *api.KernelView
	t := time.NewTicker(every)
	defer t.Stop()
	last := first
	for n := 1; ; n++ {
		var failed error // why this frame has no fresh status
		if n > 1 {
			if next, err := status(cf, max(every, 5*time.Second)); err == nil {
				last = next
			} else {
				failed = err
			}
		}
		deltas := ""
		if failed == nil {
			deltas = counterDeltas(prev, last.Kernel)
		}
		if screen != nil {
			rows, cols := screen.size()
			draw(out, screen, screenFrame(&last, failed, deltas, every, time.Now(), rows, cols))
		} else {
			var buf bytes.Buffer
			frame(&buf, last, failed, deltas, every)
			fmt.Fprintln(out, buf.String())
		}
		if failed == nil && last.Kernel != nil {
			prev = last.Kernel
		}
		if count > 0 && n >= count {
			// As baton status would exit for this frame.
			if failed != nil {
				return failed
			}
			return healthError(&last)
		}
		select {
		case <-quit:
			return nil
		case <-t.C:
		}
	}
}

// frame renders one frame for an output that is not a terminal: the
// status as baton status prints it, under a line with the time and what
// the host's drop counters did since the last frame; or why there is no
// status this time.
func frame(w io.Writer, st api.Status, failed error, deltas string, every time.Duration) {
	fmt.Fprintf(w, "baton top, every %s, q quits; %s\n", every, time.Now().Format(time.TimeOnly))
	if failed != nil {
		for _, line := range wrap(failed.Error(), statusWidth, "no status:", "    ") {
			fmt.Fprintln(w, line)
		}
		return
	}
	if deltas != "" {
		fmt.Fprintf(w, "since the last frame: %s\n", deltas)
	}
	fmt.Fprintln(w)
	printStatus(w, st)
}

// status asks the baton the flags name for its status, waiting at most
// timeout.
func status(cf controlFlags, timeout time.Duration) (api.Status, error) {
	client, err := cf.client()
	if err != nil {
		return api.Status{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return client.Status(ctx)
}

// screenSize is a terminal's size.
type screenSize struct{ fd int }

// terminal returns the screen when out is a terminal, else nil.
func terminal(out io.Writer) *screenSize {
	f, ok := out.(*os.File)
	if !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return &screenSize{fd: int(f.Fd())}
}

func (s *screenSize) size() (rows, cols int) {
	ws, err := unix.IoctlGetWinsize(s.fd, unix.TIOCGWINSZ)
	if err != nil || ws.Row == 0 || ws.Col == 0 {
		return 24, 80
	}
	return int(ws.Row), int(ws.Col)
}

// draw puts a frame on the screen from the top left, each line cut to the
// terminal's width and the frame to its height, clearing what the last
// frame left.
func draw(out io.Writer, s *screenSize, text string) {
	rows, cols := s.size()
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > rows {
		lines = lines[:rows]
	}
	var b strings.Builder
	b.WriteString("\x1b[H")
	for i, line := range lines {
		b.WriteString(cut(line, cols))
		b.WriteString("\x1b[K")
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\x1b[J")
	io.WriteString(out, b.String())
}

// rawInput puts a terminal on in into non-canonical mode without echo, so
// that a single q quits; Ctrl-C still sends SIGINT. It returns the
// function that restores the terminal, and false when in is not a
// terminal.
func rawInput(in io.Reader) (func(), bool) {
	f, ok := in.(*os.File)
	if !ok {
		return nil, false
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, false
	}
	raw := *old
	raw.Lflag &^= unix.ICANON | unix.ECHO
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, false
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, true
}

// readKeys calls quit when q is pressed.
func readKeys(in io.Reader, quit func()) {
	buf := make([]byte, 64)
	for {
		n, err := in.Read(buf)
		if bytes.ContainsAny(buf[:n], "qQ\x03") {
			quit()
			return
		}
		if err != nil {
			return
		}
	}
}

// readLines calls quit on a line "q"; the end of the input does not quit,
// so top runs with stdin closed or /dev/null.
func readLines(in io.Reader, quit func()) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s == "q" || s == "quit" {
			quit()
			return
		}
	}
}
