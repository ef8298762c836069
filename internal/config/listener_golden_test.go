package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/listener"
)

// update rewrites testdata/listeners.golden.json from the code as it is:
// only for a change of behaviour that is meant. The file holds what baton
// made of [[listener]] tables before the listener options became a table.
var update = flag.Bool("update", false, "rewrite testdata/listeners.golden.json from the code as it is")

// resolvedListeners is what Load and Resolve made of one file's
// listeners: the specs (NAME=URL), or the error with the file's path as
// FILE.
type resolvedListeners struct {
	Name  string   `json:"name"`
	Specs []string `json:"specs,omitempty"`
	Err   string   `json:"err,omitempty"`
}

// listenerCorpus is every config of the golden test: the [[listener]]
// table with each option and values of it, good and bad, of the right
// TOML type and not, together with listen = [...], inline, and in the
// second table.
func listenerCorpus() map[string]string {
	tcp, unix, tcp6 := `address = "tcp://127.0.0.1:0"`, `address = "unix:///run/baton-test/a.sock"`, `address = "tcp6://[::1]:0"`
	table := func(lines ...string) string { return "[[listener]]\n" + strings.Join(lines, "\n") + "\n" }
	c := map[string]string{
		"tcp":                    table(tcp),
		"named":                  table(`name = "web"`, tcp),
		"backlog":                table(tcp, "backlog = 64"),
		"backlog 0":              table(tcp, "backlog = 0"),
		"backlog max":            table(tcp, "backlog = 1048576"),
		"backlog too large":      table(tcp, "backlog = 1048577"),
		"backlog negative":       table(tcp, "backlog = -1"),
		"backlog string":         table(tcp, `backlog = "64"`),
		"backlog float":          table(tcp, "backlog = 6.4"),
		"backlog udp":            table(`address = "udp://127.0.0.1:0"`, "backlog = 5"),
		"backlog unix":           table(unix, "backlog = 5"),
		"v6only true":            table(tcp6, "v6only = true"),
		"v6only false":           table(tcp6, "v6only = false"),
		"v6only tcp":             table(tcp, "v6only = true"),
		"v6only tcp4":            table(`address = "tcp4://127.0.0.1:0"`, "v6only = false"),
		"v6only string":          table(tcp6, `v6only = "true"`),
		"v6only number":          table(tcp6, `v6only = 1`),
		"mode":                   table(unix, `mode = "0660"`),
		"mode short":             table(unix, `mode = "660"`),
		"mode empty":             table(unix, `mode = ""`),
		"mode bad":               table(unix, `mode = "0999"`),
		"mode zero":              table(unix, `mode = "0"`),
		"mode number":            table(unix, `mode = 660`),
		"mode tcp":               table(tcp, `mode = "0600"`),
		"mode abstract":          table(`address = "unix://@x"`, `mode = "0600"`),
		"owner":                  table(unix, `owner = "0:0"`),
		"owner name":             table(unix, `owner = "root"`),
		"owner group":            table(unix, `owner = ":0"`),
		"owner missing":          table(unix, `owner = "no-such-user-xyz"`),
		"owner missing group":    table(unix, `owner = "0:no-such-group-xyz"`),
		"owner colon":            table(unix, `owner = ":"`),
		"owner number":           table(unix, `owner = 0`),
		"owner tcp":              table(tcp, `owner = "0"`),
		"owner and mode":         table(unix, `owner = "0"`, `mode = "0600"`),
		"balance":                table(tcp, `balance = "reuseport"`),
		"balance shared":         table(tcp, `balance = "shared"`),
		"balance bad":            table(tcp, `balance = "random"`),
		"balance unix":           table(unix, `balance = "reuseport"`),
		"default balance":        "balance = \"reuseport\"\n" + table(tcp) + table(`name = "u"`, unix),
		"bad default balance":    "balance = \"random\"\n" + table(tcp),
		"everything":             table(`name = "all"`, tcp6, "backlog = 9", "v6only = false", `balance = "reuseport"`),
		"all unix":               table(unix, "backlog = 9", `mode = "0640"`, `owner = "0:0"`),
		"two bad options":        table(tcp, `mode = "0600"`, `owner = "0"`),
		"two bad options other":  table(tcp, `owner = "0"`, `mode = "0600"`),
		"bad value and bad key":  table(tcp, "backlog = -5", `mode = "0600"`),
		"no address":             table(`name = "x"`, "backlog = 5"),
		"query in address":       table(`address = "tcp://127.0.0.1:0?backlog=5"`),
		"bad scheme":             table(`address = "http://127.0.0.1:0"`),
		"bad port":               table(`address = "tcp://127.0.0.1:99999"`),
		"bad name":               table(`name = "a b"`, tcp),
		"unknown key":            table(tcp, "backlg = 5"),
		"address number":         table("address = 80"),
		"second table":           table(tcp) + table(`name = "b"`, unix, `mode = "0600"`, "v6only = true"),
		"inline":                 `listener = [{address = "unix:///run/baton-test/b.sock", mode = "0600"}]` + "\n",
		"inline bad":             `listener = [{address = "tcp://127.0.0.1:0", mode = "0600"}]` + "\n",
		"listen and table":       "listen = [\"a=tcp://127.0.0.1:0?backlog=3\"]\n" + table(`name = "b"`, tcp, "backlog = 4"),
		"listen bad option":      "listen = [\"a=tcp://127.0.0.1:0?mode=0600\"]\n",
		"listen unknown option":  "listen = [\"tcp://127.0.0.1:0?bogus=1\"]\n",
		"listen then bad table":  "listen = [\"a=tcp://127.0.0.1:0\"]\n" + table(tcp, `mode = "0600"`),
		"duplicate names":        "listen = [\"tcp://127.0.0.1:0\"]\n" + table(tcp),
		"owner with ampersand":   table(unix, `owner = "0&backlog=5"`),
		"owner with percent":     table(unix, `owner = "%zz"`),
		"owner with plus":        table(unix, `owner = "0+1"`),
		"balance with semicolon": table(tcp, `balance = "shared;x"`),
	}
	return c
}

