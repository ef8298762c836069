package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/pathtrust"
)

// loadWithin runs Load(path) and fails the test if it has not returned
// within 10s: it blocked.
func loadWithin(t *testing.T, path string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Load(path, nil, nil, nil)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("Load(%s) blocked", path)
		return nil
	}
}

// TestConfigFileNotRegular: a config path that is not a regular file is
// refused at once, with its type and the fix; a FIFO in particular must
// not block (nobody writes to it).
func TestConfigFileNotRegular(t *testing.T) {
	tests := []struct {
		name    string
		make    func(t *testing.T, path string) // creates path
		wantErr string
	}{
		{name: "FIFO", wantErr: "is a FIFO (named pipe), not a regular file: baton reads its configuration only from a regular file", make: func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
		}},
		{name: "directory", wantErr: "is a directory, not a regular file", make: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "socket", wantErr: "is a socket, not a regular file", make: func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Skipf("listen: %v", err)
			}
			t.Cleanup(func() { l.Close() })
		}},
		{name: "device", wantErr: "is a character device, not a regular file", make: func(t *testing.T, path string) {
			if err := os.Symlink(os.DevNull, path); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "too large", wantErr: "is larger than 1048576 bytes (1 MiB)", make: func(t *testing.T, path string) {
			if err := os.WriteFile(path, make([]byte, MaxFileSize+1), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "baton.toml")
			tt.make(t, path)
			err := loadWithin(t, path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v\nwant it to name %s and contain %q", err, path, tt.wantErr)
			}
			if !errors.Is(err, ErrFile) {
				t.Errorf("error %v is not ErrFile (a usage error)", err)
			}
		})
	}
}

// TestOpenRegularNeverBlocks: the open itself does not block on a FIFO
// that replaced the file after the type was checked, and fstat refuses
// it.
func TestOpenRegularNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		f, err := openRegular(path)
		if f != nil {
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "is a FIFO (named pipe), not a regular file") {
			t.Errorf("openRegular(FIFO) = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("openRegular blocked on a FIFO")
	}
}

// TestConfigFileTrust: a config file that another user could change is
// refused, as sshd's StrictModes would: the file, or a directory on the
// way to it, writable by group or others.
func TestConfigFileTrust(t *testing.T) {
	const text = "command = [\"/bin/true\"]\n"
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir, file string)
		wantErr string
	}{
		{name: "safe", setup: func(t *testing.T, dir, file string) {}},
		{name: "world-writable file", wantErr: "writable by group or others", setup: func(t *testing.T, dir, file string) {
			os.Chmod(file, 0o666)
		}},
		{name: "group-writable directory", wantErr: "writable by group or others", setup: func(t *testing.T, dir, file string) {
			os.Chmod(dir, 0o775)
		}},
		{name: "sticky directory", setup: func(t *testing.T, dir, file string) {
			os.Chmod(dir, 0o777|os.ModeSticky)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "etc")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "baton.toml")
			if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir, file)
			err := loadWithin(t, file)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Load: %v", err)
			case tt.wantErr == "":
			case err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "chmod go-w"):
				t.Fatalf("error %v\nwant it to contain %q and the fix", err, tt.wantErr)
			case !errors.Is(err, pathtrust.ErrUntrusted) || !errors.Is(err, ErrFile):
				t.Errorf("error %v is not ErrUntrusted and ErrFile", err)
			}
		})
	}
}

// TestRootWorkersCommandTrust: baton as root running workers as root
// refuses a command another user could change; run as another user, the
// same command is that user's business.
func TestRootWorkersCommandTrust(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the check applies to workers that run as root")
	}
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := filepath.Join(dir, "server")
	if err := os.WriteFile(cmd, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	resolve := func(extra ...string) error {
		t.Helper()
		var s Settings
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		Register(fs, &s)
		if err := fs.Parse(append([]string{"-l", "tcp://127.0.0.1:0"}, extra...)); err != nil {
			t.Fatal(err)
		}
		l, err := Load("", &s, fs, []string{cmd})
		if err != nil {
			t.Fatal(err)
		}
		_, err = l.Resolve()
		return err
	}
	if err := resolve(); err != nil {
		t.Fatalf("a root-owned 0755 command: %v", err)
	}
	if err := os.Chmod(cmd, 0o777); err != nil {
		t.Fatal(err)
	}
	err := resolve()
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") || !strings.Contains(err.Error(), "the workers run as root") {
		t.Fatalf("a world-writable command run as root: %v; want it refused with the reason", err)
	}
	if err := resolve("--user", "nobody"); err != nil {
		t.Errorf("the same command run as nobody: %v; want it accepted", err)
	}
}

// A config file that is not there is named, with where a relative path
// is looked for.
func TestConfigFileMissing(t *testing.T) {
	t.Chdir(t.TempDir())
	err := loadWithin(t, "web.toml")
	wd, _ := os.Getwd()
	if err == nil || !errors.Is(err, ErrFile) || !strings.Contains(err.Error(), "config file web.toml does not exist: check the path (a relative one is from baton's working directory, "+wd+")") {
		t.Errorf("Load of a missing file: %v", err)
	}
}
