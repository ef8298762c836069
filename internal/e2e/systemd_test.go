package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/notify"
)

// docUnit is a ```ini block of docs/systemd.md: the path in its first
// line ("# /etc/systemd/system/web.service") and the file's text.
type docUnit struct {
	path, text string
}

// unitsFromDocs returns the ```ini blocks of docs/systemd.md.
func unitsFromDocs(t *testing.T) []docUnit {
	t.Helper()
	b, err := os.ReadFile("../../docs/systemd.md")
	if err != nil {
		t.Fatal(err)
	}
	var units []docUnit
	for _, m := range regexp.MustCompile("(?s)```ini\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		first, rest, _ := strings.Cut(m[1], "\n")
		path, ok := strings.CutPrefix(first, "# /")
		if !ok {
			t.Fatalf("a unit in docs/systemd.md does not start with its path (# /etc/systemd/system/...):\n%s", m[1])
		}
		units = append(units, docUnit{path: "/" + path, text: rest})
	}
	if len(units) < 2 {
		t.Fatalf("docs/systemd.md has %d units, want the notify-reload one and the notify one", len(units))
	}
	return units
}

func systemdVersion(t *testing.T) (string, int) {
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		return "", 0
	}
	out, _ := exec.Command(path, "--version").Output()
	m := regexp.MustCompile(`systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		return path, 0
	}
	v, _ := strconv.Atoi(string(m[1]))
	return path, v
}

// needsSystemd skips a unit that uses what the installed systemd does
// not know yet.
func needsSystemd(t *testing.T, unit string, version int) {
	t.Helper()
	for _, f := range []struct {
		key     string
		version int
	}{{"Type=notify-reload", 253}, {"ReloadSignal=", 253}, {"FileDescriptorStorePreserve=", 254}} {
		if strings.Contains(unit, f.key) && version < f.version {
			t.Skipf("systemd %d does not know %s (%d and later do); the unit is not verified", version, f.key, f.version)
		}
	}
}

// verifyUnits runs systemd-analyze verify on the units at paths (with
// the drop-ins beside them). Documentation= is not looked up: the man
// pages are not installed here (scripts/check-deb.sh looks them up once
// the package is).
func verifyUnits(t *testing.T, analyze string, paths ...string) {
	t.Helper()
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", paths, err, out)
	}
}

// packagedUnit is packaging/systemd's unit as make install writes it
// with PREFIX=/usr.
func packagedUnit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/systemd/" + name)
	if os.IsNotExist(err) {
		b, err = os.ReadFile("../../packaging/systemd/" + name + ".in")
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer("@BINDIR@", "/usr/bin", "@SYSCONFDIR@", "/etc").Replace(string(b))
}

// TestSystemdUnitsInDocs verifies the documented units with systemd's own
// checker, pointed at the real binary and a real config file: the units
// of one's own, the package's (which must be those packaging/ installs),
// and each drop-in together with the package's unit it changes.
func TestSystemdUnitsInDocs(t *testing.T) {
	requireE2E(t)
	analyze, version := systemdVersion(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "web.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("name = \"web\"\ncommand = [%q]\nlisten = [\"http=tcp://127.0.0.1:0\"]\n", helloBin)), 0o644)
	// The package's units, with this test's baton.
	templates := map[string]string{
		"baton@.service": strings.ReplaceAll(packagedUnit(t, "baton@.service"), "/usr/bin/baton", batonBin),
		"baton@.socket":  packagedUnit(t, "baton@.socket"),
	}
	for i, u := range unitsFromDocs(t) {
		t.Run(fmt.Sprintf("%d%s", i, strings.ReplaceAll(u.path, "/", "_")), func(t *testing.T) {
			name := filepath.Base(u.path)
			switch {
			case u.path == "/etc/systemd/system/web.service":
				unit := strings.ReplaceAll(u.text, "/usr/local/bin/baton", batonBin)
				unit = strings.ReplaceAll(unit, "/etc/baton/web.toml", conf)
				if !strings.Contains(unit, batonBin+" run --config "+conf) {
					t.Fatalf("unit does not run baton with a config:\n%s", unit)
				}
				// The documented ExecReload must be a command baton has.
				for _, line := range strings.Split(unit, "\n") {
					if cmd, ok := strings.CutPrefix(line, "ExecReload="); ok {
						args := strings.Fields(cmd)[1:]
						if out, code := runBaton(t, nil, append(args, "--help")...); code != 0 {
							t.Errorf("ExecReload %q: %s", cmd, out)
						}
					}
				}
				if analyze == "" {
					t.Skip("systemd-analyze is not installed; the unit's syntax is not checked")
				}
				needsSystemd(t, unit, version)
				path := filepath.Join(t.TempDir(), name)
				os.WriteFile(path, []byte(unit), 0o644)
				verifyUnits(t, analyze, path)
			case strings.HasPrefix(u.path, "/lib/systemd/system/"):
				want := packagedUnit(t, name)
				if u.text != want {
					t.Errorf("docs/systemd.md shows %s unlike packaging/systemd/ installs it:\n--- docs\n%s\n--- installed\n%s", name, u.text, want)
				}
				if analyze == "" {
					t.Skip("systemd-analyze is not installed; the unit's syntax is not checked")
				}
				d := t.TempDir()
				for n, text := range templates {
					os.WriteFile(filepath.Join(d, n), []byte(text), 0o644)
				}
				// The socket needs an address: the drop-in of the docs.
				os.MkdirAll(filepath.Join(d, "baton@web.socket.d"), 0o755)
				os.WriteFile(filepath.Join(d, "baton@web.socket.d", "listen.conf"), []byte("[Socket]\nListenStream=127.0.0.1:8080\n"), 0o644)
				verifyUnits(t, analyze, filepath.Join(d, strings.Replace(name, "@.", "@web.", 1)))
			case strings.HasPrefix(u.path, "/etc/systemd/system/baton@web."):
				// A drop-in: verified with the unit it changes.
				if analyze == "" {
					t.Skip("systemd-analyze is not installed; the drop-in is not checked")
				}
				needsSystemd(t, u.text, version)
				d := t.TempDir()
				for n, text := range templates {
					os.WriteFile(filepath.Join(d, n), []byte(text), 0o644)
				}
				dropin := filepath.Join(d, filepath.Base(filepath.Dir(u.path)))
				os.MkdirAll(dropin, 0o755)
				os.WriteFile(filepath.Join(dropin, name), []byte(u.text), 0o644)
				unit := strings.TrimSuffix(filepath.Base(filepath.Dir(u.path)), ".d")
				if strings.HasSuffix(unit, ".service") {
					// The service alone, without its socket.
					verifyUnits(t, analyze, filepath.Join(d, unit))
				} else {
					verifyUnits(t, analyze, filepath.Join(d, unit), filepath.Join(d, "baton@web.service"))
				}
			default:
				t.Fatalf("a unit at %s: this test knows web.service, the package's units and drop-ins for baton@web", u.path)
			}
		})
	}
}

// manager is a fake service manager: a NOTIFY_SOCKET that records what
// baton tells it, with the sender's pid.
type manager struct {
	srv  *notify.Server
	mu   sync.Mutex
	msgs []string
}

func newManager(t *testing.T) *manager {
	srv, err := notify.Listen(fmt.Sprintf("@baton-e2e-systemd-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	m := &manager{srv: srv}
	go srv.Serve(func(msg notify.Message) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for k, v := range msg.Fields {
			if k == "MONOTONIC_USEC" {
				continue
			}
			if k == "MAINPID" {
				v = "<pid>"
			}
			m.msgs = append(m.msgs, fmt.Sprintf("%d:%s=%s", msg.PID, k, v))
		}
	})
	return m
}

// waitFor waits until want (a "KEY=VALUE" from pid) has been received n
// times.
func (m *manager) waitFor(t *testing.T, pid int, want string, n int) {
	t.Helper()
	batontest.WaitFor(t, 30*time.Second, func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		got := 0
		for _, s := range m.msgs {
			if s == fmt.Sprintf("%d:%s", pid, want) {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("service manager got %d of %d %q from pid %d; all: %s", got, n, want, pid, strings.Join(m.msgs, " "))
		}
		return nil
	})
}

func TestSystemdNotifications(t *testing.T) {
	requireE2E(t)
	m := newManager(t)
	dir := shortDir(t)
	conf := filepath.Join(dir, "web.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("name = \"web\"\ncontrol = %q\ncommand = [%q]\nready = \"notify\"\nworkers = 1\nlisten = [\"http=tcp://127.0.0.1:0\"]\n", filepath.Join(dir, "ctl.sock"), helloBin)), 0o644)
	env := []string{"NOTIFY_SOCKET=" + m.srv.Addr()}
	b := startBatonAt(t, filepath.Join(dir, "ctl.sock"), env, "--config", conf)
	b.waitReady(1)
	pid := b.cmd.Process.Pid
	m.waitFor(t, pid, "READY=1", 1)

	// Type=notify-reload: systemd sends SIGHUP and waits for RELOADING=1,
	// then READY=1.
	b.cmd.Process.Signal(syscall.SIGHUP)
	m.waitFor(t, pid, "RELOADING=1", 1)
	m.waitFor(t, pid, "READY=1", 2)

	// Type=notify: ExecReload runs baton reload, which finds the socket
	// from the config file.
	if out, code := runBaton(t, nil, "reload", "--config", conf); code != 0 {
		t.Fatalf("baton reload --config: %s", out)
	}
	m.waitFor(t, pid, "RELOADING=1", 2)
	m.waitFor(t, pid, "READY=1", 3)

	// A takeover names the new main pid, which then says it is ready.
	n := startTakeover(t, b, env, "--config", conf)
	m.waitFor(t, pid, "MAINPID=<pid>", 1)
	m.waitFor(t, n.cmd.Process.Pid, "READY=1", 1)
	b.waitExit(30 * time.Second)
	m.waitFor(t, pid, "STOPPING=1", 1)
	n.cmd.Process.Signal(syscall.SIGTERM)
	n.waitExit(30 * time.Second)
	m.waitFor(t, n.cmd.Process.Pid, "STOPPING=1", 1)
}
