package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/spawn"
)

// childEnv makes this test binary a pre-flight child (TestMain): its value
// says how it answers.
const childEnv = "TAKEOVER_TEST_PREFLIGHT"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(preflightChild(mode))
	}
	os.Exit(m.Run())
}

// testState is the state the tests hand over: a nonce, a version and
// descriptors, as baton's UpgradeState names them.
type testState struct {
	Nonce   string `json:"nonce"`
	Version int    `json:"version"`
	Fds     []int  `json:"fds"`
}

// preflightChild is the pre-flight run of a binary that behaves as mode
// says: a baton that checks the state and answers, or one of the ways a
// program that is not one (or not this version) fails the handshake.
func preflightChild(mode string) int {
	switch mode {
	case "exit0": // /bin/true: exit 0, no answer
		return 0
	case "hang": // until killed
		for {
			time.Sleep(time.Hour)
		}
	}
	in, err := Inherited()
	if err != nil || in == nil || !in.Preflight {
		fmt.Fprintln(os.Stderr, "no pre-flight state:", err)
		return 3
	}
	var st testState
	if err := json.Unmarshal(in.State, &st); err != nil {
		fmt.Fprintln(os.Stderr, "bad state:", err)
		return 3
	}
	// A baton checks every descriptor the state names: open, and a socket.
	h := Handshake{Nonce: st.Nonce, Version: st.Version}
	for _, fd := range st.Fds {
		if _, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			h.Error = fmt.Sprintf("fd %d is not a socket: %v", fd, err)
			break
		}
		h.Descriptors++
	}
	switch mode {
	case "baton":
	case "wrong-nonce":
		h.Nonce = "0123456789abcdef"
	case "wrong-version":
		h.Version++
	case "wrong-counts":
		h.Descriptors--
	case "cannot-read":
		h.Error = "state version 1; this baton reads version 2"
	case "stdout": // the right answer, but on stdout
		json.NewEncoder(os.Stdout).Encode(h)
		return 0
	case "answer-then-fail":
		in.Answer(h)
		fmt.Fprintln(os.Stderr, "baton: crashed after answering")
		return 4
	case "garbage":
		in.answer.Write([]byte("OK\n"))
		return 0
	}
	if err := in.Answer(h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	if h.Error != "" {
		fmt.Fprintln(os.Stderr, "baton: pre-flight:", h.Error)
		return 1
	}
	return 0
}

var (
	spawnerOnce sync.Once
	spawner     *spawn.Spawner
)

// testSpawner is the package's one Spawner (its reaper collects every
// child of the process).
func testSpawner() *spawn.Spawner {
	spawnerOnce.Do(func() { spawner = spawn.New() })
	return spawner
}

// socketPair returns two connected unix sockets, closed when the test ends.
func socketPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

// preflightOf runs the pre-flight of bin (with this test binary's
// arguments) over a state naming two sockets, and returns its error.
// closeOriginals closes the state's descriptors once held, as a worker's
// exit may during a real pre-flight.
func preflightOf(t *testing.T, bin *Binary, closeOriginals bool) error {
	t.Helper()
	a, b := socketPair(t), socketPair(t)
	st := testState{Nonce: NewNonce(), Version: 1, Fds: []int{a[0], b[0]}}
	state, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	held, err := Hold(st.Fds)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if closeOriginals {
		// The numbers are free now; the pre-flight still sees the copies
		// under them.
		unix.Close(a[0])
		unix.Close(b[0])
		a[0], b[0] = -1, -1
	}
	want := Handshake{Nonce: st.Nonce, Version: st.Version, Descriptors: len(st.Fds)}
	return Preflight(context.Background(), testSpawner(), bin, os.Args, state, held, want)
}

// self opens this test binary as the new binary.
func self(t *testing.T) *Binary {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := OpenBinary(exe)
	if err != nil {
		t.Fatalf("OpenBinary(%s): %v", exe, err)
	}
	t.Cleanup(func() { bin.Close() })
	return bin
}

func TestPreflightHandshake(t *testing.T) {
	tests := []struct {
		mode     string
		notBaton bool   // the error wraps ErrNotBaton
		want     string // in the error; "" for none
	}{
		{"baton", false, ""},
		{"exit0", true, "exited 0 without answering the pre-flight handshake: not a baton, or a baton too old to read state version 1"},
		{"stdout", true, "exited 0 without answering the pre-flight handshake"},
		{"wrong-nonce", true, `nonce "0123456789abcdef", not the one in the state`},
		{"wrong-version", true, "read state version 2, but was given version 1"},
		{"wrong-counts", true, "checked 0 listeners (0 sockets), 0 workers and 1 descriptors, but was handed 0 listeners (0 sockets), 0 workers and 2 descriptors"},
		{"cannot-read", false, "cannot take over this baton (state version 1): state version 1; this baton reads version 2"},
		{"garbage", true, `answered the pre-flight handshake with "OK", which is not a handshake`},
		{"answer-then-fail", false, "answered the pre-flight handshake, then exited with status 4: crashed after answering"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			t.Setenv(childEnv, tt.mode)
			err := preflightOf(t, self(t), false)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Preflight of a baton that answers right: %v", err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("Preflight passed; want an error with %q", tt.want)
			case !strings.Contains(err.Error(), tt.want):
				t.Errorf("Preflight error %q; want it to say %q", err, tt.want)
			}
			if got := errors.Is(err, ErrNotBaton); got != tt.notBaton {
				t.Errorf("errors.Is(%q, ErrNotBaton) = %v, want %v", err, got, tt.notBaton)
			}
		})
	}
}

