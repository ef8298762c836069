package takeover

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/listener"
)

// held is a listener the running instance holds, opened for the test.
func held(t *testing.T, spec string, slots int) *listener.Group {
	t.Helper()
	s, err := listener.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	g, err := listener.OpenGroup(s, slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// received is a takeover whose sockets are duplicates of groups' (as
// SCM_RIGHTS delivers them), on a connection whose far end is dropped.
func received(t *testing.T, groups ...*listener.Group) *Taken {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "conn")
	c, err := net.FileConn(f)
	f.Close()
	unix.Close(fds[1])
	if err != nil {
		t.Fatal(err)
	}
	tk := &Taken{conn: c.(*net.UnixConn)}
	t.Cleanup(func() { tk.Abort("test over") })
	for _, g := range groups {
		for _, s := range g.Sockets() {
			fd, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			tk.Sockets = append(tk.Sockets, Socket{Name: g.Spec.Name, URL: g.Spec.URL(), Slot: g.SlotOf(s), Fd: fd})
		}
	}
	return tk
}

func specs(t *testing.T, texts ...string) []listener.Spec {
	t.Helper()
	var out []listener.Spec
	for _, s := range texts {
		spec, err := listener.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, spec)
	}
	return out
}

func inodes(g *listener.Group) []uint64 {
	var out []uint64
	for _, s := range g.Sockets() {
		out = append(out, s.Inode())
	}
	return out
}

// TestListeners: received sockets become this instance's groups, the
// same sockets (inodes) grown to its slots; a listener the running
// instance does not have is bound; one this configuration drops is
// closed; every received descriptor ends up owned or closed.
func TestListeners(t *testing.T) {
	web := held(t, "web=tcp://127.0.0.1:0", 1)
	api := held(t, "api=tcp://127.0.0.1:0?balance=reuseport", 2)
	gone := held(t, "gone=udp://127.0.0.1:0", 1)
	tk := received(t, web, api, gone)
	goneFd := tk.Sockets[3].Fd
	var log bytes.Buffer
	got, err := tk.Listeners(specs(t,
		fmt.Sprintf("web=tcp://127.0.0.1:%d", web.Sockets()[0].Port()),
		fmt.Sprintf("api=tcp://127.0.0.1:%d?balance=reuseport", api.Sockets()[0].Port()),
		"new=udp://127.0.0.1:0",
	), 3, false, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, g := range got {
			g.Close()
		}
	})
	if len(got) != 3 {
		t.Fatalf("%d groups, want web, api and new", len(got))
	}
	if a, b := inodes(got[0]), inodes(web); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("web: sockets %v, want the running instance's %v", a, b)
	}
	apiIno := inodes(got[1])
	if len(apiIno) != 3 || fmt.Sprint(apiIno[:2]) != fmt.Sprint(inodes(api)) {
		t.Errorf("api: sockets %v; want the running instance's %v and one more for slot 2", apiIno, inodes(api))
	}
	if p := got[1].Socket(2).Port(); p != api.Sockets()[0].Port() {
		t.Errorf("api slot 2 bound to port %d, want the group's %d", p, api.Sockets()[0].Port())
	}
	if got[2].Spec.Name != "new" || len(got[2].Sockets()) != 1 {
		t.Errorf("new: %v, want one socket bound here", got[2].Sockets())
	}
	for i, s := range tk.Sockets {
		if s.Fd != -1 {
			t.Errorf("received socket %d (%s) still has fd %d: neither taken nor closed", i, s.Name, s.Fd)
		}
	}
	if _, err := unix.FcntlInt(uintptr(goneFd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("the dropped listener's descriptor %d is still open", goneFd)
	}
	for _, line := range []string{"takeover: listener taken over", "takeover: new listener bound", "takeover: not keeping a listener"} {
		if !strings.Contains(log.String(), line) {
			t.Errorf("the log has no %q:\n%s", line, log.String())
		}
	}
}

// TestListenersMismatch: a configuration that does not match the sockets
// received is refused with what differs, and leaves nothing open once the
// takeover is aborted.
func TestListenersMismatch(t *testing.T) {
	web := held(t, "web=tcp://127.0.0.1:0", 1)
	port := web.Sockets()[0].Port()
	for _, tc := range []struct {
		name, spec, want string
	}{
		{"balance", fmt.Sprintf("web=tcp://127.0.0.1:%d?balance=reuseport", port), "holds it with balance shared, this configuration says reuseport"},
		{"kind", fmt.Sprintf("web=udp://127.0.0.1:%d", port), "is a socket of type"},
		{"host", fmt.Sprintf("web=tcp://127.0.0.2:%d", port), "it is bound to 127.0.0.1, this configuration says 127.0.0.2"},
		{"port", "web=tcp://127.0.0.1:1", fmt.Sprintf("is bound to port %d, want 1", port)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := batontest.NumFDs(t)
			other := held(t, "other=tcp://127.0.0.1:0", 1)
			tk := received(t, other, web)
			// other is adopted first, then web fails: both are closed.
			_, err := tk.Listeners(specs(t, fmt.Sprintf("other=tcp://127.0.0.1:%d", other.Sockets()[0].Port()), tc.spec), 1, false, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "takeover: listener web") {
				t.Errorf("Listeners: %v; want an error about listener web saying %q", err, tc.want)
			}
			tk.Abort("mismatch")
			other.Close()
			if after := batontest.NumFDs(t); after != before {
				t.Errorf("%d descriptors before, %d after the refused takeover", before, after)
			}
			if len(web.Sockets()) != 1 {
				t.Error("the running instance's listener changed")
			}
		})
	}
}
