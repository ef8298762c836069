package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/supervisor"
)

// fakeBatonEnv makes this test binary, run as the new binary of an
// upgrade, a fake baton: its pre-flight answers the handshake as a baton
// would, and once baton has re-executed itself as it, it hangs ("hang")
// or exits 1 ("exit") instead of serving. baton hands its environment on
// to both runs.
const fakeBatonEnv = "E2E_FAKE_BATON"

// init runs before TestMain: the fake baton must act before the test
// binary parses baton's command line as its flags.
func init() {
	if mode := os.Getenv(fakeBatonEnv); mode != "" && (os.Getenv("BATON_INTERNAL_PREFLIGHT") != "" || os.Getenv("BATON_INTERNAL_UPGRADE") != "") {
		os.Exit(fakeBaton(mode))
	}
}

// fakeBaton speaks the pre-flight handshake by hand (the state's nonce
// and version, and its counts, on the answer descriptor), so the
// pre-flight passes; after the execve it does what mode says.
func fakeBaton(mode string) int {
	v, preflight := os.LookupEnv("BATON_INTERNAL_PREFLIGHT")
	if !preflight {
		for mode == "hang" { // holds every socket, answers nothing, until killed
			time.Sleep(time.Hour)
		}
		fmt.Fprintln(os.Stderr, "fake baton: exiting instead of taking over")
		return 1
	}
	fd, _ := strconv.Atoi(v)
	state, err := io.ReadAll(os.NewFile(uintptr(fd), "state"))
	if err != nil {
		return 3
	}
	var h supervisor.UpgradeState
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if json.Unmarshal(state, &h) != nil || json.Unmarshal(state, &nonce) != nil {
		return 3
	}
	sockets := 0
	for _, l := range h.Listeners {
		sockets += len(l.Sockets)
	}
	if a, ok := os.LookupEnv("BATON_INTERNAL_PREFLIGHT_ANSWER"); ok {
		afd, _ := strconv.Atoi(a)
		json.NewEncoder(os.NewFile(uintptr(afd), "answer")).Encode(map[string]any{
			"nonce": nonce.Nonce, "version": h.Version, "listeners": len(h.Listeners), "sockets": sockets,
			"workers": len(h.Workers), "descriptors": len(h.Fds()),
		})
	}
	return 0
}

// TestUpgradeToABatonThatNeverAnswers: baton upgrade reports within
// seconds, not its two-minute --timeout, when the binary baton
// re-executed itself as never answers again, and says that the old baton
// is gone.
func TestUpgradeToABatonThatNeverAnswers(t *testing.T) {
	requireE2E(t)
	tests := []struct {
		mode string
		want []string // all in the output
	}{
		{"hang", []string{"re-executed itself as " + testBin + " (the old baton is gone), and the new one has not answered"}},
		{"exit", []string{"nothing serves its listeners"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			b := startBaton(t, []string{fakeBatonEnv + "=" + tt.mode}, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
			b.waitReady(1)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, code, took, err := clientOut(exec.CommandContext(ctx, clientBin, "upgrade", "--binary", testBin, "--control", b.ctl))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("baton upgrade to a baton that %ss: exit %d after %s: %s", tt.mode, code, took.Round(time.Millisecond), out)
			if code != 1 || !strings.Contains(out, "pre-flight of "+testBin+" passed") {
				t.Errorf("exit %d, %q; want the pre-flight passed, then exit 1", code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q does not say %q", out, w)
				}
			}
			// The bound is 20s of silence after the pre-flight; the
			// client's --timeout is 2 minutes.
			if took > time.Minute {
				t.Errorf("baton upgrade took %s to report a baton that never answers", took.Round(time.Second))
			}
		})
	}
}
