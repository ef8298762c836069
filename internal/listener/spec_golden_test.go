package listener

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// update rewrites the golden files of this package from the code as it
// is. Only for a change of behaviour that is meant: the files hold what
// baton did before its listener options became one table.
var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the code as it is")

// parsed is what Parse made of one input, as the golden file keeps it.
type parsed struct {
	In     string    `json:"in"`
	Spec   *specJSON `json:"spec,omitempty"`
	URL    string    `json:"url,omitempty"`
	String string    `json:"string,omitempty"`
	Err    string    `json:"err,omitempty"`
}

// specJSON is a Spec with its unexported family, for the golden file.
type specJSON struct {
	Spec
	Family string `json:"family"`
}

// specCorpus is every input of the golden parse test: each scheme with
// each option and many values of it (good and bad), options together,
// repeated, unknown and escaped.
func specCorpus() []string {
	bases := []string{
		"tcp://127.0.0.1:8080", "http=tcp://0.0.0.0:80", "tcp4://0.0.0.0:1", "tcp6://[::1]:9",
		"tcp://[::]:0", "web=tcp://localhost:443", "tcp://:7", "udp://127.0.0.1:53", "udp4://:5",
		"udp6://[::]:6", "unix:///run/app.sock", "adm=unix://@abstract", "unixgram:///tmp/log.sock",
		"unixgram://@gram",
	}
	values := []string{
		"backlog=1", "backlog=64", "backlog=064", "backlog=1048576", "backlog=1048577", "backlog=0",
		"backlog=-1", "backlog=x", "backlog=", "backlog=%2B5", "backlog=+5",
		"v6only=true", "v6only=false", "v6only=1", "v6only=0", "v6only=T", "v6only=FALSE", "v6only=yes", "v6only=",
		"mode=0660", "mode=660", "mode=0600", "mode=0777", "mode=1", "mode=0", "mode=01777", "mode=999", "mode=rw", "mode=",
		"owner=0", "owner=0:0", "owner=:0", "owner=0%3A0", "owner=root", "owner=root:root", "owner=:root",
		"owner=no-such-user-xyz", "owner=0:no-such-group-xyz", "owner=:", "owner=", "owner=-1",
		"balance=shared", "balance=reuseport", "balance=random", "balance=", "balance=Shared",
		"bogus=1", "Backlog=1", "backlog", "v6only", "%zz=1", "backlog=%zz",
	}
	combos := []string{
		"backlog=64&v6only=true", "v6only=false&backlog=2", "balance=reuseport&backlog=128",
		"mode=0660&owner=0:0", "owner=0&mode=0600", "backlog=10&mode=0600", "mode=0600&backlog=10",
		"backlog=1&backlog=2", "backlog=1&backlog=1", "mode=0600&mode=0600", "balance=shared&bogus=1",
		"backlog=64&balance=shared&v6only=false", "backlog=0&v6only=maybe", "mode=0660&owner=0:0&backlog=5",
		"backlog=5;v6only=true", "", "&", "backlog=5&", "&&backlog=5",
	}
	var in []string
	for _, b := range bases {
		in = append(in, b)
		for _, v := range append(values, combos...) {
			in = append(in, b+"?"+v)
		}
	}
	return append(in,
		"127.0.0.1:8080", "http://127.0.0.1:80", "tcp://127.0.0.1", "tcp://127.0.0.1:http",
		"tcp://127.0.0.1:65536", "tcp4://[::1]:80", "tcp6://127.0.0.1:80", "tcp4://[::ffff:1.2.3.4]:80",
		"tcp6://[::ffff:1.2.3.4]:80", "unix://relative.sock", "unix://", "unix://@",
		"unix:///"+strings.Repeat("a", 110), "unix:///"+strings.Repeat("a", 106), "unix://@"+strings.Repeat("b", 106),
		"bad name=tcp://:1", "a:b=tcp://:1", "=tcp://:1", "x=y=tcp://:1", "a.b-c_d=udp://:1",
		"tcp://[::1%lo]:1", "tcp://[fe80::1%25eth0]:1", "tcp://1.2.3.4:080", "TCP://:1", "tcp:/:1",
	)
}

