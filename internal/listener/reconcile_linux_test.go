package listener

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// serving opens the groups of specs as the listeners serving now, closed
// when the test ends.
func serving(t *testing.T, slots int, specs ...string) []*Group {
	t.Helper()
	var out []*Group
	for _, s := range specs {
		g, err := OpenGroup(mustParse(t, s), slots)
		if err != nil {
			t.Fatalf("OpenGroup(%s): %v", s, err)
		}
		t.Cleanup(g.Close)
		out = append(out, g)
	}
	return out
}

// fates lists each change as "name:fate".
func fates(r *Reconciled) []string {
	var out []string
	for _, c := range r.Changes {
		out = append(out, c.Group.Spec.Name+":"+c.Fate.String())
	}
	return out
}

// inodes lists the inodes of a group's sockets.
func inodes(g *Group) []uint64 {
	var out []uint64
	for _, s := range g.Sockets() {
		out = append(out, s.Inode())
	}
	return out
}

// TestReconcile: a listener whose spec did not change keeps its group
// (same sockets); one changed in place keeps it and changes only at
// Apply's commit; a new or changed one is bound; one dropped is left out.
func TestReconcile(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	for _, tc := range []struct {
		name   string
		reload []string // SOCK is the admin socket's path
		want   []string // name:fate, in the reload's order
	}{
		{
			name:   "unchanged",
			reload: []string{"http=tcp://127.0.0.1:0?backlog=16", "admin=unix://SOCK?mode=0600", "dns=udp://127.0.0.1:0"},
			want:   []string{"http:kept", "admin:kept", "dns:kept"},
		},
		{
			name:   "backlog and mode in place",
			reload: []string{"http=tcp://127.0.0.1:0?backlog=32", "admin=unix://SOCK?mode=0660", "dns=udp://127.0.0.1:0"},
			want:   []string{"http:adjusted", "admin:adjusted", "dns:kept"},
		},
		{
			name:   "new, dropped and reordered",
			reload: []string{"dns=udp://127.0.0.1:0", "extra=tcp://127.0.0.1:0"},
			want:   []string{"dns:kept", "extra:opened"},
		},
		{
			name:   "changed address",
			reload: []string{"http=tcp://127.0.0.2:0?backlog=16", "admin=unix://SOCK?mode=0600", "dns=udp://[::1]:0"},
			want:   []string{"http:opened", "admin:kept", "dns:opened"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.name, "changed address") && !ipv6Supported() {
				t.Skip("no IPv6 on this host")
			}
			current := serving(t, 2, "http=tcp://127.0.0.1:0?backlog=16", "admin=unix://"+sock+"?mode=0600", "dns=udp://127.0.0.1:0")
			byName := map[string]*Group{}
			before := map[string][]uint64{}
			for _, g := range current {
				byName[g.Spec.Name], before[g.Spec.Name] = g, inodes(g)
			}
			var specs []Spec
			for _, s := range tc.reload {
				specs = append(specs, mustParse(t, strings.ReplaceAll(s, "SOCK", sock)))
			}
			r, err := Reconcile(specs, current, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range r.Changes {
				if c.Fate == Opened {
					t.Cleanup(c.Group.Close)
				}
			}
			if diff := cmp.Diff(tc.want, fates(r)); diff != "" {
				t.Errorf("fates (-want +got):\n%s", diff)
			}
			if len(r.Groups) != len(specs) {
				t.Fatalf("%d groups for %d specs", len(r.Groups), len(specs))
			}
			for i, c := range r.Changes {
				name := specs[i].Name
				if r.Groups[i] != c.Group || c.Group.Spec.Name != name {
					t.Errorf("group %d is %s, want %s in the specs' order", i, c.Group.Spec.Name, name)
				}
				switch c.Fate {
				case Kept, Adjusted:
					if c.Group != byName[name] || !cmp.Equal(inodes(c.Group), before[name]) {
						t.Errorf("%s (%s): a new group or other sockets; want the serving ones", name, c.Fate)
					}
				case Opened:
					if c.Group == byName[name] || len(c.Group.Sockets()) == 0 {
						t.Errorf("%s: opened, but not a new bound group", name)
					}
				}
			}
			if got, want := r.InPlace(), strings.Contains(tc.name, "in place"); got != want {
				t.Errorf("InPlace() = %v, want %v", got, want)
			}

			// Nothing changes in place before Apply's commit.
			http := byName["http"]
			if b := http.Sockets()[0].Backlog(); b != 16 || permOf(t, sock) != 0o600 {
				t.Errorf("before Apply: backlog %d, mode %04o; want 16, 0600", b, permOf(t, sock))
			}
			commit, err := r.Apply()
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if b := http.Sockets()[0].Backlog(); b != 16 {
				t.Errorf("before the commit: backlog %d recorded, want 16 still", b)
			}
			commit()
			if tc.name != "backlog and mode in place" {
				return
			}
			if b, s := http.Sockets()[0].Backlog(), http.Spec.Backlog; b != 32 || s != 32 {
				t.Errorf("after the commit: socket backlog %d, spec backlog %d; want 32", b, s)
			}
			if m := permOf(t, sock); m != 0o660 || byName["admin"].Spec.Mode != 0o660 {
				t.Errorf("after the commit: file mode %04o, spec mode %04o; want 0660", m, byName["admin"].Spec.Mode)
			}
		})
	}
}

