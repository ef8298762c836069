package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// TestStatusPageInBrowser drives the status page in a headless Chromium:
// it loads with no console error under its Content-Security-Policy; the
// numbers it shows (every element with a data-k, named by its JSON path)
// equal `baton status --json` taken in the same second, by script and
// without script (the page rendered on the server); after a reload the
// open page shows the new generation and the reload in its history
// without being reloaded, and so does it after an upgrade, which the
// history keeps; and it fits a phone's width. With
// E2E_STATUS_SCREENSHOT=FILE it saves a screenshot there (docs/status.png),
// and with E2E_STATUS_SCREENSHOT_PHONE=FILE one at a phone's width.
func TestStatusPageInBrowser(t *testing.T) {
	requireE2E(t)
	br := startBrowser(t)
	// A port of its own, not 0: the upgraded baton binds it again.
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?backlog=64", "-n", "2", "--ready", "notify",
		"--metrics", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--", helloBin)
	b.waitReady(2)
	page := "http://" + b.metricsAddr() + "/"

	// A little traffic, so that there is something to count: a few
	// requests, and one connection kept open (ESTAB).
	addr := b.addr("http")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for range 10 {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	held, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	waitAccepted(t, b, 11)

	br.call("Page.navigate", map[string]any{"url": page}, nil)
	br.waitFor("loads and polls status.json", `document.readyState === "complete" && Number(document.body.dataset.polls) >= 1`, 20*time.Second)
	shown := comparePage(t, br, b, true)
	for _, k := range []string{"generation", "workers.0.pid", "workers.1.pid", "kernel.listeners.0.sockets.0.send_q", "kernel.workers.0.fds", "handoff.held", "listeners.0.address"} {
		if _, ok := shown[k]; !ok {
			t.Errorf("the page does not show %s; it shows %v", k, shown)
		}
	}

	// A reload: the open page follows by itself.
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("baton reload: exit %d\n%s", code, out)
	}
	br.waitFor("shows generation 2 after the reload", `document.querySelector('[data-k="generation"]').textContent === "2"`, 20*time.Second)
	b.waitReady(2)
	br.waitFor("shows only generation 2's workers", `[...document.querySelectorAll('[data-k$=".generation"][data-k^="workers."]')].every(e => e.textContent === "2")`, 20*time.Second)
	shown = comparePage(t, br, b, true)
	if shown["history.0.kind"] != "reload" || shown["history.0.previous"] != "1" || shown["history.0.generation"] != "2" {
		t.Errorf("the history does not show the reload from 1 to 2: %v", shown)
	}
	br.waitFor("draws a queue chart", `document.querySelector("#queues svg polyline")`, 10*time.Second)

	// An upgrade: baton re-executes itself and binds the page's address
	// again; the open page says it lost baton meanwhile (a failed load,
	// the only error allowed), then shows the upgrade in the history,
	// which the new baton kept.
	before := len(br.Errors())
	if out, code := b.cli("upgrade"); code != 0 {
		t.Fatalf("baton upgrade: exit %d\n%s", code, out)
	}
	br.waitFor("shows the upgrade", `document.querySelector('[data-k="upgrades"]').textContent === "1" && [...document.querySelectorAll('[data-k$=".kind"]')].some(e => e.textContent === "upgrade")`, 30*time.Second)
	for _, e := range br.Errors()[before:] {
		if !strings.Contains(e, "status.json") {
			t.Errorf("the page reported an error during the upgrade: %s", e)
		}
	}
	br.forget(before)
	b.waitReady(2)
	shown = comparePage(t, br, b, true)
	if shown["history.0.kind"] != "reload" || shown["history.1.kind"] != "upgrade" {
		t.Errorf("the history does not show the reload, then the upgrade: %v", shown)
	}

	screenshot(t, br, os.Getenv("E2E_STATUS_SCREENSHOT"))

	// On a phone's width nothing overflows the page (wide tables scroll in
	// their box).
	br.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}, nil)
	br.waitFor("fits 390 CSS pixels", `window.innerWidth === 390 && document.documentElement.scrollWidth <= window.innerWidth`, 10*time.Second)
	screenshot(t, br, os.Getenv("E2E_STATUS_SCREENSHOT_PHONE"))
	br.call("Emulation.clearDeviceMetricsOverride", nil, nil)

	// Without script: the server's rendering shows the same numbers.
	br.call("Emulation.setScriptExecutionDisabled", map[string]any{"value": true}, nil)
	br.call("Page.navigate", map[string]any{"url": page + "status"}, nil)
	br.waitFor("loads without script", `document.readyState === "complete" && !document.body.dataset.polls && document.querySelector('[data-k="generation"]')`, 20*time.Second)
	comparePage(t, br, b, false)

	if errs := br.Errors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