// TestListenerTablesUnchanged: every config of listenerCorpus resolves
// to the listeners it did before the options became a table, or fails
// with the very same message, naming the same line and key; except for
// what the table fixed: a value with '&', ';', '%' or '+' reaches its
// option whole (owner = "0&backlog=5" set a backlog), an unknown key
// lists the keys of a [[listener]] table (not the top level's), and an
// error in an inline table names its line.
func TestListenerTablesUnchanged(t *testing.T) {
	corpus := listenerCorpus()
	var got []resolvedListeners
	for name, text := range corpus {
		path := writeFile(t, "command = [\"/bin/true\"]\n"+text)
		r := resolvedListeners{Name: name}
		l, err := Load(path, nil, nil, nil)
		var res *Resolved
		if err == nil {
			res, err = l.Resolve()
		}
		if err != nil {
			// The file's path, and the lists of options and keys, which a
			// new option changes, stand for themselves.
			r.Err = strings.NewReplacer(path, "FILE", optionNames(), "{options}", strings.Join(listenerKeys(), ", "), "{keys}").Replace(err.Error())
		} else {
			for _, s := range res.Specs {
				r.Specs = append(r.Specs, s.String())
			}
		}
		got = append(got, r)
	}
	golden := filepath.Join("testdata", "listeners.golden.json")
	if *update {
		writeGolden(t, golden, got)
	}
	b, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	var want []resolvedListeners
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	wantBy := map[string]resolvedListeners{}
	for _, w := range want {
		wantBy[w.Name] = w
	}
	if len(want) != len(corpus) {
		t.Errorf("the corpus has %d configs, the golden file %d", len(corpus), len(want))
	}
	for _, g := range got {
		w, ok := wantBy[g.Name]
		if !ok {
			t.Errorf("%s: not in the golden file", g.Name)
			continue
		}
		if diff := cmp.Diff(w, g); diff != "" {
			t.Errorf("%s:\n%s\n(-want +got):\n%s", g.Name, corpus[g.Name], diff)
		}
	}
}

// optionNames lists the listener options as an error lists them.
func optionNames() string {
	var names []string
	for _, o := range listener.Options() {
		names = append(names, o.Key)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// writeGolden writes list sorted by name, one element a line, as a JSON
// array.
func writeGolden(t *testing.T, path string, list []resolvedListeners) {
	t.Helper()
	slices.SortFunc(list, func(a, b resolvedListeners) int { return strings.Compare(a.Name, b.Name) })
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, v := range list {
		var line bytes.Buffer
		enc := json.NewEncoder(&line)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		b.Write(bytes.TrimSuffix(line.Bytes(), []byte("\n")))
		if i < len(list)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
