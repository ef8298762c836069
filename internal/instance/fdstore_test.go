package instance

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
)

// fakeManager records what an fdStore sends: each notification, with the
// inode of the descriptor that came with it ("FDSTORE=1 FDNAME=x #ino").
type fakeManager struct {
	msgs []string
}

func (m *fakeManager) send(state string, fds []int) {
	msg := strings.ReplaceAll(state, "\n", " ")
	for _, fd := range fds {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		msg += fmt.Sprintf(" #%d", st.Ino)
		unix.Close(fd) // the manager's copy
	}
	m.msgs = append(m.msgs, msg)
}

// take returns what was sent since the last call.
func (m *fakeManager) take() []string {
	out := m.msgs
	m.msgs = nil
	return out
}

func openGroups(t *testing.T, slots int, specs ...string) []*listener.Group {
	t.Helper()
	var ss []listener.Spec
	for _, s := range specs {
		spec, err := listener.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		ss = append(ss, spec)
	}
	gs, err := listener.OpenAll(ss, slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, g := range gs {
			g.Close()
		}
	})
	return gs
}

func ino(g *listener.Group, slot int) uint64 { return g.Socket(slot).Inode() }

// TestFDStoreSync: every serving socket goes to the store once, under its
// listener's name (reuseport slots by slot), with FDPOLL=0; a listener a
// reload removes leaves it, one it replaces leaves and comes back with
// the new socket, removals first; a scale's new slot is stored and a
// removed slot's socket leaves.
func TestFDStoreSync(t *testing.T) {
	var m fakeManager
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	f := newFDStore(m.send, 16, nil, log)
	gs := openGroups(t, 2, "http=tcp://127.0.0.1:0", "rp=tcp://127.0.0.1:0?balance=reuseport", "admin=unix://@baton-fdstore-test")
	http, rp, admin := gs[0], gs[1], gs[2]

	f.sync(gs)
	want := []string{
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/admin FDPOLL=0 #%d", ino(admin, 0)),
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/http FDPOLL=0 #%d", ino(http, 0)),
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/rp/0 FDPOLL=0 #%d", ino(rp, 0)),
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/rp/1 FDPOLL=0 #%d", ino(rp, 1)),
	}
	if diff := cmp.Diff(want, m.take()); diff != "" {
		t.Errorf("first sync (-want +got):\n%s", diff)
	}
	f.sync(gs)
	if got := m.take(); len(got) != 0 {
		t.Errorf("a sync with nothing changed sent %q", got)
	}

	// A scale to 3: slot 2 gets a socket, stored; back to 1: slots 1 and
	// 2 leave.
	if err := rp.Grow(3); err != nil {
		t.Fatal(err)
	}
	f.sync(gs)
	if diff := cmp.Diff([]string{fmt.Sprintf("FDSTORE=1 FDNAME=baton/rp/2 FDPOLL=0 #%d", ino(rp, 2))}, m.take()); diff != "" {
		t.Errorf("after a scale up (-want +got):\n%s", diff)
	}
	rp.Shrink(1)
	f.sync(gs)
	if diff := cmp.Diff([]string{"FDSTOREREMOVE=1 FDNAME=baton/rp/1", "FDSTOREREMOVE=1 FDNAME=baton/rp/2"}, m.take()); diff != "" {
		t.Errorf("after a scale down (-want +got):\n%s", diff)
	}

	// A reload: admin removed, http replaced by a new socket.
	next := openGroups(t, 1, "http=tcp://127.0.0.1:0")
	f.sync([]*listener.Group{next[0], rp})
	want = []string{
		"FDSTOREREMOVE=1 FDNAME=baton/admin",
		"FDSTOREREMOVE=1 FDNAME=baton/http",
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/http FDPOLL=0 #%d", ino(next[0], 0)),
	}
	if diff := cmp.Diff(want, m.take()); diff != "" {
		t.Errorf("after a reload (-want +got):\n%s", diff)
	}
}

