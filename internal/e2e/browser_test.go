package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// browser is a headless Chromium driven over the DevTools protocol on
// --remote-debugging-pipe: requests go to its fd 3 and replies come from
// its fd 4, each a JSON message ended by a NUL byte. No module needed.
// It records every console error, uncaught exception and log entry of
// level error (a refused script or style, a failed load) in Errors.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	in      *os.File // our end of its fd 3
	stderr  *logBuffer
	done    chan struct{}
	session string // the page's flattened session

	mu      sync.Mutex
	next    int
	waiting map[int]chan cdpMessage
	errs    []string
}

// cdpMessage is a DevTools reply or event.
type cdpMessage struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// startBrowser starts Debian's chromium headless with a page attached, or
// skips the test when it is not installed. It is stopped when the test
// ends.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("chromium is not installed (apt-get install --no-install-recommends chromium); the status page is not tested in a browser")
	}
	cmdIn, in, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out, cmdOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--headless=new", "--remote-debugging-pipe", "--user-data-dir=" + t.TempDir(),
		"--no-first-run", "--no-default-browser-check", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
		// Nothing but the page: no update checks, no phishing lists, no
		// network beyond loopback.
		"--disable-background-networking", "--disable-component-update", "--disable-default-apps",
		"--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-sync",
		"--disable-extensions", "--no-pings", "--window-size=1000,1400",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--no-sandbox") // chromium refuses to run its sandbox as root
	}
	b := &browser{t: t, in: in, stderr: &logBuffer{}, done: make(chan struct{}), waiting: map[int]chan cdpMessage{}}
	b.cmd = exec.Command(bin, append(args, "about:blank")...)
	b.cmd.ExtraFiles = []*os.File{cmdIn, cmdOut} // fds 3 and 4
	b.cmd.Stdout, b.cmd.Stderr = b.stderr, b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	cmdIn.Close() // chromium's ends: it holds its own copies
	cmdOut.Close()
	go b.read(out)
	t.Cleanup(func() {
		in.Close() // chromium exits when its pipe closes
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			b.cmd.Process.Kill()
			<-b.done
		}
		if t.Failed() {
			t.Logf("chromium's output:\n%s", b.stderr)
		}
	})

	var target struct {
		TargetID string `json:"targetId"`
	}
	b.callTo("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var att struct {
		SessionID string `json:"sessionId"`
	}
	b.callTo("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	b.session = att.SessionID
	for _, domain := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		b.call(domain, nil, nil)
	}
	return b
}

// read delivers replies to their callers and records errors the page
// reports, until chromium closes its end.
func (b *browser) read(out *os.File) {
	defer close(b.done)
	defer out.Close()
	defer b.cmd.Wait()
	r := bufio.NewReader(out)
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		b.mu.Lock()
		if ch, ok := b.waiting[m.ID]; ok && m.Method == "" {
			delete(b.waiting, m.ID)
			ch <- m
		}
		if e := pageError(m); e != "" {
			b.errs = append(b.errs, e)
		}
		b.mu.Unlock()
	}
}

// pageError is the error an event reports, "" for other messages.
func pageError(m cdpMessage) string {
	switch m.Method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		if json.Unmarshal(m.Params, &p) == nil && (p.Type == "error" || p.Type == "assert") {
			return fmt.Sprintf("console.%s: %+v", p.Type, p.Args)
		}
	case "Runtime.exceptionThrown":
		return "uncaught exception: " + string(m.Params)
	case "Log.entryAdded":
		var p struct {
			Entry struct {
				Level, Source, Text, URL string
			} `json:"entry"`
		}
		if json.Unmarshal(m.Params, &p) == nil && p.Entry.Level == "error" {
			return fmt.Sprintf("%s error: %s (%s)", p.Entry.Source, p.Entry.Text, p.Entry.URL)
		}
	}
	return ""
}

// Errors returns the errors the page has reported so far.
func (b *browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

// forget drops the errors recorded after the first n: the test has
// checked them.
func (b *browser) forget(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errs = b.errs[:min(n, len(b.errs))]
}

// call sends a command to the page and decodes its result into res (nil:
// ignored); it fails the test on an error or after 30s.
func (b *browser) call(method string, params, res any) {
	b.t.Helper()
	b.callTo(b.session, method, params, res)
}

// callTo is call in a session ("" for the browser itself).
func (b *browser) callTo(session, method string, params, res any) {
	b.t.Helper()
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpMessage, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	raw, err := json.Marshal(msg)
	if err != nil {
		b.t.Fatal(err)
	}
	if _, err := b.in.Write(append(raw, 0)); err != nil {
		b.t.Fatalf("chromium: %s: %v", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			b.t.Fatalf("chromium: %s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		if res != nil {
			if err := json.Unmarshal(m.Result, res); err != nil {
				b.t.Fatalf("chromium: %s: reading the result: %v", method, err)
			}
		}
	case <-b.done:
		b.t.Fatalf("chromium exited during %s:\n%s", method, b.stderr)
	case <-time.After(30 * time.Second):
		b.t.Fatalf("chromium: no answer to %s within 30s", method)
	}
}

// eval evaluates a JavaScript expression in the page and decodes its
// value, which must be JSON-serializable, into res.
func (b *browser) eval(expr string, res any) {
	b.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		b.t.Fatalf("evaluating %s: %s", expr, r.ExceptionDetails.Text)
	}
	if err := json.Unmarshal(r.Result.Value, res); err != nil {
		b.t.Fatalf("evaluating %s: %v (value %s)", expr, err, r.Result.Value)
	}
}

// waitFor evaluates cond (a JavaScript expression) until it is true, at
// most for within; the failure shows what the page shows.
func (b *browser) waitFor(what, cond string, within time.Duration) {
	b.t.Helper()
	err := batontest.Wait(within, func() error {
		var ok bool
		b.eval("!!("+cond+")", &ok)
		if !ok {
			return fmt.Errorf("the page: %s (%s)", what, cond)
		}
		return nil
	})
	if err != nil {
		var body string
		b.eval("document.body ? document.body.innerText : ''", &body)
		b.t.Fatalf("%v; it shows:\n%s\nerrors: %s", err, body, strings.Join(b.Errors(), "\n"))
	}
}