// TestReconcileFailureClosesWhatItBound: a listener that cannot be bound
// fails the reload, and closes the listeners the reload bound before it;
// an address still held by a serving listener is named.
func TestReconcileFailureClosesWhatItBound(t *testing.T) {
	free := bind(t, "tcp://127.0.0.1:0")
	port := free.Port()
	free.Close() // the serving listener names its port, as a configuration does
	current := serving(t, 1, fmt.Sprintf("http=tcp://127.0.0.1:%d", port))
	other := bind(t, "tcp://127.0.0.1:0") // held, but not by a listener of the reload
	for _, tc := range []struct {
		name, spec, want string
	}{
		{"held by a serving listener", fmt.Sprintf("http=tcp://127.0.0.1:%d?balance=reuseport", port), "listener http still holds 127.0.0.1:"},
		{"held by another socket", fmt.Sprintf("other=tcp://127.0.0.1:%d", other.Port()), "listener other: listener other, slot 0: bind tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := batontest.NumFDs(t)
			specs := []Spec{mustParse(t, "first=tcp://127.0.0.1:0"), mustParse(t, "second=udp://127.0.0.1:0"), mustParse(t, tc.spec)}
			r, err := Reconcile(specs, current, 1)
			if err == nil {
				for _, g := range r.Groups {
					g.Close()
				}
				t.Fatal("Reconcile succeeded with an address in use")
			}
			if !errors.Is(err, unix.EADDRINUSE) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q; want EADDRINUSE and %q", err, tc.want)
			}
			if after := batontest.NumFDs(t); after != before {
				t.Errorf("%d descriptors before, %d after the failed Reconcile: what it bound stays open", before, after)
			}
			if s := current[0].Sockets(); len(s) != 1 || s[0].Port() != port {
				t.Errorf("the serving listener changed: %v", s)
			}
		})
	}
}

// TestApplyReportsWhatFailed: an in-place change that cannot be made
// (the socket file was removed) is an error, and the listener keeps the
// settings it has, so that the next reload tries again.
func TestApplyReportsWhatFailed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	current := serving(t, 1, "a=unix://"+sock+"?mode=0600", "b=tcp://127.0.0.1:0?backlog=8")
	r, err := Reconcile([]Spec{mustParse(t, "a=unix://"+sock+"?mode=0666"), mustParse(t, "b=tcp://127.0.0.1:0?backlog=9")}, current, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Unlink(sock); err != nil {
		t.Fatal(err)
	}
	commit, err := r.Apply()
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Errorf("Apply after the socket file went: %v; want an error naming it", err)
	}
	commit()
	if m := current[0].Spec.Mode; m != 0o600 {
		t.Errorf("a's mode recorded %04o after a failed chmod, want 0600 kept", m)
	}
	if b := current[1].Sockets()[0].Backlog(); b != 9 {
		t.Errorf("b's backlog %d, want 9: the change that worked is recorded", b)
	}
}

// TestOpenAllIsAllOrNothing: a listener that cannot be bound leaves none
// bound, and its error is the bind's.
func TestOpenAllIsAllOrNothing(t *testing.T) {
	held := bind(t, "tcp://127.0.0.1:0")
	before := batontest.NumFDs(t)
	specs := []Spec{mustParse(t, "a=tcp://127.0.0.1:0"), mustParse(t, "b=udp://127.0.0.1:0"), mustParse(t, fmt.Sprintf("c=tcp://127.0.0.1:%d", held.Port()))}
	if gs, err := OpenAll(specs, 1); err == nil || !errors.Is(err, unix.EADDRINUSE) {
		for _, g := range gs {
			g.Close()
		}
		t.Errorf("OpenAll with an address in use: %v; want EADDRINUSE", err)
	}
	if after := batontest.NumFDs(t); after != before {
		t.Errorf("%d descriptors before, %d after the failed OpenAll", before, after)
	}
	gs, err := OpenAll(specs[:2], 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, g := range gs {
			g.Close()
		}
	}()
	if len(gs) != 2 || gs[0].Spec.Name != "a" || gs[1].Spec.Name != "b" {
		t.Errorf("OpenAll: %d groups, want a and b in order", len(gs))
	}
}
