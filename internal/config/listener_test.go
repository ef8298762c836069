package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/listener"
)

// TestListenerOptionKeys: every listener option is a key of a
// [[listener]] table, of its type: a value of it is accepted and written
// into the address, a value of another type refused, and a key that is
// no option refused with the keys there are.
func TestListenerOptionKeys(t *testing.T) {
	// A value of each type, and one of another type.
	good := map[listener.ValueType]string{listener.ValueText: `"x"`, listener.ValueNumber: "7", listener.ValueBool: "true", listener.ValueOctal: `"0600"`}
	bad := map[listener.ValueType]string{listener.ValueText: "7", listener.ValueNumber: `"7"`, listener.ValueBool: `"true"`, listener.ValueOctal: "600"}
	for _, o := range listener.Options() {
		t.Run(o.Key, func(t *testing.T) {
			if optionTypes[o.Type] == nil || good[o.Type] == "" {
				t.Fatalf("option %s has type %v, which config does not check", o.Key, o.Type)
			}
			path := writeFile(t, "command = [\"/bin/true\"]\n[[listener]]\naddress = \"tcp://127.0.0.1:0\"\n"+o.Key+" = "+good[o.Type]+"\n")
			l, err := Load(path, nil, nil, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			u, terr := l.Listeners[0].url()
			if terr != nil || !strings.Contains(u, "?"+o.Key+"=") {
				t.Errorf("url() = %q, %v; want the option in the query", u, terr)
			}
			path = writeFile(t, "command = [\"/bin/true\"]\n[[listener]]\naddress = \"tcp://127.0.0.1:0\"\n"+o.Key+" = "+bad[o.Type]+"\n")
			_, err = Load(path, nil, nil, nil)
			if want := path + ":4: listener[0]." + o.Key + ": "; err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrInvalid) {
				t.Errorf("a value of another type: %v; want an ErrInvalid that begins %q", err, want)
			}
		})
	}
	path := writeFile(t, "command = [\"/bin/true\"]\n[[listener]]\naddress = \"tcp://127.0.0.1:0\"\nbacklg = 5\n")
	_, err := Load(path, nil, nil, nil)
	want := path + `:4: unknown key "listener[0].backlg": did you mean backlog? keys of a [[listener]] table are ` + strings.Join(listenerKeys(), ", ")
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrFile) {
		t.Errorf("an unknown key: %v\nwant an ErrFile with %q", err, want)
	}
}

// TestListenerTableURL: a [[listener]] table becomes the address with
// its options in the order of listener.Options; 0 and "" mean the
// default, false does not; a value is given to its option whole, even
// with characters a query treats apart.
func TestListenerTableURL(t *testing.T) {
	tests := []struct {
		name  string
		table ListenerTable
		want  string
	}{
		{"address only", ListenerTable{Address: "tcp://:1"}, "tcp://:1"},
		{"name", ListenerTable{Name: "web", Address: "tcp://:1"}, "web=tcp://:1"},
		{"every option, in table order", ListenerTable{Address: "tcp6://[::]:1", Options: map[string]any{
			"balance": "reuseport", "owner": "0:0", "mode": "0600", "v6only": false, "backlog": int64(64)}},
			"tcp6://[::]:1?backlog=64&v6only=false&mode=0600&owner=0:0&balance=reuseport"},
		{"zero and empty are the default", ListenerTable{Address: "unix:///x", Options: map[string]any{"backlog": int64(0), "mode": "", "owner": ""}}, "unix:///x"},
		{"query characters are escaped", ListenerTable{Address: "unix:///x", Options: map[string]any{"owner": "a&b=c;d+e%f g"}}, "unix:///x?owner=a%26b=c%3Bd%2Be%25f g"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.table.url()
			if err != nil {
				t.Fatal(err.msg)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("url() (-want +got):\n%s", diff)
			}
		})
	}
	// What url() escapes reaches the option as it was written.
	u, _ := ListenerTable{Address: "unix:///x", Options: map[string]any{"owner": "a&b=c;d+e%f g"}}.url()
	_, err := listener.Parse(u)
	var oe *listener.OptionError
	if !errors.As(err, &oe) || oe.Key != "owner" || oe.Value != "a&b=c;d+e%f g" {
		t.Errorf("Parse(%q) = %v; want the owner option's error with its value whole", u, err)
	}
}
