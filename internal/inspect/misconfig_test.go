package inspect

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// stallInput is a listener on 127.0.0.1:8080 (inode 100) with ready
// workers 10 and 11.
func stallInput() Input {
	return Input{
		Listeners: []Listener{httpListener(64)},
		Workers: []Worker{
			{PID: 10, Slot: 0, Generation: 1, State: WorkerReady},
			{PID: 11, Slot: 1, Generation: 1, State: WorkerReady},
		},
	}
}

// queuedSample is a sample at t in which the connections with the given
// cookies wait in the accept queue (ESTAB, no inode), and those in
// accepted are held by worker 10.
func queuedSample(t time.Time, waiting []uint64, accepted ...uint64) *sample {
	s := newSample(t)
	s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: uint32(len(waiting)), SendQ: 64}
	for _, c := range waiting {
		s.conns[0] = append(s.conns[0], conn("127.0.0.1:8080", sockdiag.Established, 0, c))
	}
	s.owners = map[uint64][]sockdiag.Owner{}
	for _, c := range accepted {
		s.conns[0] = append(s.conns[0], conn("127.0.0.1:8080", sockdiag.Established, 1000+c, c))
		s.owners[1000+c] = []sockdiag.Owner{{PID: 10, FD: 7}}
	}
	return s
}

func TestNotAccepting(t *testing.T) {
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	tests := []struct {
		name    string
		input   func(*Input)
		samples []*sample
		want    string // "" for no warning, else part of the last view's message
	}{
		{
			name:    "waiting for the whole age with none accepted",
			samples: []*sample{queuedSample(sec(0), []uint64{1, 2}), queuedSample(sec(5), []uint64{1, 2, 3}), queuedSample(sec(10), []uint64{1, 2, 3})},
			want:    "listener http: 3 connections have waited in the accept queue for 10s and none was accepted, while 2 workers are ready: nothing serves 127.0.0.1:8080",
		},
		{
			name:    "not for long enough yet",
			samples: []*sample{queuedSample(sec(0), []uint64{1}), queuedSample(sec(9), []uint64{1})},
		},
		{
			name:    "seen once: no history",
			samples: []*sample{queuedSample(sec(0), []uint64{1})},
		},
		{
			// A slow server: connections wait long, but the head of
			// the queue moves.
			name:    "the queue moves",
			samples: []*sample{queuedSample(sec(0), []uint64{1, 2, 3}), queuedSample(sec(5), []uint64{2, 3, 4}, 1), queuedSample(sec(10), []uint64{3, 4, 5})},
		},
		{
			name:    "a connection left before the oldest came",
			samples: []*sample{queuedSample(sec(0), []uint64{1}), queuedSample(sec(1), []uint64{2}), queuedSample(sec(11), []uint64{2})},
			want:    "1 connection has waited in the accept queue for 10s",
		},
		{
			name:    "no worker ready: the slots explain it",
			input:   func(in *Input) { in.Workers[0].State, in.Workers[1].State = WorkerStarting, WorkerDraining },
			samples: []*sample{queuedSample(sec(0), []uint64{1}), queuedSample(sec(20), []uint64{1})},
		},
		{
			name:    "accepted and closed since",
			samples: []*sample{queuedSample(sec(0), []uint64{1}), queuedSample(sec(20), nil)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := stallInput()
			if tt.input != nil {
				tt.input(&in)
			}
			h := newHistory()
			var v *View
			for _, s := range tt.samples {
				v, _, _ = analyze(in, s, h, Options{}.withDefaults())
			}
			ws := withCode(v.Warnings, NotAccepting)
			if tt.want == "" {
				if len(ws) != 0 {
					t.Errorf("warnings %+v, want no not_accepting", v.Warnings)
				}
				return
			}
			if len(ws) != 1 || !strings.Contains(ws[0].Message, tt.want) {
				t.Fatalf("warnings %+v, want one not_accepting saying %q", v.Warnings, tt.want)
			}
			if w := ws[0]; w.Listener != "http" || w.Severity != SeverityDegraded {
				t.Errorf("warning %+v: want listener http, severity degraded", w)
			}
		})
	}
}

