package cli

import (
	"bytes"
	"strings"
	"testing"
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
