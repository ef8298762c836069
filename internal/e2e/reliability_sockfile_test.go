package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// sockfileCases: the socket files baton creates or changes as root (unix
// listeners, the control socket and its directory) against a worker user
// and another local user who try to make root act on their files, or to
// answer in baton's place.
var sockfileCases = []reliabilityCase{
	{"Security", "the worker user swaps a ?mode=0666 unix listener's socket file for a symlink to a root-only file, racing the start and before a reload that changes the mode in place", workerSwapsSocketFile},
	{"Security", "another user pre-creates the control directory of a non-root baton (mode 0777)", controlDirPremade},
	{"Security", "a fake control server of another user at the control path: reload and stop", fakeControlServer},
}

// The helper process of these cases is this test binary run as another
// user: TestSockfileHelper does what sockfileHelperEnv says.
const (
	sockfileHelperEnv = "BATON_E2E_SOCKFILE_HELPER" // swap or fake-control
	sockfileDirEnv    = "BATON_E2E_SOCKFILE_DIR"
	sockfileNameEnv   = "BATON_E2E_SOCKFILE_NAME"
	sockfileTargetEnv = "BATON_E2E_SOCKFILE_TARGET"
)

// TestSockfileHelper is not a test: it is the helper process of the
// Security cases, run as the worker user or another local user.
func TestSockfileHelper(t *testing.T) {
	switch os.Getenv(sockfileHelperEnv) {
	case "swap":
		os.Exit(swapWhenCreated(os.Getenv(sockfileDirEnv), os.Getenv(sockfileNameEnv), os.Getenv(sockfileTargetEnv)))
	case "fake-control":
		os.Exit(fakeControl(filepath.Join(os.Getenv(sockfileDirEnv), os.Getenv(sockfileNameEnv))))
	}
	t.Skip("the helper process of the Security reliability cases, not a test")
}

// swapWhenCreated waits (inotify) until a file called name appears in dir
// and at once replaces it with a symlink to target, made beforehand: what
// a worker user who can write to the socket's directory does to win the
// race between baton's bind(2) and its chmod(2). It prints "ready", then
// "swapped" or why not.
func swapWhenCreated(dir, name, target string) int {
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		fmt.Println("inotify:", err)
		return 1
	}
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_CREATE); err != nil {
		fmt.Println("inotify watch:", err)
		return 1
	}
	link := filepath.Join(dir, "."+name+".swap")
	os.Remove(link)
	if err := os.Symlink(target, link); err != nil {
		fmt.Println("symlink:", err)
		return 1
	}
	fmt.Println("ready")
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(in, buf)
		if err == unix.EINTR {
			continue // a signal of the Go runtime's own (SIGURG)
		}
		if err != nil {
			fmt.Println("read:", err)
			return 1
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if string(bytes.TrimRight(nameBytes, "\x00")) != name {
				continue
			}
			if err := os.Rename(link, filepath.Join(dir, name)); err != nil {
				fmt.Println("rename:", err)
				return 1
			}
			fmt.Println("swapped")
			return 0
		}
	}
}

// fakeControl serves a fake control socket at path (open to everyone):
// every request gets a success that looks like baton's. It prints "ready",
// then "conn N bytes" for each connection once it is closed.
func fakeControl(path string) int {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	os.Chmod(path, 0o777)
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			return 1
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		line, _ := r.ReadBytes('\n')
		n := len(line)
		if n > 0 {
			c.Write([]byte(`{"ok":true,"result":{"generation":2,"previous":1,"duration":1000000,"stopped":true}}` + "\n"))
		}
		rest, _ := io.Copy(io.Discard, r)
		c.Close()
		fmt.Printf("conn %d bytes\n", n+int(rest))
	}
}

// helperBin is a copy of this test binary that any user can run (go test
// builds it in a directory only its own user may enter).
func helperBin(t *testing.T) string {
	t.Helper()
	return binCopy(t, testBin, "e2e.test")
}

// helper is a running helper process and its output, line by line.
type helper struct {
	cmd   *exec.Cmd
	lines chan string
}

// startHelper runs the helper process as u in the given mode, and waits
// until it says "ready".
func startHelper(t *testing.T, u testUser, mode string, env ...string) *helper {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := u.command(ctx, helperBin(t), "-test.short", "-test.run=^TestSockfileHelper$")
	cmd.Env = append(cmd.Env, append(env, sockfileHelperEnv+"="+mode)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		cancel()
	})
	if got := h.next(t, 30*time.Second); got != "ready" {
		t.Fatalf("the %s helper as %s did not start: %q", mode, u.Name, got)
	}
	return h
}

// next is the helper's next line of output, or "" once it has exited or
// said nothing for the given time.
func (h *helper) next(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case l := <-h.lines:
		return l
	case <-time.After(within):
		return ""
	}
}

