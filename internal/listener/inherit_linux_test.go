package listener

import (
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// env is a fake environment for Inherit.
func env(vars map[string]string) LookupEnv {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestInheritIgnoresOtherProcesses(t *testing.T) {
	tests := []struct {
		name string
		vars map[string]string
	}{
		{"another process's", map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "1"}},
		{"no LISTEN_PID", map[string]string{"LISTEN_FDS": "2"}},
		{"no LISTEN_FDS", map[string]string{"LISTEN_PID": "42"}},
		{"LISTEN_PID not a number", map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "me"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := Inherit(env(tt.vars), 42, FirstFd); got != nil || err != nil {
				t.Errorf("Inherit = %v, %v; want nothing", got, err)
			}
		})
	}
}

func TestInheritInProcess(t *testing.T) {
	a := bind(t, "tcp://127.0.0.1:0")
	// Place a duplicate where the protocol says (fds from first), at a
	// number this test process leaves alone.
	const first = 900
	if _, err := unix.FcntlInt(first, unix.F_GETFD, 0); err == nil {
		t.Skipf("fd %d is in use in this test process", first)
	}
	if err := unix.Dup3(a.Fd(), first, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(first)
	vars := map[string]string{"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
	got, err := Inherit(env(vars), 42, first)
	if err != nil || len(got) != 1 || got[0].Name != "web" || got[0].Fd != first {
		t.Fatalf("Inherit = %+v, %v", got, err)
	}
	if flags, err := unix.FcntlInt(first, unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("inherited descriptor's flags %#x, %v: want FD_CLOEXEC", flags, err)
	}
	delete(vars, "LISTEN_FDNAMES")
	if got, err := Inherit(env(vars), 42, first); err != nil || len(got) != 1 || got[0].Name != "" {
		t.Errorf("without LISTEN_FDNAMES: %+v, %v; want one unnamed descriptor", got, err)
	}
	for _, bad := range []struct{ key, value, want string }{
		{"LISTEN_FDNAMES", "a:b", "2 names for LISTEN_FDS=1"},
		{"LISTEN_FDS", "many", `LISTEN_FDS="many": want a count`},
		{"LISTEN_FDS", strconv.Itoa(1<<16 + 1), "want a count"},
	} {
		vars := map[string]string{"LISTEN_PID": "42", "LISTEN_FDS": "1", bad.key: bad.value}
		if _, err := Inherit(env(vars), 42, first); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s=%s: %v; want an error with %q", bad.key, bad.value, err, bad.want)
		}
	}
}
