package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The commands the README and the examples give are run as written, from
// a copy of the checkout (symlinks to it, with a bin/ of its own), after
// `make build` there. Each baton runs in a network namespace and a
// /run/baton of its own (unshare as root), so that the fixed ports and
// the default control sockets the docs use (127.0.0.1:8080, /run/baton/
// demo.sock) neither clash with the host nor with other tests.
//
// What is not run: `make test` and the other development targets (they
// are the test suite, and take minutes), `nc` in two terminals (a line
// sent with bash's /dev/tcp instead), and commands given as syntax
// (`baton upgrade [--binary PATH]`, `baton run --takeover PATH ...`).

// docCase is one documented `baton run` (or make run) and what the docs
// do next with it.
type docCase struct {
	name  string
	where string // the file the commands are in, for messages
	dir   string // working directory, relative to the checkout
	run   string // the command that starts baton, as written
	after []string
	// probe is a bash command that succeeds once the service answers.
	probe string
	// stop stops baton when the docs leave it running.
	stop string
	// needs is a program the case needs; it skips without it.
	needs string
}

// checkoutCopy is a directory that looks like the checkout: a symlink to
// each of its entries but bin/, which `make build` fills there.
func checkoutCopy(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := shortDir(t)
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "bin" {
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// `make build` builds baton and every example written in Go.
func makeBuild(t *testing.T, checkout string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "build")
	cmd.Dir = checkout
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	mains, _ := filepath.Glob(filepath.Join(checkout, "examples", "*", "main.go"))
	if len(mains) < 3 {
		t.Fatalf("only %d examples with a main.go", len(mains))
	}
	for _, m := range append(mains, filepath.Join(checkout, "cmd", "baton", "main.go")) {
		name := filepath.Base(filepath.Dir(m))
		if fi, err := os.Stat(filepath.Join(checkout, "bin", name)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("make build did not build bin/%s (%s): %v", name, filepath.Dir(m), err)
		}
	}
}

func TestMakeBuildBuildsEveryExample(t *testing.T) {
	requireE2E(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	makeBuild(t, checkoutCopy(t))
}

// httpProbe is a bash command that GETs / from addr (HOST:PORT) and
// succeeds on a 200, without curl.
func httpProbe(addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	if host == "0.0.0.0" || host == "" {
		host = "127.0.0.1"
	}
	return fmt.Sprintf(`{ exec 3<>/dev/tcp/%s/%s && printf 'GET / HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && head -1 <&3 | grep -q ' 200 '; } 2>/dev/null; r=$?; exec 3<&-; [ $r = 0 ]`, host, port)
}

// chatProbe says /whoami to the chat at addr and succeeds on an answer.
func chatProbe(addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf(`{ exec 3<>/dev/tcp/%s/%s && printf '/whoami\n' >&3 && read -t 5 line <&3 && [ -n "$line" ]; } 2>/dev/null; r=$?; exec 3<&-; [ $r = 0 ]`, host, port)
}

var tcpAddr = regexp.MustCompile(`tcp://([0-9.]+:[0-9]+)`)

// firstAddr is the first tcp://HOST:PORT in text.
func firstAddr(t *testing.T, where, text string) string {
	t.Helper()
	m := tcpAddr.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no tcp:// address in %q", where, text)
	}
	return m[1]
}

// readDoc reads a file of the checkout.
func readDoc(t *testing.T, checkout, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(checkout, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// shBlock returns the lines of the first ```sh block of doc that contains
// marker, without comments and blank lines.
func shBlock(t *testing.T, where, doc, marker string) []string {
	t.Helper()
	for _, block := range strings.Split(doc, "```sh\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if !strings.Contains(block, marker) {
			continue
		}
		var lines []string
		cont := false
		for _, l := range strings.Split(block, "\n") {
			l, _, _ = strings.Cut(l, "#")
			if l = strings.TrimSpace(l); l == "" {
				continue
			}
			if cont {
				lines[len(lines)-1] += " " + l
			} else {
				lines = append(lines, l)
			}
			if cont = strings.HasSuffix(l, "\\"); cont {
				last := lines[len(lines)-1]
				lines[len(lines)-1] = strings.TrimSpace(strings.TrimSuffix(last, "\\"))
			}
		}
		return lines
	}
	t.Fatalf("%s has no sh block with %q: the docs changed; update this test to run what they say now", where, marker)
	return nil
}

// line returns the first line of doc that matches re (its first group),
// with the lines it continues on (a trailing backslash) joined to it, as
// a Go comment writes them ("//\t    --more").
func line(t *testing.T, where, doc, re string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)` + re).FindStringSubmatchIndex(doc)
	if m == nil {
		t.Fatalf("%s has no line matching %s: the docs changed; update this test to run what they say now", where, re)
	}
	l := strings.TrimSpace(doc[m[2]:m[3]])
	rest := doc[m[1]:]
	for strings.HasSuffix(l, "\\") {
		next, after, _ := strings.Cut(strings.TrimPrefix(rest, "\n"), "\n")
		l = strings.TrimSpace(strings.TrimSuffix(l, "\\")) + " " + strings.TrimSpace(strings.TrimLeft(next, "/#\t "))
		rest = "\n" + after
	}
	return l
}

// docCases collects the documented commands from the files themselves.
func docCases(t *testing.T, checkout string) []docCase {
	readme := readDoc(t, checkout, "README.md")
	var cases []docCase

	// The quick start: make run, then the commands the next paragraph
	// suggests.
	quick := shBlock(t, "README.md", readme, "make run")
	if quick[0] != "make run" {
		t.Fatalf("README.md's first block starts %q, want make run", quick[0])
	}
	_, para, found := strings.Cut(readme, "While `make run` runs")
	if !found {
		t.Fatalf("README.md no longer says what to try while make run runs; update this test")
	}
	para, _, _ = strings.Cut(para, "\n\n")
	var tries []string
	for _, m := range regexp.MustCompile("`((?:curl|bin/baton) [^`]+)`").FindAllStringSubmatch(para, -1) {
		tries = append(tries, m[1])
	}
	if len(tries) < 3 {
		t.Fatalf("README.md's quick start suggests %q; want curl, status and reload", tries)
	}
	mk := readDoc(t, checkout, "Makefile")
	cases = append(cases, docCase{name: "quick start", where: "README.md", run: "make run", after: tries,
		probe: httpProbe(firstAddr(t, "Makefile's run", line(t, "Makefile", mk, `^run:.*\n\t(.*)`))), stop: "bin/baton stop --name demo"})

	// The overview of the commands; ./server is the reader's program:
	// here the hello example.
	cmds := shBlock(t, "README.md", readme, "baton run -l http=tcp://0.0.0.0:8080")
	cases = append(cases, docCase{name: "commands", where: "README.md", dir: "srv", run: cmds[0], after: cmds[1:],
		probe: httpProbe(firstAddr(t, "README.md", cmds[0]))})

	// The chat, in the README's list and in its own README.
	chat := line(t, "README.md", readme, "`(bin/baton run -l chat=[^`]+)`")
	cases = append(cases, docCase{name: "chat in the README", where: "README.md", run: chat, after: []string{line(t, "README.md", readme, "`(bin/baton reload)`, keep chatting")},
		probe: chatProbe(firstAddr(t, "README.md", chat)), stop: "bin/baton stop"})
	chatDoc := shBlock(t, "examples/chat/README.md", readDoc(t, checkout, "examples/chat/README.md"), "bin/chat")
	var chatRun string
	var chatAfter []string
	for _, l := range chatDoc {
		switch {
		case strings.HasPrefix(l, "make build"), strings.HasPrefix(l, "nc "):
		case strings.Contains(l, "baton run"):
			chatRun = l
		default:
			chatAfter = append(chatAfter, l)
		}
	}
	cases = append(cases, docCase{name: "chat", where: "examples/chat/README.md", run: chatRun, after: chatAfter,
		probe: chatProbe(firstAddr(t, "examples/chat/README.md", chatRun)), stop: "bin/baton stop"})

	// Each example's own comment.
	for _, ex := range []struct{ name, file, re, needs string }{
		{"hello", "examples/hello/main.go", `^//\t(bin/baton run .*)$`, ""},
		{"chat's comment", "examples/chat/main.go", `^//\t(bin/baton run .*)$`, ""},
		{"selfbind", "examples/selfbind/main.go", `^//\t(bin/baton run .*)$`, "capture"},
		{"python", "examples/python/server.py", `^    (bin/baton run .*)$`, "python3"},
		{"config", "examples/config/baton.toml", `^#\s+(bin/baton run --config .*)$`, ""},
	} {
		doc := readDoc(t, checkout, ex.file)
		run := line(t, ex.file, doc, ex.re)
		probe := ""
		switch {
		case strings.Contains(run, "chat"):
			probe = chatProbe(firstAddr(t, ex.file, run))
		case strings.Contains(run, "--config"):
			probe = httpProbe(firstAddr(t, ex.file, line(t, ex.file, doc, `^(address = .*)$`)))
		default:
			probe = httpProbe(firstAddr(t, ex.file, run))
		}
		stop := "bin/baton stop"
		if n := regexp.MustCompile(`(?m)^name = "(\w+)"`).FindStringSubmatch(doc); n != nil && ex.name == "config" {
			stop = "bin/baton stop --name " + n[1]
		}
		cases = append(cases, docCase{name: ex.name, where: ex.file, run: run, probe: probe, stop: stop, needs: ex.needs})
	}

	// The QUIC example: UDP, so the probe is baton's own status (0 once
	// the workers are ready and nothing is wrong).
	quicDoc := shBlock(t, "examples/quic/README.md", readDoc(t, checkout, "examples/quic/README.md"), "bin/quic")
	var quicRun string
	for _, l := range quicDoc {
		if strings.Contains(l, "baton run") {
			quicRun = l
		}
	}
	cases = append(cases, docCase{name: "quic", where: "examples/quic/README.md", run: quicRun, probe: "bin/baton status >/dev/null 2>&1", stop: "bin/baton stop"})
	quicComment := line(t, "examples/quic/main.go", readDoc(t, checkout, "examples/quic/main.go"), `^//\t(bin/baton run .*)$`)
	cases = append(cases, docCase{name: "quic's comment", where: "examples/quic/main.go", run: quicComment, probe: "bin/baton status >/dev/null 2>&1", stop: "bin/baton stop"})

	// baton demo's help.
	out, _ := exec.Command(filepath.Join(checkout, "bin", "baton"), "demo", "--help").CombinedOutput()
	demo := line(t, "baton demo --help", string(out), `^\s+(baton run .* -- baton demo)$`)
	cases = append(cases, docCase{name: "demo", where: "baton demo --help", run: demo, probe: httpProbe(firstAddr(t, "baton demo --help", demo)), stop: "baton stop"})
	return cases
}

// sandboxScript is the bash script that runs one case: baton started
// with the documented command, the documented commands once it answers,
// each of which must exit 0 (a follower: run until stopped), then a
// stop; baton must exit 0.
func sandboxScript(c docCase, checkout, logFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `set -u
ip link set lo up
mkdir -p /run/baton && mount -t tmpfs -o mode=0755 tmpfs /run/baton
cd %q/%s
export PATH=%q/bin:$PATH
probe() { %s; }
( %s ) >%q 2>&1 &
pid=$!
for i in $(seq 600); do probe && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
if ! probe; then echo "FAIL: %s: nothing answers after: %s"; exit 1; fi
`, checkout, c.dir, checkout, c.probe, c.run, logFile, c.where, c.run)
	for _, cmd := range c.after {
		in := "</dev/null"
		if strings.HasSuffix(cmd, " top") || strings.Contains(cmd, " top ") {
			in = `<<<q` // top reads a line "q" when stdin is no terminal
		}
		if follows(cmd) {
			// A follower runs until stopped: 3 s of it must end by the
			// timeout (124), not by an error of its own.
			fmt.Fprintf(&b, "echo \"+ %s ($SECONDS s)\"\ntimeout 3 bash -c %q %s; rc=$?\n[ $rc = 124 ] || { echo \"FAIL: %s: exit $rc before being stopped: %s\"; exit 1; }\n", cmd, cmd, in, c.where, cmd)
		} else {
			fmt.Fprintf(&b, "echo \"+ %s ($SECONDS s)\"\nif ! timeout 120 bash -c %q %s; then echo \"FAIL: %s: exit $?: %s\"; exit 1; fi\n", cmd, cmd, in, c.where, cmd)
		}
		if !strings.HasSuffix(cmd, " stop") {
			// Still serving after each command.
			fmt.Fprintf(&b, "probe || { sleep 1; probe; } || { echo \"FAIL: %s: nothing answers after %s\"; exit 1; }\n", c.where, cmd)
		}
	}
	if c.stop != "" {
		fmt.Fprintf(&b, "echo \"+ %s\"\n%s || { echo \"FAIL: %s exited $?\"; exit 1; }\n", c.stop, c.stop, c.stop)
	}
	fmt.Fprintf(&b, "echo \"+ wait ($SECONDS s)\"\nwait $pid; rc=$?\n[ $rc = 0 ] || { echo \"FAIL: %s: baton exited $rc\"; exit 1; }\necho OK\n", c.run)
	return b.String()
}

func TestDocumentedCommandsWork(t *testing.T) {
	requireE2E(t)
	requireRoot(t)
	for _, p := range []string{"make", "unshare", "ip", "bash"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed (the documented commands run in namespaces of their own)", p)
		}
	}
	if err := exec.Command("unshare", "--net", "--mount", "true").Run(); err != nil {
		t.Skipf("cannot make network and mount namespaces here: %v", err)
	}
	checkout := checkoutCopy(t)
	makeBuild(t, checkout)
	// ./server, the reader's program in the README's overview.
	if err := os.Mkdir(filepath.Join(checkout, "srv"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(checkout, "bin", "hello"), filepath.Join(checkout, "srv", "server")); err != nil {
		t.Fatal(err)
	}
	for _, c := range docCases(t, checkout) {
		t.Run(c.name, func(t *testing.T) {
			switch c.needs {
			case "capture":
				requireCapture(t)
			case "":
			default:
				if _, err := exec.LookPath(c.needs); err != nil {
					t.Skipf("%s is not installed", c.needs)
				}
			}
			logFile := filepath.Join(shortDir(t), "baton.log")
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "unshare", "--net", "--mount", "--fork", "bash", "-c", sandboxScript(c, checkout, logFile))
			cmd.Env = append(os.Environ(), "MAKEFLAGS=") // make run's own make, not the caller's jobs
			out, err := cmd.CombinedOutput()
			if testing.Verbose() {
				t.Logf("%s", out)
			}
			if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "OK") {
				log, _ := os.ReadFile(logFile)
				t.Errorf("%s: %s: %v\n%s\nbaton's output:\n%s", c.where, c.run, err, out, log)
			}
		})
	}
}

// follows reports whether a documented command follows output until it
// is stopped (baton logs -f).
func follows(cmd string) bool {
	f := strings.Fields(cmd)
	return len(f) > 1 && strings.HasSuffix(f[0], "baton") && f[1] == "logs" && (slices.Contains(f, "-f") || slices.Contains(f, "--follow"))
}