// Once raised, not_accepting clears when a connection is accepted, and
// the cleared warning is reported once.
func TestNotAcceptingClears(t *testing.T) {
	in := stallInput()
	h := newHistory()
	o := Options{}.withDefaults()
	analyze(in, queuedSample(t0, []uint64{1, 2}), h, o)
	_, raised, _ := analyze(in, queuedSample(t0.Add(10*time.Second), []uint64{1, 2}), h, o)
	if diff := cmp.Diff([]string{"not_accepting"}, codes(raised)); diff != "" {
		t.Fatalf("raised (-want +got):\n%s", diff)
	}
	v, raised, cleared := analyze(in, queuedSample(t0.Add(11*time.Second), []uint64{2}, 1), h, o)
	if len(withCode(v.Warnings, NotAccepting)) != 0 || len(raised) != 0 || len(cleared) != 1 || cleared[0].Code != NotAccepting {
		t.Errorf("after an accept: warnings %+v, raised %+v, cleared %+v; want not_accepting cleared", v.Warnings, raised, cleared)
	}
}

// The cause of a queue nobody serves, read from the workers' process
// trees.
func TestNotAcceptingCause(t *testing.T) {
	shell := func(pid int, kids ...proc) *tree {
		return &tree{self: proc{PID: pid, Comm: "sh"}, descendants: kids, own: map[int][]ownListener{}, holds: map[uint64]bool{100: true}}
	}
	tests := []struct {
		name  string
		trees map[int]*tree
		want  []string
	}{
		{
			name: "a wrapper script without exec",
			trees: map[int]*tree{10: func() *tree {
				t := shell(10, proc{PID: 20, PPID: 10, Comm: "hello", ListenPID: 10, ListenFDs: true, Cmdline: "/srv/bin/hello -addr :8080"})
				t.own[20] = []ownListener{{Addr: "127.0.0.1:8081", Inode: 555}}
				return t
			}()},
			want: []string{
				"worker slot 0 (pid 10) is sh, which runs pid 20 (hello) as its child instead of exec-ing it, so LISTEN_PID=10 names sh",
				"and listens on 127.0.0.1:8081 itself",
				"Fix: end the wrapper script with exec (exec /srv/bin/hello -addr :8080)",
			},
		},
		{
			name: "another launcher that does not exec",
			trees: map[int]*tree{10: {
				self:        proc{PID: 10, Comm: "npm"},
				descendants: []proc{{PID: 20, PPID: 10, Comm: "sh", ListenPID: 10, ListenFDs: true}, {PID: 21, PPID: 20, Comm: "node", ListenPID: 10, ListenFDs: true}},
				holds:       map[uint64]bool{100: true},
			}},
			want: []string{"is npm, which runs pid 21 (node) as its child", "Fix: have npm exec the program"},
		},
		{
			name: "a program that binds its own port",
			trees: map[int]*tree{11: {
				self: proc{PID: 11, Comm: "server"}, holds: map[uint64]bool{100: true},
				own: map[int][]ownListener{11: {{Addr: "0.0.0.0:8080", Inode: 7}, {Addr: "[::]:8080", Inode: 8}}},
			}},
			want: []string{"pid 11 (server) of worker slot 1 listens on 0.0.0.0:8080, [::]:8080 itself", "--capture-bind"},
		},
		{
			// A prefork server: its children are copies of it, with the
			// parent's LISTEN_PID, and accept on what it received.
			name: "a prefork server's children are no wrapper",
			trees: map[int]*tree{10: {
				self:        proc{PID: 10, Comm: "nginx"},
				descendants: []proc{{PID: 20, PPID: 10, Comm: "nginx", ListenPID: 10, ListenFDs: true}},
				holds:       map[uint64]bool{100: true},
			}},
			want: []string{"The workers hold the socket but none accepts"},
		},
		{
			// gunicorn renames its workers (setproctitle): another
			// command name, the same executable.
			name: "renamed prefork children are no wrapper",
			trees: map[int]*tree{10: {
				self:        proc{PID: 10, Comm: "gunicorn", Exe: "python3.11"},
				descendants: []proc{{PID: 20, PPID: 10, Comm: "gunicorn: worke", Exe: "python3.11", ListenPID: 10, ListenFDs: true}},
				holds:       map[uint64]bool{100: true},
			}},
			want: []string{"The workers hold the socket but none accepts"},
		},
		{
			name: "a script run directly",
			trees: map[int]*tree{10: {
				self:        proc{PID: 10, Comm: "start.sh", Exe: "bash"},
				descendants: []proc{{PID: 20, PPID: 10, Comm: "server", Exe: "server", ListenPID: 10, ListenFDs: true, Cmdline: "/srv/server"}},
				holds:       map[uint64]bool{100: true},
			}},
			want: []string{"worker slot 0 (pid 10) is start.sh, a bash script, which runs pid 20 (server)", "(exec /srv/server)"},
		},
		{
			name:  "nobody holds the socket",
			trees: map[int]*tree{10: {self: proc{PID: 10, Comm: "server"}, holds: map[uint64]bool{}}},
			want:  []string{"no ready worker's process holds the socket any more"},
		},
		{
			name: "no tree read",
			want: []string{"The workers hold the socket but none accepts"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := stallInput()
			h := newHistory()
			o := Options{}.withDefaults()
			analyze(in, queuedSample(t0, []uint64{1}), h, o)
			s := queuedSample(t0.Add(time.Minute), []uint64{1})
			s.trees = tt.trees
			v, _, _ := analyze(in, s, h, o)
			ws := withCode(v.Warnings, NotAccepting)
			if len(ws) != 1 {
				t.Fatalf("warnings %+v, want one not_accepting", v.Warnings)
			}
			for _, want := range tt.want {
				if !strings.Contains(ws[0].Message, want) {
					t.Errorf("message %q\nlacks %q", ws[0].Message, want)
				}
			}
		})
	}
}

