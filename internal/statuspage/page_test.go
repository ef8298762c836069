package statuspage

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// hostile is a status whose worker-controlled strings try to inject
// markup and script.
func hostile() api.Status {
	accepted := int64(42)
	slot := 0
	return api.Status{
		PID: 7, Generation: 3, Slots: 1, Started: time.Unix(1700000000, 0).UTC(),
		Command:   []string{`/srv/<script>alert("cmd")</script>`, "--password=hunter2"},
		Health:    api.Health{State: api.HealthDegraded, Reasons: []string{`<img src=x onerror=alert(1)>`}},
		Listeners: []api.ListenerStatus{{Name: "http", Kind: "stream", Balance: "shared", Address: "127.0.0.1:8080", Backlog: 64}},
		Workers: []api.WorkerStatus{{Slot: 0, Generation: 3, PID: 100, State: api.WorkerReady, Accepted: &accepted,
			Status: `</td><script>alert("status")</script>`, RSSBytes: 5 << 20}},
		History: []api.HistoryEntry{{Kind: api.HistoryReload, Generation: 3, Previous: 2, OK: false, Error: `<b>bad</b>`}},
		Kernel: &api.KernelView{
			Time: time.Unix(1700000100, 0).UTC(),
			Listeners: []api.KernelListener{{Name: "http", Protocol: api.ProtocolTCP, Sockets: []api.KernelSocket{{State: "LISTEN", RecvQ: 5, SendQ: 64}},
				Connections: map[string]int{"ESTAB": 3, "FIN-WAIT-2": 1}}},
			Workers:  []api.KernelWorker{{PID: 100, FDs: 12, FDLimit: 1024}},
			Warnings: []api.Warning{{Code: api.NofileDefault, Slot: &slot, Severity: api.SeverityWarning, Message: `raise it <script>alert("w")</script>`}},
		},
	}
}

// serve answers one request on a mux with the page's routes, counting
// the snapshots taken.
func serve(t *testing.T, st api.Status, ok bool, method, target string, h http.Header) (*http.Response, string, int32) {
	t.Helper()
	var calls atomic.Int32
	p := New(func(context.Context) (api.Status, bool) { calls.Add(1); return st, ok }, slog.New(slog.DiscardHandler))
	mux := http.NewServeMux()
	p.Register(mux)
	req := httptest.NewRequest(method, target, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	return res, string(body), calls.Load()
}

// TestHeaders: every route answers with its type, nosniff, the strict
// policy and a cache rule; the page and the JSON are never cached.
func TestHeaders(t *testing.T) {
	for _, tc := range []struct {
		path, ctype, cache string
	}{
		{"/", "text/html; charset=utf-8", "no-store"},
		{"/status", "text/html; charset=utf-8", "no-store"},
		{"/status.json", "application/json; charset=utf-8", "no-store"},
		{"/status.js", "text/javascript; charset=utf-8", "no-cache"},
		{"/status.css", "text/css; charset=utf-8", "no-cache"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			res, body, _ := serve(t, hostile(), true, http.MethodGet, tc.path, nil)
			if res.StatusCode != http.StatusOK || body == "" {
				t.Fatalf("GET %s: %s, %d bytes", tc.path, res.Status, len(body))
			}
			for k, want := range map[string]string{
				"Content-Type": tc.ctype, "Cache-Control": tc.cache, "X-Content-Type-Options": "nosniff",
				"Content-Security-Policy": ContentSecurityPolicy, "X-Frame-Options": "DENY",
			} {
				if got := res.Header.Get(k); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
		})
	}
	if strings.Contains(ContentSecurityPolicy, "unsafe") {
		t.Errorf("the policy allows unsafe sources: %s", ContentSecurityPolicy)
	}
}

// TestReadOnly: only GET and HEAD are served; any other method is 405
// with Allow, and takes no snapshot.
func TestReadOnly(t *testing.T) {
	for _, path := range []string{"/", "/status", "/status.json", "/status.js", "/status.css"} {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			res, _, calls := serve(t, hostile(), true, m, path, nil)
			if res.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(res.Header.Get("Allow"), "GET") || calls != 0 {
				t.Errorf("%s %s: %s, Allow %q, %d snapshots; want 405 with Allow: GET, HEAD, and none", m, path, res.Status, res.Header.Get("Allow"), calls)
			}
		}
		if res, body, _ := serve(t, hostile(), true, http.MethodHead, path, nil); res.StatusCode != http.StatusOK || body != "" {
			t.Errorf("HEAD %s: %s with %d bytes of body", path, res.Status, len(body))
		}
	}
}

