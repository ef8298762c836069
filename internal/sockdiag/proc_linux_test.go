package sockdiag

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestSocketInodesSelf(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fd, ino := connFD(t, ln.(*net.TCPListener))
	f, err := os.Open(os.Args[0]) // an fd that is not a socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Stat(os.Args[0], &st); err != nil {
		t.Fatal(err)
	}

	socks, err := SocketInodes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := socks[ino]; !ok || got != fd {
		t.Errorf("SocketInodes: inode %d → fd %d (found %v), want fd %d", ino, got, ok, fd)
	}
	if _, ok := socks[st.Ino]; ok {
		t.Errorf("SocketInodes lists the test binary's inode %d, which is no socket", st.Ino)
	}

	// A second fd for the same socket: SocketInodes keeps the lowest,
	// Owners lists both.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, fd+100)
	if err != nil {
		t.Fatal(os.NewSyscallError("fcntl", err))
	}
	t.Cleanup(func() { unix.Close(dup) })
	socks, err = SocketInodes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if socks[ino] != fd {
		t.Errorf("SocketInodes after dup to %d: fd %d, want the lower %d", dup, socks[ino], fd)
	}
	owners, err := Owners(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := []Owner{{PID: os.Getpid(), FD: fd}, {PID: os.Getpid(), FD: dup}}
	if diff := cmp.Diff(want, owners[ino]); diff != "" {
		t.Errorf("Owners (-want +got):\n%s", diff)
	}
}

// A socket shared by two processes (as a listener is by baton and its
// workers) has an Owner in each.
func TestOwnersShared(t *testing.T) {
	ln := listenTCP(t, "127.0.0.1", 0, 8, false)
	fd, ino := ln.fd, ln.ino
	// Hand the child a dup as its fd 3. (exec flips the dup's open file
	// description to blocking; nothing here accepts on it.)
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(os.NewSyscallError("fcntl", err))
	}
	f := os.NewFile(uintptr(dup), "listener")
	t.Cleanup(func() { f.Close() })
	h, _ := startHelper(t, "idle", "", f)

	owners, err := Owners(os.Getpid(), h.pid)
	if err != nil {
		t.Fatal(err)
	}
	got := owners[ino]
	// Our own fds: the listener and the dup we still hold.
	want := []Owner{{PID: os.Getpid(), FD: min(fd, dup)}, {PID: os.Getpid(), FD: max(fd, dup)}, {PID: h.pid, FD: 3}}
	if h.pid < os.Getpid() {
		want = []Owner{want[2], want[0], want[1]}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Owners (-want +got):\n%s", diff)
	}
}

func TestOwnersExited(t *testing.T) {
	h, _ := startHelper(t, "idle", "")
	h.stop()
	if _, err := SocketInodes(h.pid); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SocketInodes of exited process %d: %v, want an error wrapping fs.ErrNotExist", h.pid, err)
	}
	owners, err := Owners(h.pid)
	if err != nil || len(owners) != 0 {
		t.Errorf("Owners of exited process %d: %v, %v; want nothing and no error", h.pid, owners, err)
	}
}

func TestAllPIDs(t *testing.T) {
	pids, err := AllPIDs()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range pids {
		found = found || p == os.Getpid()
	}
	if !found || pids[0] < 1 {
		t.Errorf("AllPIDs = %v... (%d pids): want positive pids including ours (%d)", pids[:min(5, len(pids))], len(pids), os.Getpid())
	}
}