// With a socket per slot, the warning names the slots whose sockets hold
// the waiting connections.
func TestNotAcceptingReuseport(t *testing.T) {
	in := stallInput()
	in.Listeners = []Listener{httpListener(64, Socket{Slot: 0, Inode: 100}, Socket{Slot: 1, Inode: 101})}
	h := newHistory()
	o := Options{}.withDefaults()
	for _, at := range []time.Time{t0, t0.Add(time.Minute)} {
		s := queuedSample(at, []uint64{1, 2})
		s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: 0, SendQ: 64}
		s.queues[101] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: 2, SendQ: 64}
		v, _, _ := analyze(in, s, h, o)
		if at == t0 {
			continue
		}
		ws := withCode(v.Warnings, NotAccepting)
		if len(ws) != 1 || !strings.Contains(ws[0].Message, "2 connections have waited in the accept queue (in the sockets of slots 1) for 1m0s") {
			t.Errorf("warnings %+v, want not_accepting naming slot 1", v.Warnings)
		}
	}
}

func TestWrapperWithoutExec(t *testing.T) {
	wrapper := func() map[int]*tree {
		return map[int]*tree{
			10: {self: proc{PID: 10, Comm: "sh"}, descendants: []proc{{PID: 20, PPID: 10, Comm: "hello", ListenPID: 10, ListenFDs: true, Cmdline: "./hello"}}},
			11: {self: proc{PID: 11, Comm: "sh"}, descendants: []proc{{PID: 21, PPID: 11, Comm: "hello", ListenPID: 11, ListenFDs: true, Cmdline: "./hello"}}},
		}
	}
	tests := []struct {
		name  string
		input func(*Input)
		trees func() map[int]*tree
		want  string
	}{
		{name: "two wrapped workers", trees: wrapper,
			want: "worker slot 0 (pid 10, generation 1) is a shell (sh) that runs pid 20 (hello) as its child instead of exec-ing it (and so does 1 other worker): LISTEN_PID=10 names the shell"},
		{name: "a script run directly: its name is the command name, the shell the executable", trees: func() map[int]*tree {
			return map[int]*tree{10: {self: proc{PID: 10, Comm: "run-hello", Exe: "dash"},
				descendants: []proc{{PID: 20, PPID: 10, Comm: "hello", Exe: "hello", ListenPID: 10, ListenFDs: true, Cmdline: "./hello"}}}}
		}, want: "worker slot 0 (pid 10, generation 1) is a shell (run-hello, a dash script) that runs pid 20 (hello)"},
		{name: "starting workers are not judged yet", trees: wrapper,
			input: func(in *Input) { in.Workers[0].State, in.Workers[1].State = WorkerStarting, WorkerStarting }},
		{name: "a shell that execs", trees: func() map[int]*tree {
			return map[int]*tree{10: {self: proc{PID: 10, Comm: "hello"}}}
		}},
		{name: "a shell whose child is another shell", trees: func() map[int]*tree {
			return map[int]*tree{10: {self: proc{PID: 10, Comm: "sh"}, descendants: []proc{{PID: 20, Comm: "bash", ListenPID: 10, ListenFDs: true}}}}
		}},
		{name: "a child without the activation variables", trees: func() map[int]*tree {
			return map[int]*tree{10: {self: proc{PID: 10, Comm: "sh"}, descendants: []proc{{PID: 20, Comm: "logger"}}}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := stallInput()
			if tt.input != nil {
				tt.input(&in)
			}
			h := newHistory()
			o := Options{}.withDefaults()
			var v *View
			// The child must last Persist: a shell's helpers come and go.
			for i, at := range []time.Time{t0, t0.Add(o.Persist / 2), t0.Add(o.Persist)} {
				s := newSample(at)
				s.trees = tt.trees()
				v, _, _ = analyze(in, s, h, o)
				if i < 2 && len(withCode(v.Warnings, WrapperWithoutExec)) != 0 {
					t.Fatalf("raised after %s, before the child lasted %s", at.Sub(t0), o.Persist)
				}
			}
			ws := withCode(v.Warnings, WrapperWithoutExec)
			if tt.want == "" {
				if len(ws) != 0 {
					t.Errorf("warnings %+v, want none", v.Warnings)
				}
				return
			}
			if len(ws) != 1 || !strings.Contains(ws[0].Message, tt.want) || !strings.Contains(ws[0].Message, "(exec ./hello)") {
				t.Fatalf("warnings %+v, want one wrapper_without_exec saying %q and the exec line", v.Warnings, tt.want)
			}
			if ws[0].Severity != SeverityWarning {
				t.Errorf("severity %q, want warning", ws[0].Severity)
			}
		})
	}
}

// A helper that comes and goes (pyenv's shim runs pyenv-hooks before it
// execs python) is never a wrapper.
func TestWrapperHelperComesAndGoes(t *testing.T) {
	in := stallInput()
	h := newHistory()
	o := Options{}.withDefaults()
	for i := range 5 {
		s := newSample(t0.Add(time.Duration(i) * o.Persist))
		s.trees = map[int]*tree{10: {self: proc{PID: 10, Comm: "bash"}, descendants: []proc{{PID: 100 + i, Comm: "pyenv-hooks", ListenPID: 10, ListenFDs: true}}}}
		if v, _, _ := analyze(in, s, h, o); len(withCode(v.Warnings, WrapperWithoutExec)) != 0 {
			t.Fatalf("sample %d: a new helper each time raised %+v", i, v.Warnings)
		}
	}
}

func TestSlotWarnings(t *testing.T) {
	const eaddrinuse = `worker pid 50 exited with status 1 after 199ms; its last output: self.socket.bind(self.server_address) | OSError: [Errno 98] Address already in use`
	const crash = "worker pid 50 exited with status 3 after 52ms; its last output: crashing on purpose"
	tests := []struct {
		name    string
		slot    Slot
		worker  *Worker // the slot's live worker, if any
		command []string
		code    Code // "" for no warning
		want    []string
	}{
		{
			name:    "EADDRINUSE, in backoff, the command names baton's port",
			slot:    Slot{State: SlotBackoff, Restarts: 4, Backoff: 800 * time.Millisecond, NextIn: 500 * time.Millisecond, LastError: eaddrinuse, LastErrorTime: t0},
			command: []string{"python3", "-m", "http.server", "8080"},
			code:    BindsOwnPort,
			want: []string{
				`worker slot 0 keeps exiting with "address already in use" (4 restarts; the next try is in 500ms)`,
				"port 8080 is listener http's, which baton holds. Run the program with --capture-bind", "--ready bind",
			},
		},
		{
			name: "EADDRINUSE on a port that is not baton's",
			slot: Slot{State: SlotBackoff, Restarts: 1, Backoff: 100 * time.Millisecond, LastError: "bind() to 0.0.0.0:9090 failed (98: Address already in use)", LastErrorTime: t0},
			code: BindsOwnPort,
			want: []string{"(1 restart):", "If that port is one of baton's listeners", "give each slot its own (BATON_SLOT)"},
		},
		{
			name: "nginx names baton's port in its error",
			slot: Slot{State: SlotBackoff, Restarts: 2, Backoff: 200 * time.Millisecond, LastError: "bind() to 127.0.0.1:8080 failed (98: Address already in use)", LastErrorTime: t0},
			code: BindsOwnPort,
			want: []string{"port 8080 is listener http's"},
		},
		{
			name: "a third quick exit in a row",
			slot: Slot{State: SlotBackoff, Restarts: 3, Backoff: 400 * time.Millisecond, LastError: crash, LastErrorTime: t0},
			code: CrashLoop,
			want: []string{"worker slot 0 is crash-looping: 3 workers in a row exited within 10s of their start (3 restarts", "crashing on purpose"},
		},
		{
			name: "one crash is not a loop",
			slot: Slot{State: SlotBackoff, Restarts: 1, Backoff: 100 * time.Millisecond, LastError: crash, LastErrorTime: t0},
		},
		{
			name: "two are not yet",
			slot: Slot{State: SlotBackoff, Restarts: 2, Backoff: 200 * time.Millisecond, LastError: crash, LastErrorTime: t0},
		},
		{
			name:   "up again after the restart, not yet stable",
			slot:   Slot{State: SlotUp, PID: 60, Restarts: 5, Backoff: 1600 * time.Millisecond, LastError: crash, LastErrorTime: t0.Add(-3 * time.Second)},
			worker: &Worker{PID: 60, State: WorkerReady, Started: t0.Add(-1400 * time.Millisecond)},
			code:   CrashLoop,
			want:   []string{"5 workers in a row"},
		},
		{
			name:   "up for StableAfter: the loop is over",
			slot:   Slot{State: SlotUp, PID: 60, Restarts: 5, Backoff: 1600 * time.Millisecond, LastError: crash, LastErrorTime: t0.Add(-12 * time.Second)},
			worker: &Worker{PID: 60, State: WorkerReady, Started: t0.Add(-10400 * time.Millisecond)},
		},
		{
			// A worker a reload started, long after the slot's last
			// failure, ends the streak.
			name:   "a worker started by a reload",
			slot:   Slot{State: SlotUp, PID: 60, Restarts: 5, Backoff: 1600 * time.Millisecond, LastError: eaddrinuse, LastErrorTime: t0.Add(-time.Hour)},
			worker: &Worker{PID: 60, State: WorkerReady, Started: t0.Add(-2 * time.Second)},
		},
		{
			name: "never failed",
			slot: Slot{State: SlotUp, PID: 60},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Listeners: []Listener{httpListener(64)}, Slots: []Slot{tt.slot}, Command: tt.command}
			if tt.worker != nil {
				in.Workers = []Worker{*tt.worker}
			}
			v, _, _ := analyze(in, newSample(t0), newHistory(), Options{}.withDefaults())
			var ws []Warning
			for _, w := range v.Warnings {
				if w.Code == BindsOwnPort || w.Code == CrashLoop {
					ws = append(ws, w)
				}
			}
			if tt.code == "" {
				if len(ws) != 0 {
					t.Errorf("warnings %+v, want none", ws)
				}
				return
			}
			if len(ws) != 1 || ws[0].Code != tt.code {
				t.Fatalf("warnings %+v, want one %s", ws, tt.code)
			}
			w := ws[0]
			if w.Slot == nil || *w.Slot != 0 || w.PID != 0 || w.Severity != SeverityDegraded {
				t.Errorf("warning %+v: want slot 0, no pid (a restart keeps it), severity degraded", w)
			}
			for _, want := range tt.want {
				if !strings.Contains(w.Message, want) {
					t.Errorf("message %q\nlacks %q", w.Message, want)
				}
			}
		})
	}
}