// TestPreflightOfBinTrue is finding 6 of issue 16: /bin/true exits 0, which
// was all the pre-flight wanted.
func TestPreflightOfBinTrue(t *testing.T) {
	path, err := filepath.EvalSymlinks("/bin/true")
	if err != nil {
		t.Skip("no /bin/true:", err)
	}
	bin, err := OpenBinary(path)
	if err != nil {
		t.Skipf("OpenBinary(%s): %v", path, err)
	}
	defer bin.Close()
	err = preflightOf(t, bin, false)
	if !errors.Is(err, ErrNotBaton) || !strings.Contains(err.Error(), "exited 0 without answering the pre-flight handshake") {
		t.Errorf("Preflight of /bin/true: %v; want it refused as not a baton", err)
	}
}

// TestPreflightSeesHeldDescriptors: what the pre-flight checks is the
// state's descriptors as they were when held, even once the originals
// have closed.
func TestPreflightSeesHeldDescriptors(t *testing.T) {
	t.Setenv(childEnv, "baton")
	before := batontest.NumFDs(t)
	t.Run("closed originals", func(t *testing.T) {
		if err := preflightOf(t, self(t), true); err != nil {
			t.Fatalf("Preflight with the originals closed: %v", err)
		}
	})
	// Everything of the pre-flight is closed, the test's own too.
	if after := batontest.NumFDs(t); after > before {
		t.Errorf("%d descriptors open after the pre-flight, %d before", after, before)
	}
}

func TestOpenBinaryRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"relative", "baton", "not an absolute path"},
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"directory", dir, "is not a regular file (a directory)"},
		{"fifo", fifo, "is not a regular file (a FIFO)"}, // and the open did not block
		{"not executable", write("plain", "\x7fELF....", 0o644), "is not executable"},
		{"script", write("script", "#!/bin/sh\nexit 0\n", 0o755), "is a #! script"},
		{"not ELF", write("junk", "MZ\x90\x00", 0o755), "does not start with the ELF magic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := OpenBinary(tt.path)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBinary(%s) succeeded; want %q", tt.path, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("OpenBinary(%s): %v; want %q", tt.path, err, tt.want)
			}
		})
	}
}

// TestOpenBinaryUntrusted: root does not execute a file another user can
// change, nor one in a directory another user can write.
func TestOpenBinaryUntrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the trust check applies when baton runs as root; run the tests as root")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	elf, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(path string, mode os.FileMode, uid int) string {
		if err := os.WriteFile(path, elf, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, uid, -1); err != nil {
			t.Fatal(err)
		}
		return path
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	tests := []struct{ name, path string }{
		{"group-writable file", put(filepath.Join(dir, "gw"), 0o775, 0)},
		{"another user's file", put(filepath.Join(dir, "theirs"), 0o755, 65534)},
		{"world-writable directory", put(filepath.Join(open, "baton"), 0o755, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := OpenBinary(tt.path)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBinary(%s) succeeded", tt.path)
			}
			if !errors.Is(err, pathtrust.ErrUntrusted) || !strings.Contains(err.Error(), "will not execute a file another user can change") {
				t.Errorf("OpenBinary(%s): %v; want a pathtrust refusal", tt.path, err)
			}
		})
	}
	// The same file, made safe, is accepted.
	ok := put(filepath.Join(dir, "ok"), 0o755, 0)
	b, err := OpenBinary(ok)
	if err != nil {
		t.Fatalf("OpenBinary(%s), root's 0755 file in a safe directory: %v", ok, err)
	}
	b.Close()
}

// TestPreflightRunsTheOpenedFile: a file put at the path once baton has
// opened the binary is not what runs (the path-based pre-flight and
// execve ran whatever was there at each moment).
func TestPreflightRunsTheOpenedFile(t *testing.T) {
	t.Setenv(childEnv, "baton")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "baton")
	copyFile(t, exe, path)
	bin, err := OpenBinary(path)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	// Swapped: /bin/true (exits 0, answers nothing) is at the path now.
	swap := filepath.Join(dir, "swap")
	copyFile(t, "/bin/true", swap)
	if err := os.Rename(swap, path); err != nil {
		t.Fatal(err)
	}
	if err := preflightOf(t, bin, false); err != nil {
		t.Errorf("Preflight after the path was swapped: %v; want the opened file (a baton) to have run", err)
	}
}

// copyFile copies an executable.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Skipf("reading %s: %v", from, err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestPreflightCancelled: a pre-flight cut short (the client hung up)
// kills the child and says so, instead of blaming the binary.
func TestPreflightCancelled(t *testing.T) {
	t.Setenv(childEnv, "hang")
	bin := self(t)
	a := socketPair(t)
	st := testState{Nonce: NewNonce(), Version: 1, Fds: []int{a[0]}}
	state, _ := json.Marshal(st)
	held, err := Hold(st.Fds)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	err = Preflight(ctx, testSpawner(), bin, os.Args, state, held, Handshake{Nonce: st.Nonce, Version: 1, Descriptors: 1})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrNotBaton) {
		t.Errorf("Preflight cancelled: %v; want it to say it was cancelled", err)
	}
}
