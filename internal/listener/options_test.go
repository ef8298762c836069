package listener

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestOptionsApply: for every option and every scheme, Parse takes the
// option exactly where Schemes says it applies (with a path and with an
// abstract name for unix schemes), and refuses it elsewhere with an
// *OptionError that names it.
func TestOptionsApply(t *testing.T) {
	addrs := map[string][]string{
		"inet": {"127.0.0.1:1"}, "inet4": {"127.0.0.1:1"}, "inet6": {"[::1]:1"},
		"unix": {"/run/x.sock", "@x"},
	}
	for _, o := range Options() {
		for _, scheme := range schemeNames() {
			for _, addr := range addrs[schemes[scheme].family] {
				in := scheme + "://" + addr + "?" + o.Key + "=%01"
				t.Run(in, func(t *testing.T) {
					_, err := Parse(in)
					var oe *OptionError
					if !errors.As(err, &oe) {
						t.Fatalf("Parse(%q) = %v, want an *OptionError", in, err)
					}
					if diff := cmp.Diff(OptionError{Key: o.Key, Value: "\x01", Msg: oe.Msg}, *oe); diff != "" {
						t.Errorf("the error's key and value (-want +got):\n%s", diff)
					}
					probe := mustParse(t, scheme+"://"+addr)
					applies := o.applies(&probe)
					if got := strings.Contains(oe.Msg, "does not apply to"); got == applies {
						t.Errorf("option applies: %v, but the error is %q", applies, oe.Msg)
					}
					if applies && !strings.HasPrefix(addr, "@") && !strings.Contains(strings.Join(o.Schemes(), " ")+" ", scheme+" ") {
						t.Errorf("%s takes %s, but its Schemes() %v does not say so", scheme, o.Key, o.Schemes())
					}
				})
			}
		}
	}
}

// TestOptionsTable: every entry is complete, and a spec without options
// writes none into its URL.
func TestOptionsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range Options() {
		t.Run(o.Key, func(t *testing.T) {
			if seen[o.Key] || o.Key != strings.ToLower(o.Key) || strings.ContainsAny(o.Key, "=&?# ") {
				t.Errorf("key %q: want a new lower-case name that needs no escaping", o.Key)
			}
			seen[o.Key] = true
			if o.Value == "" || o.Help == "" || len(o.Schemes()) == 0 {
				t.Errorf("value %q, help %q, schemes %v: want each", o.Value, o.Help, o.Schemes())
			}
			if o.Unit != "" && o.Type != ValueNumber {
				t.Errorf("unit %q for a value of type %s: only a number counts something", o.Unit, o.Type)
			}
			for _, scheme := range schemeNames() {
				if s := probe(scheme, "/x.sock"); o.format(s) != "" {
					t.Errorf("a %s spec without options has %s=%q", scheme, o.Key, o.format(s))
				}
			}
			if LookupOption(o.Key) != o {
				t.Errorf("LookupOption(%q) is another entry", o.Key)
			}
		})
	}
	if LookupOption("bogus") != nil {
		t.Errorf("LookupOption(bogus) is not nil")
	}
}

