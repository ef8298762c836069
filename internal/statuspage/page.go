package statuspage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

//go:embed assets
var assets embed.FS

// StatusFunc returns a status snapshot with the kernel's view (what
// `baton status --json` prints), or false once baton has finished.
type StatusFunc func(context.Context) (api.Status, bool)

// SnapshotTimeout bounds the snapshot and kernel view one request waits
// for.
const SnapshotTimeout = 10 * time.Second

// ContentSecurityPolicy allows the page its own script, style sheet and
// JSON only: no inline script or style, nothing from another origin, no
// form, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Page serves the status page. Create it with New.
type Page struct {
	status StatusFunc
	log    *slog.Logger
	tmpl   *template.Template
	static map[string]asset
}

// asset is an embedded file with its type and validator.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// New makes the page, reading snapshots through status.
func New(status StatusFunc, log *slog.Logger) *Page {
	p := &Page{
		status: status,
		log:    log,
		tmpl:   template.Must(template.New("index.html").Funcs(funcs).ParseFS(assets, "assets/index.html")),
		static: map[string]asset{},
	}
	for name, ctype := range map[string]string{"status.css": "text/css; charset=utf-8", "status.js": "text/javascript; charset=utf-8"} {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			panic("statuspage: embedded " + name + " is missing: " + err.Error())
		}
		sum := sha256.Sum256(b)
		p.static[name] = asset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return p
}

// Register adds the page's routes to mux: the page at / and /status,
// the snapshot at /status.json, and the script and style sheet. Every
// route is GET (and HEAD); mux answers other methods 405.
func (p *Page) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", p.servePage)
	mux.HandleFunc("GET /status", p.servePage)
	mux.HandleFunc("GET /status.json", p.serveJSON)
	for name := range p.static {
		mux.HandleFunc("GET /"+name, p.serveAsset)
	}
}

// secure sets the headers every response of the page carries.
func secure(w http.ResponseWriter, ctype, cache string) {
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", cache)
}

// snapshot asks for the status (its command as PublicCommand), bounded
// by SnapshotTimeout.
// It answers the request itself, 503, when baton has finished.
func (p *Page) snapshot(w http.ResponseWriter, r *http.Request) (api.Status, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), SnapshotTimeout)
	defer cancel()
	st, ok := p.status(ctx)
	if !ok {
		secure(w, "text/plain; charset=utf-8", "no-store")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("baton is stopping: no status to show\n"))
		return st, false
	}
	st.Command = PublicCommand(st.Command)
	return st, true
}

// PublicCommand is the workers' command as the page shows it: the
// program, and how many arguments it has, not the arguments. The page is
// served without authentication on the metrics listener, which may be
// reachable from other hosts, and arguments can hold secrets
// (--password=...); baton status, for those who may use the control
// socket, shows them.
func PublicCommand(argv []string) []string {
	if len(argv) <= 1 {
		return argv
	}
	return []string{argv[0], fmt.Sprintf("(%d more, not shown here: baton status shows them)", len(argv)-1)}
}

// fail answers 500 and logs why.
func (p *Page) fail(w http.ResponseWriter, what string, err error) {
	p.log.Error("status page: "+what, "err", err)
	secure(w, "text/plain; charset=utf-8", "no-store")
	w.WriteHeader(http.StatusInternalServerError)
	w.Write([]byte("baton: " + what + " failed; baton's log says why\n"))
}

// serveJSON serves the snapshot as `baton status --json` prints it.
func (p *Page) serveJSON(w http.ResponseWriter, r *http.Request) {
	st, ok := p.snapshot(w, r)
	if !ok {
		return
	}
	raw, err := json.Marshal(st)
	if err == nil {
		raw, err = api.IndentJSON(raw)
	}
	if err != nil {
		p.fail(w, "encoding the status", err)
		return
	}
	secure(w, "application/json; charset=utf-8", "no-store")
	write(w, r, raw)
}

// write sends body, or only its length to a HEAD request.
func write(w http.ResponseWriter, r *http.Request, body []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// servePage renders the page from a snapshot, numbers included, so that
// it reads without JavaScript.
func (p *Page) servePage(w http.ResponseWriter, r *http.Request) {
	st, ok := p.snapshot(w, r)
	if !ok {
		return
	}
	var buf bytes.Buffer
	if err := p.tmpl.Execute(&buf, newView(&st)); err != nil {
		p.fail(w, "rendering the status page", err)
		return
	}
	secure(w, "text/html; charset=utf-8", "no-store")
	write(w, r, buf.Bytes())
}

// serveAsset serves an embedded file; browsers revalidate it (ETag), so
// that an upgraded baton's page gets its own script.
func (p *Page) serveAsset(w http.ResponseWriter, r *http.Request) {
	a := p.static[r.URL.Path[1:]]
	secure(w, a.ctype, "no-cache")
	w.Header().Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
