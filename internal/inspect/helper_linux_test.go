package inspect

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// helperEnv makes the test binary a stand-in program (STYLE.md §6):
// "listen" ignores the sockets it inherits, listens on a port of its own,
// prints the address and waits to be killed (at most a minute).
const helperEnv = "INSPECT_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "listen" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr())
		// Nothing to observe: the helper holds its port until the test
		// kills it, and exits by itself if the test never does.
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dupFile duplicates ln's descriptor into a file for ExtraFiles, through
// SyscallConn rather than File (which would switch the socket to
// blocking mode).
func dupFile(t *testing.T, ln syscall.Conn) *os.File {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	var derr error
	if err := rc.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(os.NewSyscallError("fcntl", derr))
	}
	f := os.NewFile(uintptr(fd), "listener")
	t.Cleanup(func() { f.Close() })
	return f
}

// A wrapper script without exec, as a new user writes it: the worker is
// a shell, its child gets LISTEN_PID naming the shell, ignores the socket
// on fd 3 and listens on a port of its own; connections wait on baton's
// socket. The view warns about the wrapper, and that nobody accepts,
// naming both. The shell runs as sh -c, and as a script run directly
// (whose command name is the script's: the shell is its executable).
func TestInspectWrapperWithoutExec(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const body = `export LISTEN_FDS=1 LISTEN_PID=$$; "$0"; exit 0`
	script := filepath.Join(t.TempDir(), "run-it")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexport LISTEN_FDS=1 LISTEN_PID=$$\n\"$1\"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cmd   *exec.Cmd
		shell string // how the message names the worker
	}{
		{"sh -c", exec.Command("/bin/sh", "-c", body, self), "is sh, which runs pid "},
		{"a script run directly", exec.Command(script, self), "is run-it, a "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, ino := listenTCP(t, 64)
			addr := netip.MustParseAddrPort(ln.Addr().String())
			cmd := tc.cmd
			cmd.Env = append(os.Environ(), helperEnv+"=listen")
			cmd.ExtraFiles = []*os.File{dupFile(t, ln)}
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Skip("no /bin/sh:", err)
			}
			t.Cleanup(func() {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the shell and its child
				cmd.Wait()
			})
			own, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("the helper printed no address: %v", err)
			}
			own = strings.TrimSpace(own)
			dialN(t, addr.String(), 2)

			input := Input{
				Listeners: []Listener{{Name: "http", Protocol: TCP, Addr: addr, Backlog: 64, Sockets: []Socket{{Slot: Shared, Inode: ino}}}},
				Workers:   []Worker{{PID: cmd.Process.Pid, Slot: 0, Generation: 1, State: WorkerReady}},
			}
			in := New(Options{Persist: time.Nanosecond})
			defer in.Close()
			v := waitView(t, in, input, "not_accepting and wrapper_without_exec", func(v *View) bool {
				return len(withCode(v.Warnings, NotAccepting)) == 1 && len(withCode(v.Warnings, WrapperWithoutExec)) == 1
			})
			if len(v.Errors) != 0 {
				t.Errorf("errors: %q", v.Errors)
			}
			na := withCode(v.Warnings, NotAccepting)[0].Message
			for _, want := range []string{
				"2 connections have waited in the accept queue",
				fmt.Sprintf("worker slot 0 (pid %d) %s", cmd.Process.Pid, tc.shell),
				fmt.Sprintf("as its child instead of exec-ing it, so LISTEN_PID=%d names ", cmd.Process.Pid),
				"and listens on " + own + " itself",
				"Fix: end the wrapper script with exec (exec " + self,
			} {
				if !strings.Contains(na, want) {
					t.Errorf("not_accepting %q\nlacks %q", na, want)
				}
			}
			if w := withCode(v.Warnings, WrapperWithoutExec)[0].Message; !strings.Contains(w, "is a shell (") || !strings.Contains(w, "that runs pid") {
				t.Errorf("wrapper_without_exec %q", w)
			}
		})
	}
}

// descendants finds a child's child; readProc reads what it was started
// with.
func TestDescendantsAndReadProc(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", `sleep 60; exit 0`)
	cmd.Env = []string{"LISTEN_FDS=1", "LISTEN_PID=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Skip("no /bin/sh:", err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	var p proc
	batontest.WaitFor(t, 10*time.Second, func() error {
		kids, err := descendants(os.Getpid(), maxDescendants)
		if err != nil {
			return batontest.Stop(err)
		}
		for _, k := range kids {
			if p, err = readProc(k, true); err == nil && p.Comm == "sleep" && p.PPID == cmd.Process.Pid {
				return nil
			}
		}
		return fmt.Errorf("no sleep among the descendants %v", kids)
	})
	if p.ListenPID != 1 || !p.ListenFDs || p.Cmdline != "sleep 60" {
		t.Errorf("sleep: %+v, want LISTEN_PID 1, LISTEN_FDS, command line sleep 60", p)
	}
}
