package upgrade

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/spawn"
)

// The environment variables through which a baton hands its state to the
// binary it runs. They are baton's own: a user who sets them gets an
// error, not an upgrade.
const (
	// upgradeEnv is the number of the memfd holding the state, in the
	// binary baton re-executed itself as.
	upgradeEnv = "BATON_INTERNAL_UPGRADE"
	// upgradeIDEnv is the upgrade's nonce, in the same: `baton upgrade`
	// finds it in /proc/PID/environ to tell that the execve happened.
	upgradeIDEnv = "BATON_INTERNAL_UPGRADE_ID"
	// preflightEnv is the number of the memfd holding the state, in a
	// pre-flight run.
	preflightEnv = "BATON_INTERNAL_PREFLIGHT"
	// answerEnv is the number of the pipe a pre-flight run answers the
	// handshake on (Handshake).
	answerEnv = "BATON_INTERNAL_PREFLIGHT_ANSWER"
)

// PreflightTimeout bounds the pre-flight run of a new binary.
const PreflightTimeout = 30 * time.Second

// MaxAnswer bounds a pre-flight's answer.
const MaxAnswer = 4 << 10

// ErrNotBaton is wrapped by the error of a pre-flight whose binary did not
// answer the handshake as a baton that read the state: it is not a baton,
// a baton too old to answer, or one that cannot read this state version.
var ErrNotBaton = errors.New("not a baton")

// Handshake is the answer of a pre-flight run, one JSON line on the
// descriptor named by BATON_INTERNAL_PREFLIGHT_ANSWER (never stdout,
// which anything can write to): the nonce found in the state, the state
// version read, and how many of each thing it checked. The running baton
// compares it with what it handed over (Preflight); anything else, exit 0
// without an answer included, refuses the upgrade.
type Handshake struct {
	Nonce   string `json:"nonce"`
	Version int    `json:"version"`
	// What was checked: listener groups, their sockets (each adopted as
	// the listener kind and address recorded), workers (alive or gone),
	// and every descriptor the state names (open).
	Listeners   int `json:"listeners"`
	Sockets     int `json:"sockets"`
	Workers     int `json:"workers"`
	Descriptors int `json:"descriptors"`
	// Error, when set, says why this binary cannot take the state over.
	Error string `json:"error,omitempty"`
}

// counts is h's counts in words, for messages.
func (h Handshake) counts() string {
	return fmt.Sprintf("%d listeners (%d sockets), %d workers and %d descriptors", h.Listeners, h.Sockets, h.Workers, h.Descriptors)
}

// Summary says what a pre-flight checked, for the user.
func (h Handshake) Summary() string {
	return fmt.Sprintf("it read state version %d and checked %s", h.Version, h.counts())
}

// NewNonce returns a random nonce for a handshake.
func NewNonce() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b)
}

// Inheritance is what a previous baton handed to this process: the state,
// and whether this is a pre-flight run (check the state, answer the
// handshake, change nothing, exit) rather than the upgrade itself.
type Inheritance struct {
	State     []byte
	Preflight bool
	// answer is the pre-flight's answer descriptor; nil for the upgrade
	// itself, and for the pre-flight of a baton older than the
	// handshake, which only wants exit 0.
	answer *os.File
}

// Inherited returns what a previous baton handed to this process, or nil
// when there is none. It takes the descriptors and removes the variables,
// so it works once. After an upgrade it also names the process after its
// binary again (the execve of /proc/self/fd/N named it "N").
func Inherited() (*Inheritance, error) {
	env, preflight := upgradeEnv, false
	v, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		env, preflight = preflightEnv, true
		if v, ok = os.LookupEnv(preflightEnv); !ok {
			return nil, nil
		}
	}
	ans, hasAnswer := os.LookupEnv(answerEnv)
	for _, e := range []string{upgradeEnv, upgradeIDEnv, preflightEnv, answerEnv} {
		os.Unsetenv(e)
	}
	in := &Inheritance{Preflight: preflight}
	if hasAnswer && preflight {
		fd, err := envFd(answerEnv, ans)
		if err != nil {
			return nil, err
		}
		in.answer = os.NewFile(uintptr(fd), "baton-preflight-answer")
		unix.CloseOnExec(fd)
	}
	fd, err := envFd(env, v)
	if err != nil {
		in.closeAnswer()
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "baton-handover")
	defer f.Close()
	if in.State, err = io.ReadAll(io.LimitReader(f, 64<<20)); err != nil {
		in.closeAnswer()
		return nil, fmt.Errorf("reading the state a previous baton handed over (fd %d): %w", fd, err)
	}
	if !preflight {
		nameAfterBinary()
	}
	return in, nil
}