// rootOnlyFile is a file only root may read: what the worker user points
// a symlink at.
func rootOnlyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(shortDir(t), "shadow")
	if err := os.WriteFile(p, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkRootOnly fails the test unless the file is still root's, mode 0600.
func checkRootOnly(t *testing.T, p, when string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Mode&0o7777 != 0o600 {
		t.Errorf("%s: the root-only file is uid %d, mode %04o now; was root's, 0600", when, st.Uid, st.Mode&0o7777)
	}
}

func workerSwapsSocketFile(t *testing.T) string {
	worker := newTestUser(t)
	secret := rootOnlyFile(t)
	// The listener's directory is the worker user's, as /run/app often
	// is: that user can replace anything in it.
	sockDir := shortDir(t)
	if err := os.Chown(sockDir, worker.UID, worker.GID); err != nil {
		t.Fatal(err)
	}
	os.Chmod(sockDir, 0o755)
	sock := filepath.Join(sockDir, "admin.sock")
	confDir := shortDir(t)
	conf := filepath.Join(confDir, "baton.toml")
	config := func(command, mode string) string {
		return fmt.Sprintf(`command = [%s]
workers = 2
ready = "notify"
user = %q
[[listener]]
name = "http"
address = "tcp://127.0.0.1:0"
[[listener]]
name = "admin"
address = "unix://%s"
mode = %q
`, command, worker.Name, sock, mode)
	}

	// The start, raced: the worker user's inotify loop replaces the
	// socket file the moment bind(2) creates it.
	const starts = 8
	var won, lost int
	var refusal string
	writeConfig(t, conf, config(fmt.Sprintf("%q", helloBin), "0666"))
	for i := range starts {
		clearDir(t, sockDir)
		sw := startHelper(t, worker, "swap", sockfileDirEnv+"="+sockDir, sockfileNameEnv+"=admin.sock", sockfileTargetEnv+"="+secret)
		b := startBatonAt(t, filepath.Join(confDir, fmt.Sprintf("ctl%d.sock", i)), nil, "--config", conf)
		running := runsOrExits(t, b)
		swapped := sw.next(t, 5*time.Second) == "swapped"
		b.stop(20 * time.Second)
		checkRootOnly(t, secret, fmt.Sprintf("start %d", i))
		switch {
		case !running && swapped:
			won++
			refusal = lastLine(b.log.String())
			if !strings.Contains(refusal, "is a symlink to") || !strings.Contains(refusal, "not the file this socket is bound to") {
				t.Errorf("start %d: baton exited without saying the socket file was replaced:\n%s", i, b.log)
			}
		case !running:
			t.Fatalf("start %d: baton exited, but the swap did not happen:\n%s", i, b.log)
		default:
			lost++
		}
	}

	// Running, then swapped, then a reload that changes the mode in
	// place (keeping the socket).
	clearDir(t, sockDir)
	writeConfig(t, conf, config(fmt.Sprintf("%q", helloBin), "0666"))
	b := startBatonAt(t, filepath.Join(confDir, "ctl.sock"), nil, "--config", conf)
	b.waitReady(2)
	if !b.logHas("listener's directory lets another user replace its socket file") {
		t.Errorf("baton did not warn that the worker user can replace the socket file:\n%s", b.log)
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket file %s: %v, mode %v; want 0666", sock, err, fi.Mode().Perm())
	}
	fds, _ := resting(b)
	wait := startLoadUnderWay(b.addr("http"), 4*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := worker.command(ctx, "sh", "-c", `ln -s "$1" "$2.new" && mv -T "$2.new" "$2"`, "sh", secret, sock).CombinedOutput(); err != nil {
		t.Fatalf("swapping as %s: %v: %s", worker.Name, err, out)
	}
	writeConfig(t, conf, config(fmt.Sprintf("%q", helloBin), "0660"))
	out, code := b.cli("reload")
	if code != 0 {
		t.Errorf("reload: exit %d: %s", code, out)
	}
	b.waitReady(2)
	load := wait()
	checkLoad(t, load)
	checkRootOnly(t, secret, "after the reload")
	logged := ""
	for _, l := range strings.Split(b.log.String(), "\n") {
		if strings.Contains(l, "changing a kept listener in place failed") {
			logged = l
		}
	}
	if !strings.Contains(logged, "is a symlink to") {
		t.Errorf("baton did not log that it refused to change the swapped file:\n%s", b.log)
	}
	after, _ := resting(b)
	if after > fds {
		t.Errorf("baton holds %d descriptors at rest after the refused change, %d before", after, fds)
	}
	// The outcome names no temporary directory: they differ on every run.
	anon := strings.NewReplacer(sockDir+"/", "RUNDIR/", sockDir, "RUNDIR", filepath.Dir(secret)+"/", "ROOTDIR/")
	refusal, logged = anon.Replace(refusal), anon.Replace(logged)
	won2 := fmt.Sprintf("won %d of %d starts (baton refused to start: %q)", won, starts, clipText(refusal, 200))
	if won == 0 {
		won2 = fmt.Sprintf("lost all %d starts to the check", starts)
	}
	return withoutDir(b, fmt.Sprintf("the swap raced each start: it %s, lost %d (the file was verified first and the swap came after); swapped before a reload from mode 0666 to 0660: the reload succeeded, the mode change was refused and logged (%s); the root-only file kept root's 0600 throughout; %s requests served meanwhile, 0 failed; %d fds at rest before, %d after",
		won2, lost, clipText(logMessage(logged), 200), count(load.Requests), fds, after))
}

func controlDirPremade(t *testing.T) string {
	owner, other := newTestUser(t), newTestUser(t)
	shared := shortDir(t) // a /tmp of the test's own: sticky, open to all
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(shared, fmt.Sprintf("baton-%d", owner.UID))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := other.command(ctx, "mkdir", "-m", "0777", dir).CombinedOutput(); err != nil {
		t.Fatalf("mkdir as %s: %v: %s", other.Name, err, out)
	}
	cmd := owner.command(ctx, batonBin, "run", "--name", "web", "-l", "tcp://127.0.0.1:0", "-n", "1", "--", helloBin)
	cmd.Env = append(cmd.Env, "TMPDIR="+shared, "XDG_RUNTIME_DIR=")
	var out logBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		t.Fatalf("baton (as %s) started with a control directory made by %s (uid %d):\n%s", owner.Name, other.Name, other.UID, out.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("baton as %s: %v, want exit 1", owner.Name, err)
	}
	msg := lastLine(out.String())
	want := fmt.Sprintf("directory %s is owned by uid %d, neither root nor baton's user (uid %d)", dir, other.UID, owner.UID)
	if !strings.Contains(msg, want) || !strings.Contains(msg, "--control") {
		t.Errorf("baton's reason %q lacks %q and the fix", msg, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("baton left %d files in the other user's directory", len(entries))
	}
	said := strings.NewReplacer(shared+"/", "$TMPDIR/", strconv.Itoa(other.UID), "OTHER", strconv.Itoa(owner.UID), "UID").Replace(msg)
	return fmt.Sprintf("baton, run as a user whose $TMPDIR/baton-UID another user had made 0777, refused to start (exit 1) and made nothing in it: %q", clipText(said, 300))
}

func fakeControlServer(t *testing.T) string {
	owner, other := newTestUser(t), newTestUser(t)
	shared := shortDir(t)
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	// The other user made the directory and serves at the path where
	// owner's clients look ($TMPDIR/baton-UID/NAME.sock).
	dir := filepath.Join(shared, fmt.Sprintf("baton-%d", owner.UID))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := other.command(ctx, "mkdir", "-m", "0777", dir).CombinedOutput(); err != nil {
		t.Fatalf("mkdir as %s: %v: %s", other.Name, err, out)
	}
	fake := startHelper(t, other, "fake-control", sockfileDirEnv+"="+dir, sockfileNameEnv+"=web.sock")
	var told []string
	var said string
	for _, verb := range []string{"reload", "stop"} {
		cmd := owner.command(ctx, clientBin, verb, "--name", "web")
		cmd.Env = append(cmd.Env, "TMPDIR="+shared, "XDG_RUNTIME_DIR=")
		out, err := cmd.CombinedOutput()
		code := 0
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code == 0 {
			t.Errorf("baton %s (as %s) talking to a fake server of %s: %v, output %q; want it refused", verb, owner.Name, other.Name, err, out)
		}
		msg := lastLine(string(out))
		want := fmt.Sprintf("pid %d of uid %d, neither root nor you (uid %d)", fake.cmd.Process.Pid, other.UID, owner.UID)
		if !strings.Contains(msg, want) || !strings.Contains(msg, "nothing was sent") {
			t.Errorf("baton %s: %q lacks %q", verb, msg, want)
		}
		if got := fake.next(t, 10*time.Second); got != "conn 0 bytes" {
			t.Errorf("baton %s: the fake server says %q; want that it got nothing", verb, got)
		}
		told = append(told, fmt.Sprintf("%s exited %d", verb, code))
		said = msg
	}
	said = strings.NewReplacer(shared+"/", "$TMPDIR/", strconv.Itoa(fake.cmd.Process.Pid), "PID", strconv.Itoa(other.UID), "OTHER", strconv.Itoa(owner.UID), "UID").Replace(said)
	return fmt.Sprintf("another user served a fake control socket at $TMPDIR/baton-UID/web.sock: `baton reload` and `baton stop` checked SO_PEERCRED before sending anything (the fake got 0 bytes); %s, saying %q", strings.Join(told, ", "), clipText(said, 240))
}

// runsOrExits waits until baton either answers on its control socket
// (true) or has exited (false).
func runsOrExits(t *testing.T, b *instance) bool {
	t.Helper()
	ran := false
	err := batontest.Wait(60*time.Second, func() error {
		select {
		case <-b.done:
			return nil
		default:
		}
		if _, err := b.tryStatusOf(false); err != nil {
			return err
		}
		ran = true
		return nil
	})
	if err != nil {
		t.Fatalf("baton neither ran nor exited: %v\n%s", err, b.log)
	}
	return ran
}

// clearDir removes what is in dir.
func clearDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// clipText shortens s to at most n bytes for an outcome.
func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// logMessage is the err attribute of a log line, or the line.
func logMessage(line string) string {
	if _, v, ok := strings.Cut(line, "err="); ok {
		return strings.Trim(v, `"`)
	}
	return line
}
