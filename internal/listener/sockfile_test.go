package listener

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/sockfile"
)

// rootOnly is a file standing for a root-only one (mode 0600): the target
// a worker user would point a symlink at.
func rootOnly(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func permOf(t *testing.T, path string) os.FileMode {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return os.FileMode(st.Mode & 0o7777)
}

// withAfterBind runs f between bind(2) and the socket file's check, for
// the length of the test.
func withAfterBind(t *testing.T, f func(path string)) {
	t.Helper()
	afterBind = f
	t.Cleanup(func() { afterBind = nil })
}

// swapForSymlink replaces the file at path with a symlink to target, as a
// user who can write to the directory can at any time.
func swapForSymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// TestBindRefusesSocketFileSwappedAfterBind: the socket file replaced by
// a symlink to a root-only file between bind(2) and the ownership change.
// Before the fix, os.Chmod followed the symlink and made the file 0666.
func TestBindRefusesSocketFileSwappedAfterBind(t *testing.T) {
	target := rootOnly(t)
	path := filepath.Join(t.TempDir(), "s.sock")
	withAfterBind(t, func(p string) { swapForSymlink(t, p, target) })
	s, err := Bind(mustParse(t, "unix://"+path+"?mode=0666"))
	if err == nil {
		s.Close()
		t.Fatal("Bind applied ?mode= to a file swapped in after bind(2)")
	}
	if got := permOf(t, target); got != 0o600 {
		t.Errorf("the root-only file is mode %04o now, was 0600", got)
	}
	msg := err.Error()
	if !errors.Is(err, sockfile.ErrReplaced) || !strings.Contains(msg, path) || !strings.Contains(msg, "a symlink to "+`"`+target+`"`) || !strings.Contains(msg, "writable only by root") {
		t.Errorf("error %q does not name the path, what is there, the cause and the fix", msg)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the failed Bind removed or changed the swapped-in symlink: %v", err)
	}
}

// TestBindUnixFileIsBornRestricted: between bind(2) and the chmod, the
// file is never more open than ?mode= asks (its owner bits only). Before
// the fix it was born 0777 less the umask.
func TestBindUnixFileIsBornRestricted(t *testing.T) {
	old := unix.Umask(0)
	t.Cleanup(func() { unix.Umask(old) })
	for _, tt := range []struct {
		mode       string
		born, want os.FileMode
	}{{"0666", 0o600, 0o666}, {"0660", 0o600, 0o660}, {"0066", 0, 0o066}, {"0777", 0o700, 0o777}} {
		t.Run(tt.mode, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			var born os.FileMode
			withAfterBind(t, func(p string) { born = permOf(t, p) })
			s := bind(t, "unix://"+path+"?mode="+tt.mode)
			if born != tt.born {
				t.Errorf("born with mode %04o, want %04o", born, tt.born)
			}
			if got := permOf(t, path); got != tt.want {
				t.Errorf("mode %04o after Bind, want %04o", got, tt.want)
			}
			s.Close()
		})
	}
}

// TestAdjustRefusesSwappedSocketFile: a reload that changes ?mode= in
// place, after the socket file was replaced with a symlink to a root-only
// file. Before the fix, Adjust chmodded the symlink's target.
func TestAdjustRefusesSwappedSocketFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	g, err := OpenGroup(mustParse(t, "unix://"+path+"?mode=0666"), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)

	// In place, untouched: the socket file changes.
	commit, err := g.Adjust(mustParse(t, "unix://"+path+"?mode=0660"))
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if got := permOf(t, path); got != 0o660 {
		t.Fatalf("mode %04o after Adjust to 0660", got)
	}

	target := rootOnly(t)
	swapForSymlink(t, path, target)
	commit, err = g.Adjust(mustParse(t, "unix://"+path+"?mode=0666"))
	commit()
	if got := permOf(t, target); got != 0o600 {
		t.Errorf("the root-only file is mode %04o after Adjust, was 0600", got)
	}
	if !errors.Is(err, sockfile.ErrReplaced) || !strings.Contains(err.Error(), path) {
		t.Errorf("Adjust over a swapped file: %v; want an error wrapping ErrReplaced naming %s", err, path)
	}
	// Not applied: the group still says 0660, so the next reload tries
	// again rather than taking 0666 for done.
	if g.Spec.Mode != 0o660 || g.Sockets()[0].Spec.Mode != 0o660 {
		t.Errorf("after the refused Adjust the group says mode %04o, its socket %04o; want 0660", g.Spec.Mode, g.Sockets()[0].Spec.Mode)
	}
}