// TestFDStoreFromActivation: what the activation found in the store is
// not sent again, a renamed listener's socket leaves its old name before
// it takes the new one, and a socket unit's socket is never stored.
func TestFDStoreFromActivation(t *testing.T) {
	var m fakeManager
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	gs := openGroups(t, 1, "http=tcp://127.0.0.1:0", "new=tcp://127.0.0.1:0", "unit=tcp://127.0.0.1:0")
	act := &listener.Activation{
		Stored: map[string]uint64{"baton/http": ino(gs[0], 0), "baton/old": ino(gs[1], 0)},
		Held:   map[uint64]bool{ino(gs[2], 0): true},
	}
	f := newFDStore(m.send, 16, act, log)
	f.sync(gs)
	want := []string{
		"FDSTOREREMOVE=1 FDNAME=baton/old",
		fmt.Sprintf("FDSTORE=1 FDNAME=baton/new FDPOLL=0 #%d", ino(gs[1], 0)),
	}
	if diff := cmp.Diff(want, m.take()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestFDStoreUDP: a UDP listener's socket is stored with flows=off; one
// that keeps its flows has sockets per generation and is not.
func TestFDStoreUDP(t *testing.T) {
	var m fakeManager
	f := newFDStore(m.send, 16, nil, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	gs := openGroups(t, 1, "off=udp://127.0.0.1:0?flows=off", "auto=udp://127.0.0.1:0")
	f.sync(gs)
	if diff := cmp.Diff([]string{fmt.Sprintf("FDSTORE=1 FDNAME=baton/off FDPOLL=0 #%d", ino(gs[0], 0))}, m.take()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestFDStoreFull: no more than FileDescriptorStoreMax= is sent, with a
// warning that says what to raise.
func TestFDStoreFull(t *testing.T) {
	var m fakeManager
	var buf bytes.Buffer
	f := newFDStore(m.send, 2, nil, slog.New(slog.NewTextHandler(&buf, nil)))
	f.sync(openGroups(t, 3, "rp=tcp://127.0.0.1:0?balance=reuseport"))
	if got := m.take(); len(got) != 2 {
		t.Errorf("sent %q; want 2 sockets stored", got)
	}
	if !strings.Contains(buf.String(), "FileDescriptorStoreMax=") {
		t.Errorf("no warning naming FileDescriptorStoreMax=:\n%s", buf.String())
	}
}

func TestStoreMax(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want int
	}{
		{"no manager", map[string]string{"FDSTORE": "8"}, 0},
		{"no store", map[string]string{"NOTIFY_SOCKET": "/run/systemd/notify"}, 0},
		{"store", map[string]string{"NOTIFY_SOCKET": "/run/systemd/notify", "FDSTORE": "8"}, 8},
		{"garbage", map[string]string{"NOTIFY_SOCKET": "/run/systemd/notify", "FDSTORE": "yes"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := storeMax(func(k string) string { return tt.env[k] }); got != tt.want {
				t.Errorf("storeMax = %d, want %d", got, tt.want)
			}
		})
	}
	if newFDStore(nil, 0, nil, nil) != nil {
		t.Error("a store with room for nothing is not nil")
	}
	var f *fdStore
	f.sync(nil) // a nil store does nothing
	f.disown()
}

// TestHandedSocketsUnsetsTheVariables: baton takes LISTEN_* for itself
// and removes them, so that a worker or an upgraded baton (same pid)
// never takes them for theirs; after an upgrade they are only removed.
func TestHandedSocketsUnsetsTheVariables(t *testing.T) {
	for _, upgraded := range []bool{false, true} {
		t.Run(fmt.Sprint("upgraded=", upgraded), func(t *testing.T) {
			t.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
			t.Setenv("LISTEN_FDS", "0")
			t.Setenv("LISTEN_FDNAMES", "")
			t.Setenv("LISTEN_PIDFDID", "1234")
			if upgraded {
				t.Setenv("LISTEN_FDS", "2") // descriptors of a process gone
			}
			got, err := handedSockets(upgraded)
			if err != nil || len(got) != 0 {
				t.Errorf("handedSockets = %v, %v; want none", got, err)
			}
			for _, v := range activationVars {
				if val, ok := os.LookupEnv(v); ok {
					t.Errorf("%s=%s is still in baton's environment", v, val)
				}
			}
		})
	}
}

// TestFDStoreNameTooLong: a listener whose store name is longer than
// systemd keeps (255) is not sent, and is warned about once.
func TestFDStoreNameTooLong(t *testing.T) {
	var m fakeManager
	var buf bytes.Buffer
	f := newFDStore(m.send, 16, nil, slog.New(slog.NewTextHandler(&buf, nil)))
	gs := openGroups(t, 1, strings.Repeat("a", 250)+"=tcp://127.0.0.1:0", "ok=tcp://127.0.0.1:0")
	f.sync(gs)
	f.sync(append([]*listener.Group(nil), gs[1], gs[0])) // changed: in another order
	if got := m.take(); len(got) != 1 || !strings.Contains(got[0], "FDNAME=baton/ok") {
		t.Errorf("sent %q; want baton/ok only", got)
	}
	if n := strings.Count(buf.String(), "too long"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, buf.String())
	}
}