func TestFDUsageSelf(t *testing.T) {
	// Open one first: the runtime may create its poller on the first.
	first, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	open1, soft, hard, err := FDUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	const extra = 10
	for range extra {
		f, err := os.Open(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}
	open2, _, _, err := FDUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if open2-open1 != extra {
		t.Errorf("open fds went from %d to %d after opening %d files", open1, open2, extra)
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if soft != rl.Cur || hard != rl.Max {
		t.Errorf("FDUsage limits %d/%d, getrlimit says %d/%d", soft, hard, rl.Cur, rl.Max)
	}

	// Both ways of counting agree (stat needs Linux 6.2; reading is the
	// fallback).
	byStat, err := countFDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	byReading, err := countFDsByReading(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if byStat != byReading {
		t.Errorf("fd count: %d by stat, %d by reading /proc/self/fd", byStat, byReading)
	}
}

func TestFDUsageChild(t *testing.T) {
	h, _ := startHelper(t, "idle", "")
	want := unix.Rlimit{Cur: 777, Max: 5555}
	if err := unix.Prlimit(h.pid, unix.RLIMIT_NOFILE, &want, nil); err != nil {
		t.Fatal(os.NewSyscallError("prlimit", err))
	}
	// The child's runtime may still be opening fds (its poller): wait
	// until FDUsage and a listing of /proc/PID/fd agree.
	var open int
	waitFor(t, "FDUsage to match /proc/PID/fd", func() (bool, string) {
		var soft, hard uint64
		var err error
		open, soft, hard, err = FDUsage(h.pid)
		if err != nil {
			t.Fatal(err)
		}
		if soft != want.Cur || hard != want.Max {
			t.Fatalf("limits %d/%d, want %d/%d", soft, hard, want.Cur, want.Max)
		}
		ents, err := os.ReadDir(filepath.Join("/proc", fmt.Sprint(h.pid), "fd"))
		if err != nil {
			t.Fatal(err)
		}
		return open == len(ents), fmt.Sprintf("FDUsage %d, /proc/%d/fd lists %d", open, h.pid, len(ents))
	})
	if open < 3 {
		t.Errorf("open fds %d: not even stdin, stdout and stderr", open)
	}
}

func TestReadNetstat(t *testing.T) {
	m, err := ReadNetstat()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "TCPMigrateReqSuccess", "TCPMigrateReqFailure"} {
		if _, ok := m["TcpExt"][name]; !ok {
			t.Errorf("TcpExt %s missing", name)
		}
	}
	if _, ok := m["Tcp"]["CurrEstab"]; !ok {
		t.Error("Tcp CurrEstab (from /proc/net/snmp) missing")
	}

	// Overflow an accept queue: with backlog 1 it holds 2; further SYNs
	// are dropped and counted.
	ln := listenTCP(t, "127.0.0.1", 0, 1, false)
	before := m["TcpExt"]["ListenOverflows"]
	for range 6 {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ln.addr.Port()), Addr: ln.addr.Addr().As4()})
		if err != nil && !errors.Is(err, unix.EINPROGRESS) {
			t.Fatal(os.NewSyscallError("connect", err))
		}
	}
	waitFor(t, "TcpExt ListenOverflows to grow", func() (bool, string) {
		m, err := ReadNetstat()
		if err != nil {
			t.Fatal(err)
		}
		now := m["TcpExt"]["ListenOverflows"]
		return now > before, fmt.Sprintf("%d before, %d now", before, now)
	})
}

func TestReadSockstat(t *testing.T) {
	listenTCP(t, "127.0.0.1", 0, 1, false)
	m, err := ReadSockstat()
	if err != nil {
		t.Fatal(err)
	}
	if m["sockets"]["used"] < 1 || m["TCP"]["inuse"] < 1 {
		t.Errorf("sockets used %d, TCP inuse %d while this test holds a TCP socket", m["sockets"]["used"], m["TCP"]["inuse"])
	}
	for _, k := range []string{"orphan", "tw", "alloc", "mem"} {
		if _, ok := m["TCP"][k]; !ok {
			t.Errorf("TCP %s missing: %v", k, m["TCP"])
		}
	}
	if _, err := os.Stat("/proc/net/sockstat6"); err == nil {
		if _, ok := m["TCP6"]["inuse"]; !ok {
			t.Errorf("TCP6 inuse missing though /proc/net/sockstat6 exists: %v", m)
		}
	}
}
