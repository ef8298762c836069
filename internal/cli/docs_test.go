package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPages: gen-man writes a page for every command a user can run
// (completion's too, now that it is listed), and man(1) renders each
// without a warning (what lintian checks).
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var out, errOut bytes.Buffer
	if code := Main([]string{"gen-man", "--dir", dir}, &out, &errOut); code != 0 {
		t.Fatalf("gen-man: exit %d: %s", code, errOut.String())
	}
	for _, name := range []string{"baton", "baton-run", "baton-check", "baton-reload", "baton-scale", "baton-upgrade", "baton-status", "baton-top", "baton-stop", "baton-demo", "baton-completion", "baton-completion-bash"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".1"))
		if err != nil {
			t.Errorf("no page for %s: %v", name, err)
			continue
		}
		if !strings.Contains(string(b), `"2023\-11\-14"`) {
			t.Errorf("%s.1 is not dated SOURCE_DATE_EPOCH's day (a reproducible build)", name)
		}
	}
	if strings.Contains(out.String(), "gen-man") {
		t.Errorf("gen-man, a hidden command, has a page:\n%s", out.String())
	}
	man, err := exec.LookPath("man")
	if err != nil {
		t.Skip("man is not installed (man-db); the pages are not rendered")
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	for _, p := range pages {
		cmd := exec.Command(man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", p)
		cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "MANROFFSEQ=", "MANWIDTH=80")
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = nil, &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("man --warnings %s: %v\n%s", filepath.Base(p), err, stderr.String())
		}
	}
}

// TestCompletionIsListed: baton completion is part of the help, not
// hidden, and writes a script for each shell.
func TestCompletionIsListed(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"--help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "completion") {
		t.Errorf("baton --help (exit %d) does not list completion:\n%s", code, out.String())
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out.Reset()
		if code := Main([]string{"completion", shell}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "baton") {
			t.Errorf("baton completion %s: exit %d, %d bytes", shell, code, out.Len())
		}
	}
}
