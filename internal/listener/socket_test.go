package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

func mustParse(t *testing.T, s string) Spec {
	t.Helper()
	spec, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func bind(t *testing.T, s string) *Socket {
	t.Helper()
	sock, err := Bind(mustParse(t, s))
	if err != nil {
		t.Fatalf("Bind(%s): %v", s, err)
	}
	t.Cleanup(func() { sock.Close() })
	return sock
}

func TestBindTCPPortZeroGetsRealPortAndAccepts(t *testing.T) {
	s := bind(t, "tcp://127.0.0.1:0?backlog=16")
	if s.Port() == 0 || s.Backlog() != 16 || s.Inode() == 0 {
		t.Fatalf("port %d backlog %d inode %d", s.Port(), s.Backlog(), s.Inode())
	}
	flags, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_GETFL, 0)
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("socket flags %#x, %v: want O_NONBLOCK", flags, err)
	}
	fdflags, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_GETFD, 0)
	if err != nil || fdflags&unix.FD_CLOEXEC == 0 {
		t.Errorf("descriptor flags %#x, %v: want FD_CLOEXEC", fdflags, err)
	}
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestBindDualStackWildcard(t *testing.T) {
	if !ipv6Supported() {
		t.Skip("no IPv6 on this host")
	}
	s := bind(t, "tcp://:0")
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(s.Port())))
		if err != nil {
			t.Errorf("dial %s on the wildcard listener: %v", host, err)
			continue
		}
		c.Close()
	}
}

func TestBindUDP(t *testing.T) {
	s := bind(t, "udp://127.0.0.1:0")
	if _, ok := s.Addr().(*net.UDPAddr); !ok || s.Port() == 0 || s.Backlog() != 0 {
		t.Fatalf("addr %v port %d backlog %d", s.Addr(), s.Port(), s.Backlog())
	}
}

func TestBindAddressInUseNamesHolder(t *testing.T) {
	s := bind(t, "tcp://127.0.0.1:0")
	_, err := Bind(mustParse(t, fmt.Sprintf("tcp://127.0.0.1:%d", s.Port())))
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second bind: %v, want EADDRINUSE", err)
	}
	want := fmt.Sprintf("held by pid %d", os.Getpid())
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "choose another port") {
		t.Errorf("error %q does not name the holder (%s) and the fix", err, want)
	}
}

func TestBindUnixModeAndStaleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	// Leave a stale socket file: bound, closed, never unlinked.
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)

	s := bind(t, "unix://"+path+"?mode=0640")
	if !s.StaleRemoved {
		t.Error("the stale file was not reported as removed")
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("stat: %v, mode %v", err, fi.Mode())
	}
	// Something answers now: a second bind is refused and names us.
	_, err = Bind(mustParse(t, "unix://"+path))
	if !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), fmt.Sprintf("held by pid %d", os.Getpid())) {
		t.Errorf("bind on a live socket file: %v", err)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("Close left the socket file: %v", err)
	}
}

func TestBindUnixKeepsForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	s := bind(t, "unix://"+path)
	// Someone replaced the file (another instance took the path over):
	// Close must not remove theirs.
	os.Remove(path)
	other := bind(t, "unix://"+path)
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Close removed a socket file it did not create: %v", err)
	}
	other.Close()
}

func TestBindRefusesRegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, nil, 0o644)
	_, err := Bind(mustParse(t, "unix://"+path))
	if err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
		t.Errorf("bind over a regular file: %v", err)
	}
}

func TestBindAbstractAndUnixgram(t *testing.T) {
	s := bind(t, fmt.Sprintf("unix://@baton-test-%d", os.Getpid()))
	if got := s.Addr().String(); got != fmt.Sprintf("@baton-test-%d", os.Getpid()) {
		t.Errorf("abstract address %q", got)
	}
	g := bind(t, "unixgram://"+filepath.Join(t.TempDir(), "g.sock"))
	if g.Spec.Kind != Datagram {
		t.Errorf("kind %v", g.Spec.Kind)
	}
}

func TestBindPrivilegedPortHint(t *testing.T) {
	err := bindHint(mustParse(t, "tcp://127.0.0.1:80"), unix.EACCES)
	if !strings.Contains(err, "ports below 1024 need root or CAP_NET_BIND_SERVICE") {
		t.Errorf("hint %q", err)
	}
}

func TestBindFailureLeaksNothing(t *testing.T) {
	before := batontest.NumFDs(t)
	s := bind(t, "tcp://127.0.0.1:0")
	for i := 0; i < 20; i++ {
		if _, err := Bind(mustParse(t, fmt.Sprintf("tcp://127.0.0.1:%d", s.Port()))); err == nil {
			t.Fatal("bind on a used port succeeded")
		}
	}
	s.Close()
	if after := batontest.NumFDs(t); after != before {
		t.Errorf("%d descriptors before, %d after failed binds", before, after)
	}
}