func TestNamedPort(t *testing.T) {
	in := Input{Listeners: []Listener{httpListener(64)}}
	for _, tt := range []struct {
		command []string
		lastErr string
		want    bool
	}{
		{[]string{"python3", "-m", "http.server", "8080"}, "", true},
		{[]string{"./server", "--listen=127.0.0.1:8080"}, "", true},
		{[]string{"./server", "--port", "18080"}, "", false},
		{nil, "bind() to 0.0.0.0:80 failed; bind() to 0.0.0.0:8080 failed", true},
		{nil, "bind() to 0.0.0.0:80801 failed", false},
		{nil, "listen tcp :8080", true},
	} {
		in.Command = tt.command
		if _, _, got := namedPort(in, tt.lastErr); got != tt.want {
			t.Errorf("namedPort(%q, %q) = %v, want %v", tt.command, tt.lastErr, got, tt.want)
		}
	}
}

func TestQuickExits(t *testing.T) {
	for _, tt := range []struct {
		backoff time.Duration
		want    int
	}{
		{0, 0}, {100 * time.Millisecond, 1}, {200 * time.Millisecond, 2}, {400 * time.Millisecond, 3},
		{25600 * time.Millisecond, 9}, {30 * time.Second, 9},
	} {
		if got := quickExits(tt.backoff, 100*time.Millisecond); got != tt.want {
			t.Errorf("quickExits(%s) = %d, want %d", tt.backoff, got, tt.want)
		}
	}
}