// envFd parses one of baton's descriptor variables.
func envFd(env, v string) (int, error) {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return -1, fmt.Errorf("%s=%q: not a descriptor; this is baton's internal variable, do not set it", env, v)
	}
	return fd, nil
}

// nameAfterBinary sets the process name (/proc/self/comm, what ps and
// pgrep show) to its binary's file name, as an execve of the path would
// have. Best effort: only the name is at stake.
func nameAfterBinary() {
	name := filepath.Base(os.Args[0])
	if len(name) > 15 {
		name = name[:15] // TASK_COMM_LEN - 1: the kernel would truncate it
	}
	os.WriteFile("/proc/self/comm", []byte(name), 0)
}

// Answer answers the running baton's handshake (a pre-flight run does,
// once it has checked the state) and closes the descriptor. It is a no-op
// when the running baton is older than the handshake and asked for none.
func (in *Inheritance) Answer(h Handshake) error {
	if in.answer == nil {
		return nil
	}
	defer in.closeAnswer()
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if _, err := in.answer.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("answering the running baton's pre-flight handshake: %w", err)
	}
	return nil
}

func (in *Inheritance) closeAnswer() {
	if in.answer != nil {
		in.answer.Close()
		in.answer = nil
	}
}

// Binary is a new baton binary, opened once: its pre-flight and the
// execve run that very file (through /proc/self/fd), so that a file
// swapped in at the path in between is not what runs.
type Binary struct {
	Path string // as asked for, absolute
	f    *os.File
}

// OpenBinary opens the binary at path for an upgrade. It refuses what is
// not a regular, executable ELF file (a #! script would run an
// interpreter found by path, which the pre-flight did not check), and,
// when baton runs as root, a file that another user could change or
// replace (pathtrust.File: the file and every directory up to / owned by
// root or baton's user, not writable by group or others). The caller
// closes it.
func OpenBinary(path string) (*Binary, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("new binary %q: not an absolute path; give its full path", path)
	}
	// O_NONBLOCK: a FIFO put at the path must not block this open.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("new binary %s: %w", path, os.NewSyscallError("open", err))
	}
	b := &Binary{Path: path, f: os.NewFile(uintptr(fd), path)}
	if err := b.check(); err != nil {
		b.Close() // not handed to anyone
		return nil, err
	}
	return b, nil
}

