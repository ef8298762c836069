package cli

import (
	"strings"
	"testing"

	"github.com/baton-dev/baton/internal/instance"
)

// `baton run --help` lists every signal of the signal table, in lines
// that fit 80 columns.
func TestSignalHelp(t *testing.T) {
	help := signalHelp()
	for _, row := range instance.SignalDocs() {
		for _, name := range row.Names {
			if !strings.Contains(help, name) {
				t.Errorf("baton run --help does not list %s", name)
			}
		}
	}
	for _, line := range strings.Split(help, "\n") {
		if len(line) > 80 {
			t.Errorf("help line of %d columns: %q", len(line), line)
		}
	}
}
