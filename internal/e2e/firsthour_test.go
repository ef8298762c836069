package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/supervisor"
)

// What an operator types wrong in the first hour: each is a usage error
// (exit 2) that names the thing, the cause and the fix, and leaves
// nothing behind; version and help are commands that work.
func TestFirstHourMistakes(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	missing := filepath.Join(dir, "no", "such")
	ok := []string{"-l", "http=tcp://127.0.0.1:0", "--", "/bin/true"}
	for _, tt := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown command", []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`, "the commands are", "baton --help"}},
		{"misspelt command", []string{"reload", "--nmae", "web"}, 2, []string{"unknown flag: --nmae", "did you mean --name?"}},
		{"no command", nil, 2, []string{"missing command", "Available Commands:"}},
		{"version", []string{"version"}, 0, []string{"baton version "}},
		{"help for no such command", []string{"help", "frobnicate"}, 2, []string{`help "frobnicate": no such command`}},
		{"--control in a directory that does not exist", append([]string{"run", "--control", filepath.Join(missing, "ctl.sock")}, ok...), 2,
			[]string{"--control: " + missing + "/ctl.sock: directory " + missing + " does not exist: create it (mkdir -m 0700 " + missing + ")"}},
		{"--metrics port out of range", append([]string{"run", "--control", filepath.Join(dir, "c.sock"), "--metrics", "127.0.0.1:99999"}, ok...), 2,
			[]string{`--metrics: "127.0.0.1:99999": port 99999 is out of range: want a port from 1 to 65535`}},
		{"--fd0 names no listener", append([]string{"run", "--control", filepath.Join(dir, "c.sock"), "--fd0", "nosuch"}, ok...), 2,
			[]string{"--fd0: nosuch: no listener has that name; the listeners are http"}},
		{"--workers not a number", []string{"run", "--workers", "four", "--", "/bin/true"}, 2, []string{`--workers "four": want a whole number`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runBin(t, clientBin, nil, tt.args...)
			if code != tt.code {
				t.Errorf("baton %s: exit %d, want %d:\n%s", strings.Join(tt.args, " "), code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("baton %s: output lacks %q:\n%s", strings.Join(tt.args, " "), w, out)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Dir(missing)); err == nil {
		t.Errorf("baton made %s; a --control directory that does not exist must be an error, not a mkdir", filepath.Dir(missing))
	}
}

// `baton top` of a baton that is not running fails as `baton status`
// does: the same exit code and the same message.
func TestTopWithoutBatonExitsLikeStatus(t *testing.T) {
	requireE2E(t)
	ctl := filepath.Join(shortDir(t), "none.sock")
	status, scode := runBin(t, clientBin, nil, "status", "--control", ctl)
	top, tcode := runBin(t, clientBin, nil, "top", "--control", ctl, "--count", "1")
	if scode == 0 || tcode != scode || strings.TrimSpace(top) != strings.TrimSpace(status) {
		t.Errorf("top exited %d with %q; status exited %d with %q; want the same, not 0", tcode, top, scode, status)
	}
	if !strings.Contains(status, "no baton is running at "+ctl) {
		t.Errorf("status of no baton says %q", status)
	}
}

// openPTY opens a pseudo-terminal of rows by cols: the master, and the
// terminal a program gets as its stdin, stdout and stderr.
func openPTY(t *testing.T, rows, cols uint16) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(os.NewSyscallError("ioctl TIOCSPTLCK", err))
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(os.NewSyscallError("ioctl TIOCGPTN", err))
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(os.NewSyscallError("ioctl TIOCSWINSZ", err))
	}
	return m, s
}

var escape = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// `baton top` on an 80x24 terminal draws screens that fit it, with 20
// workers and a warning: the warning and the listener on the screen, the
// workers that do not fit counted, every line within 80 columns.
func TestTopFitsAn80x24Terminal(t *testing.T) {
	requireE2E(t)
	const workers = 20
	// --stop-signal KILL: sleep does not drain, and the test need not wait.
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?backlog=8", "-n", fmt.Sprint(workers), "--ready", "delay:100ms",
		"--inspect-interval", "100ms", "--stop-signal", "KILL", "--", "/bin/sleep", "600")
	b.waitReady(workers)
	// Connections nobody accepts fill the queue: a warning.
	dialHeld(t, b.addr("http"), 8)
	b.waitStatus("the accept queue warning", func(st supervisor.Status) bool { return st.Kernel != nil && len(st.Kernel.Warnings) > 0 })

	master, tty := openPTY(t, 24, 80)
	cmd := exec.Command(clientBin, "top", "--control", b.ctl, "--interval", "100ms")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var screen logBuffer
	go io.Copy(&screen, master)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(screen.String(), "\x1b[H") < 3 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no three frames within 30s:\n%q", screen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	master.Write([]byte("q"))
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("baton top after q: %v", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("baton top still running 30s after q")
	}

	// The last complete frame: from the cursor's home to the clear.
	frames := strings.Split(screen.String(), "\x1b[H")
	last := frames[len(frames)-2]
	last, _, _ = strings.Cut(last, "\x1b[J")
	text := escape.ReplaceAllString(strings.ReplaceAll(last, "\r", ""), "")
	lines := strings.Split(text, "\n")
	if len(lines) > 24 {
		t.Errorf("a frame of %d lines on a 24-line terminal:\n%s", len(lines), text)
	}
	for i, l := range lines {
		if n := utf8.RuneCountInString(l); n > 80 {
			t.Errorf("line %d is %d columns on an 80-column terminal: %q", i+1, n, l)
		}
	}
	for _, want := range []string{"LISTENER", "http", "8/8", "! accept_queue_full:", "SLOT", " more: ", " ready (a taller terminal, or baton status, shows them)"} {
		if !strings.Contains(text, want) {
			t.Errorf("the 80x24 screen lacks %q:\n%s", want, text)
		}
	}
}
