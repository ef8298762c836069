package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// watchSettle is the settle time of the --watch tests.
const watchSettle = 200 * time.Millisecond

// TestWatchReloads: with --watch on the workers' binary, the config file
// and a `current` symlink, a binary replaced by cp and by mv, a config
// edited in place and a symlink swung each give exactly one reload, with
// what changed in the log; an invalid config gives none, and a warning.
func TestWatchReloads(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	app := filepath.Join(dir, "app") // the workers' "binary": a script
	writeScript := func(path, version string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("#!/bin/sh\necho "+version+"\nexec sleep 600\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeScript(app, "v1")
	for _, d := range []string{"r1", "r2"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	current := filepath.Join(dir, "current")
	if err := os.Symlink("r1", current); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "baton.toml")
	config := fmt.Sprintf("command = [%q]\nworkers = 1\nready = \"delay:50ms\"\nno_listeners = true\ndrain_timeout = \"2s\"\n", app)
	writeConfig(t, conf, config)
	b := startBaton(t, nil, "--config", conf, "--watch", app, "--watch", conf, "--watch", current,
		"--watch-settle", watchSettle.String())
	b.waitReady(1)
	eventually(t, 10*time.Second, "baton says it watches", func() error {
		if !strings.Contains(b.log.String(), "watching files") {
			return fmt.Errorf("no \"watching files\" in the log")
		}
		return nil
	})

	reloads := func() (ok, failed int) {
		st, err := b.tryStatusOf(false)
		if err != nil {
			t.Fatal(err)
		}
		return st.Reloads.OK, st.Reloads.Failed
	}
	// oneReload runs change and checks that it gives exactly one
	// reload (ok, or failed when fails), then nothing more for five
	// settle times, and that the log says what changed.
	oneReload := func(name string, fails bool, said string, change func()) {
		t.Helper()
		ok0, failed0 := reloads()
		change()
		want := fmt.Sprintf("%d ok, %d failed", ok0+1, failed0)
		if fails {
			want = fmt.Sprintf("%d ok, %d failed", ok0, failed0+1)
		}
		eventually(t, 30*time.Second, name+": one reload", func() error {
			if ok, failed := reloads(); fmt.Sprintf("%d ok, %d failed", ok, failed) != want {
				return fmt.Errorf("reloads: %d ok, %d failed; want %s", ok, failed, want)
			}
			return nil
		})
		b.waitReady(1)
		time.Sleep(5 * watchSettle) // a second reload would come by now
		if ok, failed := reloads(); fmt.Sprintf("%d ok, %d failed", ok, failed) != want {
			t.Fatalf("%s: reloads %d ok, %d failed; want %s: exactly one", name, ok, failed, want)
		}
		if !strings.Contains(b.log.String(), said) {
			t.Fatalf("%s: the log does not say %q:\n%s", name, said, b.log)
		}
	}

	oneReload("binary replaced by cp", false, "app (size", func() {
		writeScript(filepath.Join(dir, "app.v2"), "version2")
		if out, err := exec.Command("cp", filepath.Join(dir, "app.v2"), app).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
	})
	oneReload("binary replaced by mv", false, "app (replaced (inode", func() {
		writeScript(filepath.Join(dir, "app.v3"), "v3")
		if out, err := exec.Command("mv", filepath.Join(dir, "app.v3"), app).CombinedOutput(); err != nil {
			t.Fatalf("mv: %v: %s", err, out)
		}
	})
	oneReload("config edited in place", false, "baton.toml (size", func() {
		f, err := os.OpenFile(conf, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i := range 5 { // written in pieces: still one reload
			fmt.Fprintf(f, "# edit %d\n", i)
			time.Sleep(watchSettle / 10)
		}
	})
	oneReload("symlink swung", false, "current (symlink → r2 (was → r1)", func() {
		if out, err := exec.Command("ln", "-sfn", "r2", current).CombinedOutput(); err != nil {
			t.Fatalf("ln: %v: %s", err, out)
		}
	})
	gen := b.status().Generation
	oneReload("invalid config", true, "the reload for changed files failed", func() {
		writeConfig(t, conf, config+"workers = \"many\"\n")
	})
	if st := b.status(); st.Generation != gen {
		t.Errorf("an invalid config changed the generation from %d to %d", gen, st.Generation)
	}
}