// TestJSONIsStatus: /status.json is byte for byte what `baton status
// --json` prints for the same snapshot (api.IndentJSON of the reply),
// but for the command's arguments (PublicCommand), from one snapshot per
// request.
func TestJSONIsStatus(t *testing.T) {
	st := hostile()
	res, body, calls := serve(t, st, true, http.MethodGet, "/status.json", nil)
	st.Command = PublicCommand(st.Command)
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	want, err := api.IndentJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || body != string(want) {
		t.Errorf("status.json (%s):\n%s\nwant:\n%s", res.Status, body, want)
	}
	if calls != 1 {
		t.Errorf("%d snapshots for one request, want 1", calls)
	}
	var back api.Status
	if err := json.Unmarshal([]byte(body), &back); err != nil || back.Generation != 3 || len(back.History) != 1 {
		t.Errorf("status.json does not decode as the status: %v, %+v", err, back)
	}
}

// TestPageEscapes: what workers put in the status is shown as text, never
// as markup, and the page holds no inline script or style.
func TestPageEscapes(t *testing.T) {
	_, body, _ := serve(t, hostile(), true, http.MethodGet, "/", nil)
	for _, bad := range []string{`<script>alert`, `<img src=x`, `<b>bad</b>`, "</td><script>", "<script>\n", "style="} {
		if strings.Contains(body, bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	for _, want := range []string{`&lt;script&gt;alert(&#34;cmd&#34;)`, `&lt;img src=x onerror=alert(1)&gt;`, `&lt;b&gt;bad&lt;/b&gt;`,
		`raise it &lt;script&gt;`, `data-k="generation">3<`, `data-k="workers.0.accepted">42<`, `data-k="kernel.workers.0.fds">12<`,
		`data-k="kernel.listeners.0.sockets.0.recv_q">5<`, `data-k="kernel.listeners.0.connections.FIN-WAIT-2">1<`,
		`<meter min="0" max="64" value="5">`, `<script src="status.js" defer></script>`} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if n := strings.Count(body, "<script"); n != 1 {
		t.Errorf("%d script elements, want only status.js", n)
	}
}

// TestStopping: once baton has finished the page and the JSON say so
// with 503.
func TestStopping(t *testing.T) {
	for _, path := range []string{"/", "/status.json"} {
		if res, body, _ := serve(t, api.Status{}, false, http.MethodGet, path, nil); res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "stopping") {
			t.Errorf("GET %s while stopping: %s %q", path, res.Status, body)
		}
	}
}

// TestAssetRevalidates: an asset is served with an ETag, and 304 to a
// browser that has it.
func TestAssetRevalidates(t *testing.T) {
	res, body, _ := serve(t, api.Status{}, true, http.MethodGet, "/status.js", nil)
	etag := res.Header.Get("ETag")
	if etag == "" || !strings.Contains(body, "status.json") {
		t.Fatalf("status.js: ETag %q, body %d bytes", etag, len(body))
	}
	res, body, _ = serve(t, api.Status{}, true, http.MethodGet, "/status.js", http.Header{"If-None-Match": {etag}})
	if res.StatusCode != http.StatusNotModified || body != "" {
		t.Errorf("status.js with If-None-Match: %s, %d bytes", res.Status, len(body))
	}
}

// TestFormat: the template's helpers (status.js has the same).
func TestFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{formatBytes(512), "512 B"}, {formatBytes(5 << 20), "5.0 MiB"}, {formatBytes(3 << 30), "3.0 GiB"},
		{formatSeconds(0.25), "250ms"}, {formatSeconds(12.5), "12.5s"}, {formatSeconds(187), "3m07s"},
		{formatSeconds(7500), "2h05m"}, {formatSeconds(273600), "3d04h"},
		{formatLimit(-1), "unlimited"}, {formatLimit(1024), "1024"},
		{formatClock(time.Date(2026, 1, 2, 14, 2, 11, 0, time.FixedZone("x", 3600))), "13:02:11Z"},
	} {
		if tc.got != tc.want {
			t.Errorf("%q, want %q", tc.got, tc.want)
		}
	}
	if !bytes.Contains([]byte(ContentSecurityPolicy), []byte("script-src 'self'")) {
		t.Error("the policy does not limit scripts to the page's own")
	}
}

// TestCommandArgumentsNotShown: the page and its JSON name the program
// and count its arguments, but never show them: they can hold secrets,
// and the metrics listener has no authentication.
func TestCommandArgumentsNotShown(t *testing.T) {
	for _, path := range []string{"/", "/status.json"} {
		_, body, _ := serve(t, hostile(), true, http.MethodGet, path, nil)
		if strings.Contains(body, "hunter2") {
			t.Errorf("%s shows the command's arguments", path)
		}
		if !strings.Contains(body, "(1 more, not shown here: baton status shows them)") {
			t.Errorf("%s does not say the command has arguments", path)
		}
	}
	if got := PublicCommand([]string{"/bin/app"}); len(got) != 1 || got[0] != "/bin/app" {
		t.Errorf("PublicCommand of a command without arguments = %q", got)
	}
}
