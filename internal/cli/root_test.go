package cli

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// A control socket path the kernel cannot bind is a usage error (exit 2)
// that says the limit, before anything is sent.
func TestControlPathTooLong(t *testing.T) {
	if maxSocketPath != 107 {
		t.Errorf("maxSocketPath = %d, want 107 (sun_path is 108 bytes with the NUL)", maxSocketPath)
	}
	long := "/" + strings.Repeat("x", maxSocketPath)
	var out, errOut bytes.Buffer
	code := Main([]string{"status", "--control", long}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "the kernel allows at most 107") {
		t.Errorf("status --control <%d bytes>: exit %d, %q; want 2 and the limit", len(long), code, errOut.String())
	}
}

// What the user types wrong exits 2 with a message that names the thing,
// the cause and the fix; version and help exit 0.
func TestUsage(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		code int
		want []string // in stderr (exit 2) or stdout (exit 0)
	}{
		{"unknown command", []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`, "the commands are check, completion, demo, logs, reload, run", "baton --help"}},
		{"misspelt command", []string{"stauts"}, 2, []string{`unknown command "stauts": did you mean status?`}},
		{"no command", nil, 2, []string{"Available Commands:", "missing command"}},
		{"help for no such command", []string{"help", "frobnicate"}, 2, []string{`help "frobnicate": no such command`, "the commands are"}},
		{"help for a command", []string{"help", "status"}, 0, []string{"baton status [flags]"}},
		{"version command", []string{"version"}, 0, []string{"baton version " + Version}},
		{"version flag", []string{"--version"}, 0, []string{"baton version " + Version}},
		{"version takes no arguments", []string{"version", "x"}, 2, []string{"version takes no arguments"}},
		{"misspelt flag", []string{"run", "--worker", "2", "--", "true"}, 2, []string{"unknown flag: --worker", "did you mean --workers?", "baton run --help"}},
		{"flag of another command", []string{"status", "--workers", "2"}, 2, []string{"unknown flag: --workers", "it is a flag of baton check, baton run"}},
		{"unknown short flag", []string{"status", "-x"}, 2, []string{"unknown flag: -x", "no such short flag"}},
		{"not a number", []string{"run", "--workers", "four", "--", "true"}, 2, []string{`--workers "four": want a whole number, for example --workers `}},
		{"not a boolean", []string{"run", "--capture-bind=yes", "--", "true"}, 2, []string{`--capture-bind="yes": want true or false`}},
		{"duration without unit", []string{"run", "--drain-timeout", "30", "--", "true"}, 2, []string{`--drain-timeout "30": a duration needs a unit: 30s`}},
		{"not a duration", []string{"reload", "--timeout", "soon"}, 2, []string{`--timeout "soon": want a duration such as 30s`}},
		{"missing value", []string{"top", "--interval"}, 2, []string{"--interval needs a value: --interval 1s"}},
		{"not KEY=VALUE", []string{"run", "--env", "FOO", "--", "true"}, 2, []string{`--env "FOO": want KEY=VALUE`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(tt.args, &out, &errOut)
			got := errOut.String()
			if tt.code == 0 {
				got = out.String()
			}
			if code != tt.code {
				t.Errorf("baton %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(tt.args, " "), code, tt.code, &out, &errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("baton %s: output lacks %q:\n%s", strings.Join(tt.args, " "), w, got)
				}
			}
		})
	}
}

// Every line of every command's help fits 80 columns, but for the
// examples (commands to copy whole) and the flag names.
func TestHelpFits80Columns(t *testing.T) {
	for _, c := range newRoot().Commands() {
		var out bytes.Buffer
		Main([]string{c.Name(), "--help"}, &out, &out)
		for _, line := range strings.Split(out.String(), "\n") {
			if utf8.RuneCountInString(line) > helpWidth {
				t.Errorf("baton %s --help: a line of %d columns:\n%s", c.Name(), utf8.RuneCountInString(line), line)
			}
		}
	}
}

// --workers says its default is the CPUs, not the count of the host
// that printed the help.
func TestWorkersHelpSaysCPUs(t *testing.T) {
	var out bytes.Buffer
	Main([]string{"run", "--help"}, &out, &out)
	help := strings.Join(strings.Fields(out.String()), " ")
	want := fmt.Sprintf("(default: one per CPU baton may run on, %d here)", runtime.NumCPU())
	if !strings.Contains(help, want) || strings.Contains(help, fmt.Sprintf("slots) (default %d)", runtime.NumCPU())) {
		t.Errorf("baton run --help does not say %q:\n%s", want, &out)
	}
}

// stuckWriter is a stderr whose reader has stopped: every write blocks
// until released.
type stuckWriter struct{ release chan struct{} }

func (w stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// TestMainExitsWhenStderrIsStuck: the last error's write gives up, so
// Main returns its exit code although nothing reads stderr.
func TestMainExitsWhenStderrIsStuck(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	defer close(w.release)
	codes := make(chan int, 1)
	go func() { codes <- Main([]string{"status", "--control", "/nonexistent/baton.sock"}, io.Discard, w) }()
	select {
	case code := <-codes:
		if code != 1 {
			t.Errorf("exit %d; want 1 (no baton answers)", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Main still writing its error to a stderr nobody reads after 10s; want it to give up after finalWriteTimeout")
	}
}