func TestAddrInUse(t *testing.T) {
	for s, want := range map[string]bool{
		"OSError: [Errno 98] Address already in use":                         true,
		"listen tcp 127.0.0.1:8080: bind: address already in use":            true,
		"Error: listen EADDRINUSE: address already in use :::3000":           true,
		"java.net.BindException: Address already in use":                     true,
		"bind() to 0.0.0.0:80 failed (98: Address already in use)":           true,
		"exited with status 1; its last output: permission denied":           false,
		"worker pid 4 missed its readiness deadline (1m0s)":                  false,
		"listen tcp :80: bind: cannot assign requested address (not in use)": false,
	} {
		if got := addrInUse(s); got != want {
			t.Errorf("addrInUse(%q) = %v, want %v", s, got, want)
		}
	}
}

// A listen(2) call after baton's lowered the backlog: the warning names
// that cap, not somaxconn.
func TestBacklogLowered(t *testing.T) {
	tests := []struct {
		name     string
		captured bool
		sendQ    uint32
		code     Code
		want     string
	}{
		{name: "the program's listen(5) under --capture-bind", captured: true, sendQ: 5, code: BacklogLowered,
			want: "the accept queue holds at most 6 connections, not the 1024 baton asked listen(2) for, and net.core.somaxconn (4096) does not explain it: the program called listen(5): under --capture-bind"},
		{name: "a worker's listen on its inherited socket", sendQ: 128, code: BacklogLowered,
			want: "a worker called listen(2) again on the socket it inherited, with backlog 128"},
		{name: "raised by the program", captured: true, sendQ: 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := httpListener(1024)
			l.Captured = tt.captured
			s := newSample(t0)
			s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, SendQ: tt.sendQ}
			v, _, _ := analyze(Input{Listeners: []Listener{l}}, s, newHistory(), Options{}.withDefaults())
			if tt.code == "" {
				if len(v.Warnings) != 0 {
					t.Errorf("warnings %+v, want none", v.Warnings)
				}
				return
			}
			if len(v.Warnings) != 1 || v.Warnings[0].Code != tt.code || !strings.Contains(v.Warnings[0].Message, tt.want) {
				t.Fatalf("warnings %+v, want one %s saying %q", v.Warnings, tt.code, tt.want)
			}
			if strings.Contains(v.Warnings[0].Message, "capped at") {
				t.Errorf("message %q blames somaxconn", v.Warnings[0].Message)
			}
		})
	}
}

