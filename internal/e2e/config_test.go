package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/supervisor"
)

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func listenerByName(st supervisor.Status, name string) *supervisor.ListenerStatus {
	for i := range st.Listeners {
		if st.Listeners[i].Name == name {
			return &st.Listeners[i]
		}
	}
	return nil
}

// TestReloadChangesListeners: a reload that adds one listener and removes
// another while the unchanged one is under load.
func TestReloadChangesListeners(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	web, old, added := freePort(t), freePort(t), freePort(t)
	base := fmt.Sprintf(`command = [%q]
workers = 2
ready = "notify"
drain_timeout = "10s"
[env]
E2E_WORKER = "http-all"
[[listener]]
name = "http"
address = "tcp://127.0.0.1:%d"
`, testBin, web)
	writeConfig(t, conf, base+fmt.Sprintf("[[listener]]\nname = \"old\"\naddress = \"tcp://127.0.0.1:%d\"\n", old))
	b := startBaton(t, nil, "--config", conf)
	before := b.waitReady(2)
	httpInode := listenerByName(before, "http").Inode

	wait := startLoadUnderWay(fmt.Sprintf("127.0.0.1:%d", web), 6*time.Second)
	writeConfig(t, conf, base+fmt.Sprintf("[[listener]]\nname = \"added\"\naddress = \"tcp://127.0.0.1:%d\"\n", added))
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	after := b.waitReady(2)
	checkLoad(t, wait())

	if l := listenerByName(after, "http"); l == nil || l.Inode != httpInode {
		t.Errorf("the unchanged listener got a new socket: before inode %d, after %+v", httpInode, l)
	}
	if listenerByName(after, "old") != nil || listenerByName(after, "added") == nil {
		t.Errorf("listeners after the reload: %+v; want http and added", after.Listeners)
	}
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", added), 2*time.Second)
	if err != nil {
		t.Errorf("the added listener does not answer: %v", err)
	} else {
		fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(buf)
		if !strings.Contains(string(buf[:n]), "200 OK") {
			t.Errorf("added listener answered %q", buf[:n])
		}
		c.Close()
	}
	// The removed listener closes once the old generation has drained.
	batontest.WaitFor(t, 20*time.Second, func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", old), time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return errors.New("the removed listener still accepts after the reload")
	})
	if !b.logHas("listener closed") {
		t.Errorf("the log does not say the removed listener was closed")
	}
}

// TestBadConfigOnReloadChangesNothing: a reload with a config that does
// not validate, or a listener that cannot be bound, fails with the reason;
// the old configuration keeps serving.
func TestBadConfigOnReloadChangesNothing(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	web := freePort(t)
	good := fmt.Sprintf("command = [%q]\nworkers = 2\nready = \"notify\"\nlisten = [\"http=tcp://127.0.0.1:%d\"]\n", helloBin, web)
	writeConfig(t, conf, good)
	b := startBaton(t, nil, "--config", conf)
	before := b.waitReady(2)
	wait := startLoad(fmt.Sprintf("127.0.0.1:%d", web), 4*time.Second)

	writeConfig(t, conf, good+"workers = 0\n")
	out, code := b.cli("reload")
	if code != 1 || !strings.Contains(out, "duplicate key") && !strings.Contains(out, "workers") {
		t.Errorf("reload with a broken config: exit %d, %q", code, out)
	}
	writeConfig(t, conf, strings.Replace(good, "workers = 2", "workers = -3", 1))
	out, code = b.cli("reload")
	if code != 1 || !strings.Contains(out, conf+":2: workers: -3: want 1 to 4096") || !strings.Contains(out, "keeps serving") {
		t.Errorf("reload with an invalid value: exit %d, %q; want the file, line and key", code, out)
	}
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	writeConfig(t, conf, good+fmt.Sprintf("[[listener]]\nname = \"busy\"\naddress = \"tcp://%s\"\n", held.Addr()))
	out, code = b.cli("reload")
	if code != 1 || !strings.Contains(out, "listener busy") || !strings.Contains(out, "address already in use") {
		t.Errorf("reload with a listener that cannot be bound: exit %d, %q", code, out)
	}
	checkLoad(t, wait())
	after := b.waitReady(2)
	if after.Generation != before.Generation || fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) || len(after.Listeners) != 1 {
		t.Errorf("failed reloads changed something: before %+v, after %+v", before, after)
	}
}

// TestWorkersRunAsConfiguredUser: baton as root binds port 80 on a
// loopback address, then runs the workers as nobody.
func TestWorkersRunAsConfiguredUser(t *testing.T) {
	requireE2E(t)
	requireRoot(t)
	addr := fmt.Sprintf("127.%d.%d.%d:80", 1+os.Getpid()%250, 1+(os.Getpid()/250)%250, 2+os.Getpid()%200)
	sock := filepath.Join(shortDir(t), "app.sock")
	b := startBaton(t, nil, "--user", "nobody", "-l", "http=tcp://"+addr, "-l", "admin=unix://"+sock+"?mode=0660&owner=nobody",
		"-n", "2", "--ready", "notify", "--", helloBin)
	st := b.waitReady(2)
	for _, w := range st.Workers {
		uid, gid := procIDs(t, w.PID)
		if uid != "65534" {
			t.Errorf("worker %d runs as uid %s, want nobody (65534)", w.PID, uid)
		}
		if gid != "65534" {
			t.Errorf("worker %d runs as gid %s, want nogroup (65534)", w.PID, gid)
		}
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("port 80 on %s: %v", addr, err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "200 OK") {
		t.Errorf("answer on port 80: %q", buf[:n])
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(sock, &fi); err != nil || fi.Uid != 65534 || fi.Mode&0o777 != 0o660 {
		t.Errorf("unix socket %s: uid %d mode %o, %v; want nobody's, 0660", sock, fi.Uid, fi.Mode&0o777, err)
	}
	ctl, _ := os.Stat(b.ctl)
	if ctl.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want 0600 (root only)", ctl.Mode().Perm())
	}
}

// procIDs reads a process's real uid and gid.
func procIDs(t *testing.T, pid int) (uid, gid string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Fields(v)[0]
		}
		if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			gid = strings.Fields(v)[0]
		}
	}
	return uid, gid
}