func (b *Binary) check() error {
	var st unix.Stat_t
	if err := unix.Fstat(b.fd(), &st); err != nil {
		return fmt.Errorf("new binary %s: %w", b.Path, os.NewSyscallError("fstat", err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("new binary %s is not a regular file (%s); give the path of the baton binary itself", b.Path, fileType(st.Mode))
	}
	if st.Mode&0o111 == 0 {
		return fmt.Errorf("new binary %s is not executable (mode %04o); chmod +x it", b.Path, st.Mode&0o7777)
	}
	magic := make([]byte, 4)
	if n, _ := unix.Pread(b.fd(), magic, 0); n < 4 || !bytes.Equal(magic, []byte("\x7fELF")) {
		what := "it does not start with the ELF magic"
		if bytes.HasPrefix(magic[:max(n, 0)], []byte("#!")) {
			what = "it is a #! script, whose interpreter baton would not have checked"
		}
		return fmt.Errorf("new binary %s is not an ELF executable (%s); give the path of the baton binary itself", b.Path, what)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	// Root executes it: nobody but root and baton's user may be able to
	// change it or swap it, now or before the execve.
	if err := pathtrust.File(b.Path); err != nil {
		return fmt.Errorf("new binary %s: baton runs as root and will not execute a file another user can change: %w", b.Path, err)
	}
	// The checked path must lead to the file opened, not one swapped in
	// after the open.
	var at unix.Stat_t
	if err := unix.Stat(b.Path, &at); err != nil {
		return fmt.Errorf("new binary %s: %w", b.Path, os.NewSyscallError("stat", err))
	}
	if at.Dev != st.Dev || at.Ino != st.Ino {
		return fmt.Errorf("new binary %s was replaced while baton checked it; try again once it stays in place", b.Path)
	}
	return nil
}

// fileType names the type in a stat mode.
func fileType(mode uint32) string {
	return map[uint32]string{
		unix.S_IFDIR: "a directory", unix.S_IFIFO: "a FIFO", unix.S_IFSOCK: "a socket",
		unix.S_IFCHR: "a character device", unix.S_IFBLK: "a block device", unix.S_IFLNK: "a symlink",
	}[mode&unix.S_IFMT]
}

// fd is the binary's descriptor; it stays owned by b.
func (b *Binary) fd() int {
	fd := -1
	if rc, err := b.f.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// Close closes the binary's descriptor.
func (b *Binary) Close() error { return b.f.Close() }

// Held are copies of a baton's descriptors for a pre-flight, each to
// appear in the pre-flight under the number the state names it by. They
// are taken on the supervisor's loop with the state, so a descriptor that
// closes during the pre-flight, and a number used again for something
// else, change nothing of what the pre-flight sees.
type Held struct {
	at map[int]int // number in the state → copy held here
}

// Hold copies every descriptor in fds (F_DUPFD_CLOEXEC). The caller
// closes the result.
func Hold(fds []int) (*Held, error) {
	h := &Held{at: map[int]int{}}
	for _, fd := range fds {
		if _, ok := h.at[fd]; ok {
			continue
		}
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			h.Close() // the copies made so far
			return nil, fmt.Errorf("copying descriptor %d for the pre-flight: %w", fd, os.NewSyscallError("fcntl", err))
		}
		h.at[fd] = dup
	}
	return h, nil
}

// Close closes the copies.
func (h *Held) Close() {
	for _, dup := range h.at {
		unix.Close(dup)
	}
	h.at = nil
}

// memfd puts state in a memory file, without close-on-exec when it must
// survive an execve.
func memfd(state []byte, cloexec bool) (int, error) {
	flags := 0
	if cloexec {
		flags = unix.MFD_CLOEXEC
	}
	fd, err := unix.MemfdCreate("baton-handover", flags)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	for b := state; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			unix.Close(fd) // not handed to anyone yet
			return -1, os.NewSyscallError("write", err)
		}
		b = b[n:]
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("lseek", err)
	}
	return fd, nil
}

// Preflight runs bin in pre-flight mode with argv (argv[0] is replaced),
// giving it state and the held descriptors under the numbers the state
// names them by, and waits for it (at most PreflightTimeout). It returns
// nil only when the binary answered the handshake with want: the nonce
// that is in the state, the state version, and the same counts of what it
// checked, and exited 0. Otherwise the error says what it did instead and
// quotes its output; it wraps ErrNotBaton when no valid answer came.
func Preflight(ctx context.Context, sp *spawn.Spawner, bin *Binary, argv []string, state []byte, held *Held, want Handshake) error {
	mfd, err := memfd(state, true)
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	out, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer out.Close()
	defer outW.Close() // closed at once after the start too; twice is harmless
	ans, ansW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer ans.Close()
	defer ansW.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()

	// The child's descriptors: the held copies under their numbers in the
	// state, then the state, the answer pipe and the binary itself above
	// all of them (the execve of /proc/self/fd/N happens after the
	// descriptors have been moved into place).
	top := 2
	for fd := range held.at {
		top = max(top, fd)
	}
	childState, childAnswer, childBin := top+1, top+2, top+3
	files := make([]int, top+4)
	for i := range files {
		files[i] = -1
	}
	files[0], files[1], files[2] = int(devnull.Fd()), int(outW.Fd()), int(outW.Fd())
	for fd, dup := range held.at {
		files[fd] = dup
	}
	files[childState], files[childAnswer], files[childBin] = mfd, int(ansW.Fd()), bin.fd()
	env := append(os.Environ(), preflightEnv+"="+strconv.Itoa(childState), answerEnv+"="+strconv.Itoa(childAnswer))
	exited := make(chan spawn.Exit, 1)
	p, err := sp.Start(spawn.Spec{Path: "/proc/self/fd/" + strconv.Itoa(childBin), Args: append([]string{bin.Path}, argv[1:]...), Env: env, Files: files, Direct: true},
		func(e spawn.Exit) { exited <- e })
	// The child has its copies: EOF once it (and whatever it started)
	// has exited.
	outW.Close()
	ansW.Close()
	if err != nil {
		return fmt.Errorf("starting %s: %w", bin.Path, err)
	}
	output := readAsync(out, 64<<10)
	answer := readAsync(ans, MaxAnswer+1)
	limit := time.NewTimer(PreflightTimeout)
	defer limit.Stop()
	var e spawn.Exit
	select {
	case e = <-exited:
	case <-limit.C:
		p.SignalGroup(unix.SIGKILL)
		<-exited
		return fmt.Errorf("%s did not answer and exit within %s: %w, or a baton that is stuck", bin.Path, PreflightTimeout, ErrNotBaton)
	case <-ctx.Done():
		// The client went away, or baton stops.
		p.SignalGroup(unix.SIGKILL)
		<-exited
		return fmt.Errorf("pre-flight of %s cancelled: %w", bin.Path, ctx.Err())
	}
	// What it wrote is in the pipes; a process it left behind holding
	// them must not hold this up.
	out.SetReadDeadline(time.Now().Add(time.Second))
	ans.SetReadDeadline(time.Now().Add(time.Second))
	msg := strings.TrimSpace(string(bytes.TrimPrefix(<-output, []byte("baton: "))))
	if msg == "" {
		msg = "none"
	}
	return judge(bin.Path, e, <-answer, want, msg)
}

// readAsync reads r to its end (at most limit bytes) on a goroutine.
func readAsync(r io.Reader, limit int64) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, limit))
		ch <- b
	}()
	return ch
}