// screenshot takes a PNG of the whole page and, when file is not "",
// saves it there.
func screenshot(t *testing.T, br *browser, file string) {
	t.Helper()
	var shot struct {
		Data string `json:"data"`
	}
	br.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("the screenshot is not a PNG (%v)", err)
	}
	if file != "" {
		if err := os.WriteFile(file, png, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// waitAccepted waits until baton's workers report n accepted connections
// between them (they report once a second).
func waitAccepted(t *testing.T, b *instance, n int64) {
	t.Helper()
	batontest.WaitFor(t, 20*time.Second, func() error {
		var sum int64
		for _, w := range b.status().Workers {
			if w.Accepted != nil {
				sum += *w.Accepted
			}
		}
		if sum < n {
			return fmt.Errorf("the workers report %d accepted connections, not %d", sum, n)
		}
		return nil
	})
}

// comparePage reads every value the page shows by its JSON path (data-k)
// and compares it with `baton status --json` taken right after: with
// script, just after the page's next poll; without, just after the page
// was rendered. A value that moved in between (a connection closing) is
// read again, a few times. It returns what the page showed.
func comparePage(t *testing.T, br *browser, b *instance, script bool) map[string]string {
	t.Helper()
	var diffs []string
	var shown map[string]string
	for range 5 {
		if script {
			var polls int
			br.eval(`Number(document.body.dataset.polls)`, &polls)
			br.waitFor("polls again", fmt.Sprintf(`Number(document.body.dataset.polls) > %d`, polls), 10*time.Second)
		}
		var page struct {
			Taken  string      `json:"taken"`
			Values [][2]string `json:"values"`
		}
		br.eval(`({taken: document.body.dataset.taken, values: [...document.querySelectorAll("[data-k]")].map(e => [e.dataset.k, e.textContent])})`, &page)
		out, code := b.cli("status", "--json")
		if code != 0 {
			t.Fatalf("baton status --json: exit %d\n%s", code, out)
		}
		var st map[string]any
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("baton status --json: %v\n%s", err, out)
		}
		taken, err := time.Parse(time.RFC3339Nano, page.Taken)
		if err != nil {
			t.Fatalf("the page's snapshot time %q: %v", page.Taken, err)
		}
		kt, _ := time.Parse(time.RFC3339Nano, jsonPath(st, "kernel.time").(string))
		if d := kt.Sub(taken); script && math.Abs(d.Seconds()) >= 1 {
			t.Errorf("the page's snapshot was taken %s before baton status --json's (want the same second)", d)
		}
		shown, diffs = map[string]string{}, nil
		for _, kv := range page.Values {
			k, text := kv[0], kv[1]
			shown[k] = text
			if want := jsonText(jsonPath(st, k)); want != text {
				diffs = append(diffs, fmt.Sprintf("%s: the page shows %q, baton status --json says %q", k, text, want))
			}
		}
		if len(page.Values) == 0 {
			diffs = append(diffs, "the page shows no value with a data-k")
		}
		if len(diffs) == 0 {
			return shown
		}
		if !script {
			br.call("Page.reload", nil, nil)
			br.waitFor("loads again", `document.readyState === "complete" && document.querySelector('[data-k="generation"]')`, 20*time.Second)
		}
	}
	t.Errorf("the page (script %v) and baton status --json differ:\n%s", script, strings.Join(diffs, "\n"))
	return shown
}

// jsonPath reads a dotted path ("workers.0.pid") of a decoded JSON value;
// nil when absent.
func jsonPath(v any, path string) any {
	for _, k := range strings.Split(path, ".") {
		switch o := v.(type) {
		case map[string]any:
			v = o[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(o) {
				return nil
			}
			v = o[i]
		default:
			return nil
		}
	}
	return v
}

// jsonText is a JSON value as the page shows it; an absent count is 0.
func jsonText(v any) string {
	switch v := v.(type) {
	case nil:
		return "0"
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		return v
	}
	return fmt.Sprint(v)
}
