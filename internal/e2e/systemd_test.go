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

	"github.com/baton-dev/baton/internal/notify"
)

// unitsFromDocs returns the ```ini blocks of docs/systemd.md.
func unitsFromDocs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../docs/systemd.md")
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, m := range regexp.MustCompile("(?s)```ini\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		units = append(units, m[1])
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

// TestSystemdUnitsInDocs verifies the documented units with systemd's own
// checker, pointed at the real binary and a real config file.
func TestSystemdUnitsInDocs(t *testing.T) {
	requireE2E(t)
	analyze, version := systemdVersion(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "web.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("name = \"web\"\ncommand = [%q]\nlisten = [\"http=tcp://127.0.0.1:0\"]\n", helloBin)), 0o644)
	for i, unit := range unitsFromDocs(t) {
		t.Run(fmt.Sprintf("unit%d", i), func(t *testing.T) {
			unit = strings.ReplaceAll(unit, "/usr/local/bin/baton", batonBin)
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
			if strings.Contains(unit, "Type=notify-reload") && version < 253 {
				t.Skipf("systemd %d does not know Type=notify-reload (253 and later do)", version)
			}
			path := filepath.Join(dir, "web.service")
			os.WriteFile(path, []byte(unit), 0o644)
			out, err := exec.Command(analyze, "verify", path).CombinedOutput()
			if err != nil || strings.Contains(string(out), "web.service") {
				t.Errorf("systemd-analyze verify: %v\n%s", err, out)
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.mu.Lock()
		got := 0
		for _, s := range m.msgs {
			if s == fmt.Sprintf("%d:%s", pid, want) {
				got++
			}
		}
		all := strings.Join(m.msgs, " ")
		m.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service manager got %d of %d %q from pid %d; all: %s", got, n, want, pid, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