// Every warning carries its code's severity.
func TestSeverities(t *testing.T) {
	for _, c := range Codes {
		want := SeverityWarning
		if c == NotAccepting || c == CrashLoop || c == BindsOwnPort {
			want = SeverityDegraded
		}
		if got := c.Severity(); got != want {
			t.Errorf("%s: severity %q, want %q", c, got, want)
		}
	}
}

// The process trees are read only when they can tell something: a worker
// that is a shell, or a connection that has waited its time in a queue.
func TestNeedTrees(t *testing.T) {
	in := stallInput()
	o := Options{}.withDefaults()
	h := newHistory()
	h.queued[1] = waitingConn{first: t0, listener: "http"}
	tests := []struct {
		name string
		s    *sample
		want bool
	}{
		{"nothing waits", queuedSample(t0.Add(time.Minute), nil), false},
		{"a new connection waits", queuedSample(t0.Add(time.Minute), []uint64{2}), false},
		{"one waited too long", queuedSample(t0.Add(o.Persist), []uint64{1, 2}), true},
		{"not yet long enough", queuedSample(t0.Add(o.Persist-time.Millisecond), []uint64{1}), false},
		{"a worker is a shell", func() *sample {
			s := queuedSample(t0, nil)
			s.procs[10] = proc{PID: 10, Comm: "dash"}
			return s
		}(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := needTrees(in, tt.s, h, o.Persist); got != tt.want {
				t.Errorf("needTrees = %v, want %v", got, tt.want)
			}
		})
	}
}