// TestOptionErrors: errors.As finds which option is at fault, with the
// value given, in every error about an option; an error about the rest
// of the spec has none.
func TestOptionErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *OptionError // nil: not about an option
	}{
		{"unknown", "tcp://:1?backlg=5", &OptionError{Key: "backlg", Value: "5", Msg: `unknown option "backlg"; options are ` + strings.Join(optionNames(), ", ")}},
		{"not for the scheme", "udp://:1?backlog=5", &OptionError{Key: "backlog", Value: "5", Msg: `option "backlog" does not apply to udp listeners`}},
		{"not for an abstract name", "unix://@x?mode=0600", &OptionError{Key: "mode", Value: "0600", Msg: `option "mode" does not apply to abstract unix listeners`}},
		{"twice", "tcp://:1?backlog=1&backlog=2", &OptionError{Key: "backlog", Msg: `option "backlog" given 2 times; give it once`}},
		{"bad value", "tcp://:1?backlog=0", &OptionError{Key: "backlog", Value: "0", Msg: `option backlog: "0": want a number from 1 to 1048576`}},
		{"bad owner", "unix:///x?owner=no-such-user-xyz", &OptionError{Key: "owner", Value: "no-such-user-xyz", Msg: `option owner: user "no-such-user-xyz": no such name on this system; use a name from /etc/passwd or /etc/group, or a number`}},
		{"first key in order", "tcp://:1?v6only=x&backlog=0", &OptionError{Key: "backlog", Value: "0", Msg: `option backlog: "0": want a number from 1 to 1048576`}},
		{"bad query", "tcp://:1?backlog=%zz", nil},
		{"bad address", "tcp://:x?backlog=5", nil},
		{"bad name", "a b=tcp://:1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			var se *SpecError
			if !errors.As(err, &se) || se.Text != tt.in || !errors.Is(err, ErrSpec) {
				t.Fatalf("Parse(%q) = %v, want a *SpecError with the text that is ErrSpec", tt.in, err)
			}
			var got *OptionError
			errors.As(err, &got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("the option error (-want +got):\n%s", diff)
			}
		})
	}
	var se *SpecError
	a := mustParse(t, "tcp://:1")
	if err := CheckNames([]Spec{a, a}); !errors.As(err, &se) || se.Text != "" || !errors.Is(err, ErrSpec) {
		t.Errorf("CheckNames of a duplicate = %v, want a *SpecError without text", err)
	}
}

// TestOptionCheck: Check gives the message Parse gives for a value, for
// settings that are an option's default (--balance).
func TestOptionCheck(t *testing.T) {
	balance := LookupOption("balance")
	if err := balance.Check(Reuseport); err != nil {
		t.Errorf("Check(reuseport): %v", err)
	}
	err := balance.Check("random")
	if err == nil || err.Error() != `"random": want shared or reuseport` {
		t.Errorf("Check(random) = %v", err)
	}
}

// TestOptionsHelp: the help of baton run shows every option with its
// value, fits in 78 columns, and says which a reload changes in place.
func TestOptionsHelp(t *testing.T) {
	help := OptionsHelp()
	for _, line := range strings.Split(help, "\n") {
		if len(line) > 78 {
			t.Errorf("line longer than 78 columns: %q", line)
		}
	}
	for _, o := range Options() {
		if !strings.Contains(help, "\n  "+o.Key+"="+o.Value) {
			t.Errorf("the help has no line for %s=%s:\n%s", o.Key, o.Value, help)
		}
	}
	inPlace := 0
	for _, o := range Options() {
		if o.InPlace {
			inPlace++
		}
	}
	if n := strings.Count(strings.Join(strings.Fields(help), " "), "a reload changes it in place"); n != inPlace || n == 0 {
		t.Errorf("the help says of %d options that a reload changes them in place, want %d:\n%s", n, inPlace, help)
	}
}

// docMarkers enclose the table of options in docs/config.md.
const (
	docBegin = "<!-- The table between these comments is generated from internal/listener/options.go: edit it there, then run go test ./internal/listener -run TestOptionsDoc -update -->\n"
	docEnd   = "<!-- end of the generated table -->\n"
)

// TestOptionsDoc: docs/config.md holds the table of options as
// OptionsMarkdown writes it (-update writes it there), and names every
// option's key.
func TestOptionsDoc(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "config.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	head, rest, ok1 := strings.Cut(doc, docBegin)
	table, tail, ok2 := strings.Cut(rest, docEnd)
	if !ok1 || !ok2 {
		t.Fatalf("%s has no generated table between %q and %q", path, docBegin, docEnd)
	}
	want := OptionsMarkdown()
	if *update && table != want {
		if err := os.WriteFile(path, []byte(head+docBegin+want+docEnd+tail), 0o644); err != nil {
			t.Fatal(err)
		}
		table = want
	}
	if diff := cmp.Diff(want, table); diff != "" {
		t.Errorf("the table of options in %s is not the one options.go makes; run go test ./internal/listener -run TestOptionsDoc -update (-want +got):\n%s", path, diff)
	}
	for _, o := range Options() {
		if !strings.Contains(table, "| `"+o.Key+"` |") {
			t.Errorf("%s does not list option %s", path, o.Key)
		}
	}
}
