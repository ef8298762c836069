package instance

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/baton-dev/baton/internal/supervisor"
)

// Every signal an operator may send has one meaning, listed in `baton run
// --help` (SignalDocs) and in the README's signal table.
func TestEverySignalIsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "\n## Signals\n")
	table, _, _ = strings.Cut(table, "\n## ")
	documented := map[string]bool{}
	for _, row := range SignalDocs() {
		for _, name := range row.Names {
			documented[name] = true
		}
	}
	seen := map[syscall.Signal]bool{}
	for _, e := range signalTable {
		for _, sig := range e.sigs {
			name := supervisor.SignalName(sig)
			if seen[sig] {
				t.Errorf("%s is in the signal table twice", name)
			}
			seen[sig] = true
			if !documented[name] {
				t.Errorf("SignalDocs does not list %s", name)
			}
			if !strings.Contains(table, "`"+name+"`") {
				t.Errorf("README.md's Signals section does not list `%s`", name)
			}
		}
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGABRT, syscall.SIGUSR1,
		syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGTERM, syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU} {
		if !seen[sig] {
			t.Errorf("%s, which an operator may send, has no meaning in the signal table", supervisor.SignalName(sig))
		}
	}
}

func TestSignalActions(t *testing.T) {
	for sig, want := range map[syscall.Signal]signalAction{
		syscall.SIGHUP: sigReload, syscall.SIGUSR2: sigUpgrade, syscall.SIGTERM: sigStop, syscall.SIGINT: sigStop,
		syscall.SIGQUIT: sigDrain, syscall.SIGABRT: sigAbort, syscall.SIGUSR1: sigLog, syscall.SIGPIPE: sigSilent,
		syscall.SIGTTOU: sigIgnored,
	} {
		if got := actionOf(sig); got != want {
			t.Errorf("actionOf(%s) = %d, want %d", supervisor.SignalName(sig), got, want)
		}
	}
}