// TestCloseNeverRemovesAnotherDirectorysFile: the socket's directory is
// swapped, again and again, with a symlink to a directory holding a file
// of the same name while Close runs. Close checked the path and removed it
// by path before the fix, and removed that other file within the first few
// dozen rounds; now it checks and unlinks relative to the directory it
// opened, and no round can.
func TestCloseNeverRemovesAnotherDirectorysFile(t *testing.T) {
	base := t.TempDir()
	d, swap := filepath.Join(base, "d"), filepath.Join(base, "swap")
	victim := filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	victimFile := filepath.Join(victim, "s.sock")
	const rounds = 1000
	for i := range rounds {
		os.RemoveAll(d)
		os.RemoveAll(swap)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, swap); err != nil {
			t.Fatal(err)
		}
		// The victim is a socket file of the same name: a stale one, of
		// the kind Close removes.
		os.Remove(victimFile)
		vfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(vfd, &unix.SockaddrUnix{Name: victimFile}); err != nil {
			t.Fatal(err)
		}
		unix.Close(vfd)
		s := bind(t, "unix://"+filepath.Join(d, "s.sock"))
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		started := make(chan struct{})
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, swap, unix.RENAME_EXCHANGE)
				if n == 1 {
					close(started)
				}
			}
		}()
		<-started
		s.Close()
		stop.Store(true)
		wg.Wait()
		if _, err := os.Lstat(victimFile); err != nil {
			t.Fatalf("round %d: Close removed %s, a file in another directory: %v", i, victimFile, err)
		}
	}
}

func TestBindWarnsOfADirectoryOthersCanWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s := bind(t, "unix://"+filepath.Join(dir, "s.sock")+"?mode=0660")
	if s.Warning == nil || !strings.Contains(s.Warning.Error(), "writable by group or others") || !strings.Contains(s.Warning.Error(), "another user can replace it") {
		t.Errorf("Warning = %v; want one that says the directory is writable by others and what that allows", s.Warning)
	}
	if safe := bind(t, "unix://"+filepath.Join(t.TempDir(), "s.sock")); safe.Warning != nil {
		t.Errorf("Warning in a private directory: %v", safe.Warning)
	}
}

func TestBindUnixOwnerByDescriptor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a socket file to another uid")
	}
	const nobody = 65534
	path := filepath.Join(t.TempDir(), "s.sock")
	s := bind(t, "unix://"+path+"?owner=65534:65534&mode=0660")
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != nobody || st.Gid != nobody || st.Mode&0o777 != 0o660 {
		t.Errorf("socket file uid %d gid %d mode %04o; want %d %d 0660", st.Uid, st.Gid, st.Mode&0o777, nobody, nobody)
	}
	s.Close()

	// Swapped for a symlink to a root-only file: neither the owner nor the
	// mode of the target changes.
	target := rootOnly(t)
	withAfterBind(t, func(p string) { swapForSymlink(t, p, target) })
	if s, err := Bind(mustParse(t, "unix://"+path+"?owner=65534:65534&mode=0666")); err == nil {
		s.Close()
		t.Fatal("Bind changed a file swapped in after bind(2)")
	}
	if err := unix.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Mode&0o777 != 0o600 {
		t.Errorf("the root-only file is uid %d mode %04o now", st.Uid, st.Mode&0o777)
	}
}

func TestAdoptOwnsOnlyAVerifiedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	spec := mustParse(t, "unix://"+path)
	s, err := Bind(spec)
	if err != nil {
		t.Fatal(err)
	}
	ino := s.PathIno()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Ino != ino {
		t.Fatalf("PathIno %d, the file's inode %d (%v)", ino, st.Ino, err)
	}
	// As across an upgrade: a duplicate of the descriptor is adopted, the
	// original let go of without touching the file.
	dup, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(s.Fd())
	a, err := Adopt(spec, dup, 0, ino)
	if err != nil {
		t.Fatal(err)
	}
	if a.PathIno() != ino {
		t.Errorf("adopted PathIno %d, want %d", a.PathIno(), ino)
	}
	// Replaced meanwhile: the adopted socket does not own the new file.
	os.Remove(path)
	other := bind(t, "unix://"+path)
	dup2, _ := unix.FcntlInt(uintptr(a.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	b, err := Adopt(spec, dup2, 0, ino)
	if err != nil {
		t.Fatal(err)
	}
	if b.PathIno() != 0 {
		t.Errorf("adopted a socket whose file was replaced: PathIno %d, want 0", b.PathIno())
	}
	b.Close()
	a.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("closing adopted sockets removed another socket's file: %v", err)
	}
	other.Close()
}

func TestDisownedGroupLeavesItsSocketFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	g, err := OpenGroup(mustParse(t, "unix://"+path), 1)
	if err != nil {
		t.Fatal(err)
	}
	g.Disown()
	if ino := g.Sockets()[0].PathIno(); ino != 0 {
		t.Errorf("PathIno %d after Disown, want 0", ino)
	}
	g.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close of a disowned group removed its socket file: %v", err)
	}
}