// optionList stands for the list of options in messages, in the golden
// file: a new option changes the list, not what the file holds.
const optionList = "{options}"

func parseOne(in string) parsed {
	p := parsed{In: in}
	s, err := Parse(in)
	if err != nil {
		p.Err = strings.ReplaceAll(err.Error(), strings.Join(optionNames(), ", "), optionList)
		return p
	}
	p.Spec = &specJSON{Spec: s, Family: s.family}
	p.URL, p.String = s.URL(), s.String()
	return p
}

// TestParseUnchanged: every input of specCorpus parses to the spec, URL
// and canonical form it did before the options became a table, or fails
// with the very same message.
func TestParseUnchanged(t *testing.T) {
	var got []parsed
	for _, in := range specCorpus() {
		got = append(got, parseOne(in))
	}
	golden := filepath.Join("testdata", "parse.golden.json")
	if *update {
		writeGolden(t, golden, got)
	}
	var want []parsed
	readGolden(t, golden, &want)
	wantBy := map[string]parsed{}
	for _, p := range want {
		wantBy[p.In] = p
	}
	if len(want) != len(got) {
		t.Errorf("the corpus has %d inputs, the golden file %d", len(got), len(want))
	}
	for _, g := range got {
		w, ok := wantBy[g.In]
		if !ok {
			t.Errorf("%q: not in the golden file", g.In)
			continue
		}
		// Family stands for the unexported field.
		if diff := cmp.Diff(w, g, cmpopts.IgnoreUnexported(Spec{})); diff != "" {
			t.Errorf("Parse(%q) (-want +got):\n%s", g.In, diff)
		}
	}
}

// TestInPlaceUnchanged: InPlace answers for every pair of a set of specs
// what it did before the options became a table.
func TestInPlaceUnchanged(t *testing.T) {
	var specs []Spec
	for _, in := range []string{
		"tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080?backlog=64", "tcp://127.0.0.1:8080?backlog=128",
		"other=tcp://127.0.0.1:8080?backlog=64", "tcp://127.0.0.1:8080?balance=reuseport",
		"tcp://127.0.0.1:8080?balance=shared", "tcp://127.0.0.1:8080?balance=reuseport&backlog=9",
		"tcp6://[::]:8080?v6only=true", "tcp6://[::]:8080?v6only=false", "tcp6://[::]:8080?v6only=true&backlog=3",
		"tcp6://[::]:8080", "tcp://127.0.0.1:8081", "udp://127.0.0.1:8080", "tcp4://127.0.0.1:8080",
		"unix:///run/a.sock", "unix:///run/a.sock?mode=0600", "unix:///run/a.sock?mode=0660&owner=0:0",
		"unix:///run/a.sock?owner=0", "unix:///run/a.sock?owner=:0&backlog=5", "unix:///run/b.sock?mode=0600",
		"unixgram:///run/a.sock?mode=0600", "unix://@a", "unix://@a?backlog=7", "unix=unix://@a",
	} {
		s, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, s)
	}
	var got []string
	for _, a := range specs {
		row := []byte(a.String() + " ")
		for _, b := range specs {
			row = append(row, map[bool]byte{true: '1', false: '0'}[InPlace(a, b)])
		}
		got = append(got, string(row))
	}
	golden := filepath.Join("testdata", "inplace.golden.json")
	if *update {
		writeGolden(t, golden, got)
	}
	var want []string
	readGolden(t, golden, &want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("InPlace(row, column) (-want +got):\n%s", diff)
	}
}

// writeGolden writes the elements of list one a line, as a JSON array.
func writeGolden[T any](t *testing.T, path string, list []T) {
	t.Helper()
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

func readGolden(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
