package pathtrust

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree makes a directory under t.TempDir with a file in it, and returns
// both. The temp dir's own parents are the machine's (/tmp is sticky).
func tree(t *testing.T) (dir, file string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, file
}

func TestFileAndDir(t *testing.T) {
	const other = 65534
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir, file string) string // returns the path to check
		dir     bool                                        // check with Dir instead of File
		root    bool                                        // needs root (chown to another uid)
		wantErr string                                      // "" for none
	}{
		{name: "safe file", setup: func(t *testing.T, dir, file string) string { return file }},
		{name: "safe dir", dir: true, setup: func(t *testing.T, dir, file string) string { return dir }},
		{name: "group-writable file", wantErr: "writable by group or others", setup: func(t *testing.T, dir, file string) string {
			chmod(t, file, 0o664)
			return file
		}},
		{name: "world-writable directory", wantErr: "writable by group or others", setup: func(t *testing.T, dir, file string) string {
			chmod(t, dir, 0o777)
			return file
		}},
		{name: "sticky world-writable directory", setup: func(t *testing.T, dir, file string) string {
			chmod(t, dir, 0o777|os.ModeSticky)
			return file
		}},
		{name: "file of another user", root: true, wantErr: "owned by another user", setup: func(t *testing.T, dir, file string) string {
			chown(t, file, other)
			return file
		}},
		{name: "directory of another user", root: true, dir: true, wantErr: "owned by another user", setup: func(t *testing.T, dir, file string) string {
			sub := filepath.Join(dir, "sub")
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			chown(t, dir, other)
			return sub
		}},
		{name: "symlink into an unsafe directory", wantErr: "writable by group or others", setup: func(t *testing.T, dir, file string) string {
			bad := filepath.Join(dir, "bad")
			if err := os.Mkdir(bad, 0o777); err != nil {
				t.Fatal(err)
			}
			chmod(t, bad, 0o777)
			target := filepath.Join(bad, "f")
			if err := os.WriteFile(target, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(dir, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{name: "symlink in a directory of another user, to a safe target", root: true, wantErr: "owned by another user", setup: func(t *testing.T, dir, file string) string {
			// The capistrano layout: /srv/app owned by the deploy user,
			// current -> a release root owns. The deploy user can swing
			// current anywhere.
			app := filepath.Join(dir, "app")
			if err := os.Mkdir(app, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(dir, filepath.Join(app, "current")); err != nil {
				t.Fatal(err)
			}
			chown(t, app, other)
			return filepath.Join(app, "current", "f")
		}},
		{name: "symlink of another user in a sticky directory", root: true, wantErr: "a symlink of another user", setup: func(t *testing.T, dir, file string) string {
			chmod(t, dir, 0o777|os.ModeSticky)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(file, link); err != nil {
				t.Fatal(err)
			}
			chown(t, link, other)
			return link
		}},
		{name: "root's symlink in a sticky directory", setup: func(t *testing.T, dir, file string) string {
			chmod(t, dir, 0o777|os.ModeSticky)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(file, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{name: "relative symlink to a safe file", setup: func(t *testing.T, dir, file string) string {
			link := filepath.Join(dir, "rel")
			if err := os.Symlink("f", link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{name: "symlink loop", wantErr: "too many levels of symbolic links", setup: func(t *testing.T, dir, file string) string {
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			os.Symlink(b, a)
			os.Symlink(a, b)
			return a
		}},
		{name: "FIFO", wantErr: "not a regular file (a FIFO)", setup: func(t *testing.T, dir, file string) string {
			p := filepath.Join(dir, "fifo")
			if err := mkfifo(p); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			return p
		}},
		{name: "directory as a file", wantErr: "not a regular file (a directory)", setup: func(t *testing.T, dir, file string) string { return dir }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another uid")
			}
			dir, file := tree(t)
			p := tt.setup(t, dir, file)
			check := File
			if tt.dir {
				check = Dir
			}
			err := check(p)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("check(%s) = %v, want nil", p, err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("check(%s) = nil, want an error with %q", p, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("check(%s) = %v, want %q in it", p, err, tt.wantErr)
			}
			if strings.Contains(tt.wantErr, "user") || strings.Contains(tt.wantErr, "writable") {
				if !errors.Is(err, ErrUntrusted) {
					t.Errorf("errors.Is(%v, ErrUntrusted) = false", err)
				}
				if !strings.Contains(err.Error(), "chmod go-w") {
					t.Errorf("error %q does not say how to fix it", err)
				}
			}
		})
	}
}

func chmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string, uid int) {
	t.Helper()
	if err := os.Lchown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}