// judge decides a pre-flight from its exit, its answer and its output.
func judge(path string, e spawn.Exit, answer []byte, want Handshake, output string) error {
	ok := e.Status.Exited() && e.Status.ExitStatus() == 0
	var got Handshake
	line, _, _ := bytes.Cut(answer, []byte("\n"))
	switch {
	case len(answer) == 0 && ok:
		return fmt.Errorf("%s exited 0 without answering the pre-flight handshake: %w, or a baton too old to read state version %d (its output: %s)", path, ErrNotBaton, want.Version, output)
	case len(answer) == 0:
		return fmt.Errorf("%s %s without answering the pre-flight handshake: %w, or a baton that cannot read state version %d: %s", path, describe(e), ErrNotBaton, want.Version, output)
	case len(answer) > MaxAnswer || json.Unmarshal(line, &got) != nil:
		return fmt.Errorf("%s answered the pre-flight handshake with %q, which is not a handshake: %w that reads state version %d", path, clip(answer), ErrNotBaton, want.Version)
	case got.Nonce != want.Nonce:
		return fmt.Errorf("%s answered the pre-flight handshake with nonce %q, not the one in the state it was given: %w that read this state", path, clip([]byte(got.Nonce)), ErrNotBaton)
	case got.Error != "":
		return fmt.Errorf("%s cannot take over this baton (state version %d): %s", path, want.Version, got.Error)
	case got.Version != want.Version:
		return fmt.Errorf("%s read state version %d, but was given version %d: %w that reads it", path, got.Version, want.Version, ErrNotBaton)
	case got.Listeners != want.Listeners || got.Sockets != want.Sockets || got.Workers != want.Workers || got.Descriptors != want.Descriptors:
		return fmt.Errorf("%s checked %s, but was handed %s: %w that read this state", path, got.counts(), want.counts(), ErrNotBaton)
	case !ok:
		return fmt.Errorf("%s answered the pre-flight handshake, then %s: %s", path, describe(e), output)
	}
	return nil
}

// clip shortens what a foreign program wrote, for a message.
func clip(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

func describe(e spawn.Exit) string {
	if e.Status.Signaled() {
		return "was killed by " + unix.SignalName(e.Status.Signal())
	}
	return fmt.Sprintf("exited with status %d", e.Status.ExitStatus())
}

// Exec re-executes this process as bin, the file opened and pre-flighted,
// with argv (argv[0] replaced by its path), handing it state and the
// descriptors in fds (close-on-exec cleared). id, the upgrade's nonce,
// goes in the environment, where `baton upgrade` looks for it. The pid
// stays. It returns only on failure, with close-on-exec set again.
func Exec(sp *spawn.Spawner, bin *Binary, argv []string, state []byte, fds []int, id string) error {
	mfd, err := memfd(state, false)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			restore(fds, mfd)
			return fmt.Errorf("keeping fd %d open across the execve: %w", fd, os.NewSyscallError("fcntl", err))
		}
	}
	env := append(os.Environ(), upgradeEnv+"="+strconv.Itoa(mfd), upgradeIDEnv+"="+id)
	// The path is resolved before the binary's descriptor (close-on-exec)
	// closes; an ELF binary needs nothing more of it.
	err = sp.Exec("/proc/self/fd/"+strconv.Itoa(bin.fd()), append([]string{bin.Path}, argv[1:]...), env)
	restore(fds, mfd)
	return fmt.Errorf("re-executing %s: %w", bin.Path, err)
}

func restore(fds []int, mfd int) {
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	unix.Close(mfd)
}

// Upgraded reports whether the process pid has re-executed itself for the
// upgrade whose nonce is id: it finds id in /proc/PID/environ, which root
// and baton's own user may read. The error says why it cannot tell.
func Upgraded(pid int, id string) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false, err
	}
	want := upgradeIDEnv + "=" + id
	for _, kv := range bytes.Split(b, []byte{0}) {
		if string(kv) == want {
			return true, nil
		}
	}
	return false, nil
}
