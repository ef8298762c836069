package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/spawn"
	"github.com/baton-dev/baton/internal/supervisor"
)

// ErrInvalid is wrapped by every error that says a value is wrong (a usage
// error: baton exits 2).
var ErrInvalid = errors.New("invalid configuration")

// Error is a value that is wrong, and where it came from.
type Error struct {
	Origin Origin
	Msg    string
}

func (e *Error) Error() string { return e.Origin.String() + ": " + e.Msg }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// maxStartLimitBurst bounds start_limit_burst; minMaxUptime is the
// shortest max_uptime.
const (
	maxStartLimitBurst = 1000
	minMaxUptime       = time.Second
)

// Resolved is a validated configuration, ready to run.
type Resolved struct {
	*Loaded
	Specs      []listener.Spec
	Supervisor supervisor.Config
	// ControlPath is the control socket; ControlGID the group that may
	// use it besides root and baton's user (-1: none).
	ControlPath string
	ControlGID  int
	// ControlDefault is true when ControlPath is the default one (no
	// control key or --control): baton creates its directory, while one
	// the user named must exist.
	ControlDefault bool
}

// Resolve checks every value and turns the settings into what baton runs.
// It reads the system (users, groups, the command's file) but changes
// nothing.
func (l *Loaded) Resolve() (*Resolved, error) {
	r := &Resolved{Loaded: l, ControlGID: -1}
	bad := func(key, format string, args ...any) error {
		return &Error{Origin: l.Origin(key), Msg: fmt.Sprintf(format, args...)}
	}
	// The default of the listeners' balance option takes what the option
	// takes.
	if err := listener.LookupOption("balance").Check(l.Balance); err != nil {
		return nil, bad("balance", "%v", err)
	}
	if err := l.resolveListeners(r); err != nil {
		return nil, err
	}
	if l.Workers < 1 || l.Workers > supervisor.MaxWorkers {
		return nil, bad("workers", "%d: want 1 to %d", l.Workers, supervisor.MaxWorkers)
	}
	ready, err := supervisor.ParseReady(l.Ready)
	if err != nil {
		if d, ok := strings.CutPrefix(l.Ready, "delay:"); ok && isNumber(d) {
			return nil, bad("ready", "%q: the delay needs a unit: delay:%ss (units: %s)", l.Ready, d, durationUnits)
		}
		return nil, bad("ready", "%v", err)
	}
	if ready.Kind() == supervisor.ReadyBind && !l.CaptureBind {
		return nil, bad("ready", "bind needs capture_bind (--capture-bind): without it baton does not see the program's binds")
	}
	sig, err := supervisor.ParseSignal(l.StopSignal)
	if err != nil {
		return nil, bad("stop_signal", "%v", err)
	}
	if l.ReadyTimeout <= 0 {
		return nil, bad("ready_timeout", "%s: want a positive duration such as 60s", l.ReadyTimeout)
	}
	if l.DrainTimeout <= 0 {
		return nil, bad("drain_timeout", "%s: want a positive duration such as 30s", l.DrainTimeout)
	}
	if l.HandoffTimeout <= 0 {
		return nil, bad("handoff_timeout", "%s: want a positive duration such as 30s", l.HandoffTimeout)
	}
	if l.HandoffMaxState < 1 || l.HandoffMaxState > handoff.MaxStateLimit {
		return nil, bad("handoff_max_state", "%d: want 1 to %d bytes", l.HandoffMaxState, handoff.MaxStateLimit)
	}
	if err := checkRollout(l); err != nil {
		return nil, err
	}
	if l.StopWhenIdle < 0 || l.StopWhenIdle > l.DrainTimeout {
		return nil, bad("stop_when_idle", "%s: want 0 (off) up to the drain timeout (%s)", l.StopWhenIdle, l.DrainTimeout)
	}
	if l.StartLimitBurst < 1 || l.StartLimitBurst > maxStartLimitBurst {
		return nil, bad("start_limit_burst", "%d: want 1 to %d failures", l.StartLimitBurst, maxStartLimitBurst)
	}
	if l.StartLimitInterval <= 0 {
		return nil, bad("start_limit_interval", "%s: want a positive duration such as 10s", l.StartLimitInterval)
	}
	maxRSS, err := ParseSize(l.MaxRSS)
	if err != nil {
		return nil, bad("max_rss", "%v", err)
	}
	if l.MaxUptime != 0 && l.MaxUptime < minMaxUptime {
		return nil, bad("max_uptime", "%s: want 0 (never) or at least %s: a worker must serve a while before it is replaced", l.MaxUptime, minMaxUptime)
	}
	if l.Fd0 != "" {
		found := false
		for _, s := range r.Specs {
			found = found || s.Name == l.Fd0
		}
		if !found {
			return nil, bad("fd0", "%s: no listener has that name; %s", l.Fd0, listenerNames(r.Specs))
		}
	}
	var env []string
	for k, v := range l.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, bad("env", "%q: want KEY=VALUE with a key without '='", k)
		}
		env = append(env, k+"="+v)
	}
	if err := checkLogging(l); err != nil {
		return nil, err
	}
	if l.Metrics != "" {
		if err := checkMetrics(l.Metrics); err != nil {
			return nil, bad("metrics", "%q: %v", l.Metrics, err)
		}
	}
	if l.InspectInterval < 0 {
		return nil, bad("inspect_interval", "%s: want a duration such as 10s, or 0 to check only when asked", l.InspectInterval)
	}
	cred, err := l.credential()
	if err != nil {
		return nil, err
	}
	if err := checkNofile(l); err != nil {
		return nil, err
	}
	if len(l.Command) == 0 {
		return nil, bad("command", "no command: give the worker command after --, or command = [...] in the config file")
	}
	if err := checkDir(l.Dir); err != nil {
		return nil, bad("dir", "%v", err)
	}
	path, err := resolveCommand(l.Command[0], l.Dir)
	if err != nil {
		return nil, bad("command", "%v", err)
	}
	if os.Geteuid() == 0 && (cred == nil || cred.UID == 0) {
		// The workers run as root: a command another user can change is
		// theirs to run as root.
		if err := pathtrust.File(path); err != nil {
			return nil, bad("command", "%v: the workers run as root; run them as another user (user = ...) or fix the file", err)
		}
	}
	if r.ControlPath, err = l.controlPath(); err != nil {
		return nil, err
	}
	r.ControlDefault = l.Control == ""
	if l.ControlGroup != "" {
		g, err := user.LookupGroup(l.ControlGroup)
		if err != nil {
			return nil, bad("control_group", "%q: no such group", l.ControlGroup)
		}
		r.ControlGID, _ = strconv.Atoi(g.Gid)
	}
	r.Supervisor = supervisor.Config{
		Path: path, Args: l.Command, Env: env, Dir: l.Dir,
		Workers: l.Workers, Ready: ready, ReadyTimeout: l.ReadyTimeout,
		StopSignal: sig, DrainTimeout: l.DrainTimeout, StopWhenIdle: l.StopWhenIdle,
		StartLimitBurst: l.StartLimitBurst, StartLimitInterval: l.StartLimitInterval,
		MaxRSS: maxRSS, MaxUptime: l.MaxUptime,
		Fd0: l.Fd0, LogPrefix: l.LogPrefix, EnableMigrateReq: l.EnableMigrateReq,
		CaptureBind: l.CaptureBind, User: cred, Nofile: l.Rlimits.Nofile,
		Handoff: supervisor.HandoffConfig{Timeout: l.HandoffTimeout, MaxState: l.HandoffMaxState},
		Rollout: supervisor.Rollout{
			Rolling: l.Rolling, Canary: l.Canary, CanaryWindow: l.CanaryWindow,
			CanaryMaxErrors: l.CanaryMaxErrors, CanaryMaxErrorRate: l.CanaryMaxErrorRate,
		},
	}
	slices.Sort(r.Supervisor.Env) // map order is random; keep logs and diffs stable
	return r, nil
}

func (l *Loaded) resolveListeners(r *Resolved) error {
	all := append([]string(nil), l.Listen...)
	for i, t := range l.Listeners {
		u, err := t.url()
		if err != nil {
			return &Error{Origin: Origin{File: l.Path, Line: l.lines.item("listener", i, err.key), Key: fmt.Sprintf("listener[%d].%s", i, err.key)}, Msg: err.msg}
		}
		all = append(all, u)
	}
	for i, text := range all {
		spec, err := listener.Parse(text)
		if err != nil {
			o := l.ListenerOrigin(i)
			if i >= len(l.Listen) {
				// Point at the key the problem is with: an option's own key,
				// or the address.
				key := "address"
				var oe *listener.OptionError
				if errors.As(err, &oe) {
					key = oe.Key
				}
				o.Line = l.lines.item("listener", i-len(l.Listen), key)
				if o.Line == 0 { // an inline table: the line of its key
					o.Line = l.lines.key(toml.Key{"listener"})
				}
				o.Key += "." + key
			}
			return &Error{Origin: o, Msg: specMessage(err)}
		}
		if spec.Balance == "" && spec.IsInet() {
			spec.Balance = l.Balance
		}
		r.Specs = append(r.Specs, spec)
	}
	if err := listener.CheckNames(r.Specs); err != nil {
		return &Error{Origin: l.Origin("listen"), Msg: specMessage(err)}
	}
	return nil
}

// specMessage is a listener error as a config error says it, after the
// key: the specification as written and what is wrong with it, without
// "invalid listener" (the key says that).
func specMessage(err error) string {
	var se *listener.SpecError
	switch {
	case !errors.As(err, &se):
		return err.Error()
	case se.Text == "":
		return se.Err.Error()
	}
	return fmt.Sprintf("%q: %v", se.Text, se.Err)
}

// tableError is a mistake in a [[listener]] table found before its
// address is parsed: the key at fault and what is wrong.
type tableError struct{ key, msg string }

// url turns a [[listener]] table into a listener address with its
// options, in the order of listener.Options.
func (t ListenerTable) url() (string, *tableError) {
	if t.Address == "" {
		return "", &tableError{"address", "missing: every [[listener]] needs address = \"tcp://HOST:PORT\" (or unix://, udp://...)"}
	}
	if strings.Contains(t.Address, "?") {
		return "", &tableError{"address", "put options in their own keys (backlog = 1024), not in the address"}
	}
	var q []string
	for _, o := range listener.Options() {
		if v := queryValue(t.Options[o.Key]); v != "" {
			q = append(q, o.Key+"="+queryEscaper.Replace(v))
		}
	}
	u := t.Address
	if t.Name != "" {
		u = t.Name + "=" + u
	}
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	return u, nil
}

// queryValue is a [[listener]] table's value as the query of an address
// writes it; "" for none, and for a number 0 or an empty string, which
// mean the default.
func queryValue(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case int64:
		if v == 0 {
			return ""
		}
		return strconv.FormatInt(v, 10)
	case bool:
		return strconv.FormatBool(v)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

// queryEscaper escapes what url.ParseQuery would not give back as it is
// in a value: '&' and ';' would end it, '%' begin an escape, '+' become a
// space. Anything else stays as written, in the address errors show.
var queryEscaper = strings.NewReplacer("%", "%25", "&", "%26", ";", "%3B", "+", "%2B")

// checkRollout checks the keys that say how a reload replaces the
// workers. rolling and canary may exceed workers (a scale may change
// those): a reload takes at most every slot.
func checkRollout(l *Loaded) error {
	bad := func(key, format string, args ...any) error {
		return &Error{Origin: l.Origin(key), Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case l.Rolling < 0:
		return bad("rolling", "%d: want 0 (every slot at once) or how many slots a reload replaces at a time, such as 1", l.Rolling)
	case l.Canary < 0:
		return bad("canary", "%d: want 0 (no canary) or how many slots a reload tries first, such as 1", l.Canary)
	case l.CanaryWindow <= 0:
		return bad("canary_window", "%s: want a positive duration such as 30s: how long a reload's canaries are watched", l.CanaryWindow)
	case l.CanaryMaxErrors < 0:
		return bad("canary_max_errors", "%d: want 0 (any error fails a canary) or more", l.CanaryMaxErrors)
	case l.CanaryMaxErrorRate < 0 || math.IsNaN(l.CanaryMaxErrorRate) || math.IsInf(l.CanaryMaxErrorRate, 0):
		return bad("canary_max_error_rate", "%v: want a percentage of the connections a canary accepted, such as 1 or 0.5; 0 does not check it", l.CanaryMaxErrorRate)
	}
	return nil
}

func checkLogging(l *Loaded) error {
	switch l.LogFormat {
	case "text", "json":
	default:
		return &Error{Origin: l.Origin("log_format"), Msg: fmt.Sprintf("%q: want text or json", l.LogFormat)}
	}
	switch strings.ToLower(l.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return &Error{Origin: l.Origin("log_level"), Msg: fmt.Sprintf("%q: want debug, info, warn or error", l.LogLevel)}
	}
	return nil
}

// credential resolves user and group into the identity workers run as.
func (l *Loaded) credential() (*spawn.Credential, error) {
	if l.User == "" && l.Group == "" {
		return nil, nil
	}
	c := &spawn.Credential{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	if l.User != "" {
		u, err := lookupUser(l.User)
		if err != nil {
			return nil, &Error{Origin: l.Origin("user"), Msg: fmt.Sprintf("%q: no such user; use a name from /etc/passwd or a number", l.User)}
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c.UID, c.GID = uint32(uid), uint32(gid)
		if ids, err := u.GroupIds(); err == nil {
			for _, id := range ids {
				if n, err := strconv.ParseUint(id, 10, 32); err == nil {
					c.Groups = append(c.Groups, uint32(n))
				}
			}
		}
	}
	if l.Group != "" {
		g, err := lookupGroup(l.Group)
		if err != nil {
			return nil, &Error{Origin: l.Origin("group"), Msg: fmt.Sprintf("%q: no such group; use a name from /etc/group or a number", l.Group)}
		}
		gid, _ := strconv.ParseUint(g.Gid, 10, 32)
		c.GID = uint32(gid)
	}
	if len(c.Groups) == 0 {
		c.Groups = []uint32{c.GID}
	}
	if os.Geteuid() != 0 && (int(c.UID) != os.Geteuid() || int(c.GID) != os.Getegid()) {
		key := "user"
		if l.User == "" {
			key = "group"
		}
		return nil, &Error{Origin: l.Origin(key), Msg: fmt.Sprintf("baton runs as uid %d: only root can run workers as another user or group", os.Geteuid())}
	}
	return c, nil
}

func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.Atoi(name); err == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
		return &user.User{Uid: name, Gid: name}, nil
	}
	return user.Lookup(name)
}

func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.Atoi(name); err == nil {
		return &user.Group{Gid: name}, nil
	}
	return user.LookupGroup(name)
}

// checkNofile checks that the workers' RLIMIT_NOFILE can be given: above
// baton's own hard limit it needs CAP_SYS_RESOURCE.
func checkNofile(l *Loaded) error {
	n := l.Rlimits.Nofile
	if n == 0 {
		return nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && n > lim.Max && !hasCap(unix.CAP_SYS_RESOURCE) {
		return &Error{Origin: l.Origin("rlimits"), Msg: fmt.Sprintf("nofile %d is above baton's hard limit %d, and raising it needs CAP_SYS_RESOURCE, which baton lacks: use %d or less, or raise baton's own limit (LimitNOFILE= in its unit)", n, lim.Max, lim.Max)}
	}
	return nil
}

// hasCap reports whether this process has a capability in its effective
// set.
func hasCap(c uintptr) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<c) != 0
		}
	}
	return false
}

// checkDir checks that the workers' working directory is one: a worker
// that cannot chdir into it cannot start. A symlink is followed, as
// chdir(2) does (a `current` link to a release directory). It is checked
// again at each start, which names it when it has gone.
func checkDir(dir string) error {
	if dir == "" {
		return nil
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("working directory %s does not exist: create it, or give the directory the workers run in", dir)
	case err != nil:
		return fmt.Errorf("working directory %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("working directory %s is not a directory: give the directory the workers run in", dir)
	}
	return nil
}

// resolveCommand finds the worker command as the shell would, relative to
// dir for a relative path, and makes it absolute.
func resolveCommand(name, dir string) (string, error) {
	if dir != "" && strings.Contains(name, "/") && !filepath.IsAbs(name) {
		name = filepath.Join(dir, name)
	}
	path, err := exec.LookPath(name)
	if err != nil {
		switch {
		case errors.Is(err, exec.ErrNotFound) && !strings.Contains(name, "/"):
			return "", fmt.Errorf("command %q not found in PATH: give its path (./%s) or install it", name, name)
		case errors.Is(err, os.ErrNotExist):
			return "", fmt.Errorf("command %s: no such file", name)
		case errors.Is(err, os.ErrPermission), errors.Is(err, exec.ErrNotFound):
			return "", fmt.Errorf("command %s is not an executable file: check the path, or chmod +x it", name)
		}
		return "", fmt.Errorf("command %s: %w", name, err)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return "", fmt.Errorf("command %s is a directory", name)
	}
	return filepath.Abs(path)
}

// controlPath resolves where the control socket lives.
func (l *Loaded) controlPath() (string, error) {
	p := l.Control
	if p == "" {
		if strings.ContainsAny(l.Name, "/\x00") || l.Name == "" || l.Name == "." || l.Name == ".." {
			return "", &Error{Origin: l.Origin("name"), Msg: fmt.Sprintf("%q: want a plain name such as web or api", l.Name)}
		}
		p = DefaultControlPath(l.Name)
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if len(p) > listener.MaxUnixPath {
		return "", &Error{Origin: l.Origin("control"), Msg: fmt.Sprintf("%s is %d bytes; the kernel allows at most %d: use a shorter path", p, len(p), listener.MaxUnixPath)}
	}
	if l.Control != "" {
		// baton creates its default directory, never one the user
		// named: a directory that is missing there is a typo or a
		// deployment step that did not run.
		dir := filepath.Dir(p)
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return "", &Error{Origin: l.Origin("control"), Msg: fmt.Sprintf("%s: directory %s does not exist: create it (mkdir -m 0700 %s), or leave control out for the default %s, whose directory baton creates", l.Control, dir, dir, DefaultControlPath(l.Name))}
		case err == nil && !fi.IsDir():
			return "", &Error{Origin: l.Origin("control"), Msg: fmt.Sprintf("%s: %s is not a directory: give a path in a directory of baton's own", l.Control, dir)}
		}
	}
	return p, nil
}

// listenerNames says which names --fd0 may take: the listeners', or how
// to add one when there is none.
func listenerNames(specs []listener.Spec) string {
	if len(specs) == 0 {
		return "there are no listeners: add one with --listen NAME=ADDRESS (-l fcgi=tcp://127.0.0.1:9000)"
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return "the listeners are " + strings.Join(names, ", ") + " (a listener's name is the NAME of NAME=ADDRESS, or its scheme)"
}

// checkMetrics checks the metrics address, HOST:PORT: a HOST that is an
// address or empty (every address) or a name, and a PORT the kernel can
// bind, so that an address that cannot be bound is a usage error before
// anything starts rather than a failure after the listeners are bound.
func checkMetrics(addr string) error {
	const example = "for example 127.0.0.1:9100, or :9100 for every address"
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want HOST:PORT, %s", example)
	}
	if port == "" {
		return fmt.Errorf("no port: want HOST:PORT, %s", example)
	}
	if n, err := strconv.Atoi(port); err == nil {
		if n < 0 || n > 65535 {
			return fmt.Errorf("port %d is out of range: want a port from 1 to 65535 (0 picks a free one), %s", n, example)
		}
		return nil
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("port %q is neither a number nor a service in /etc/services: want a port from 1 to 65535, %s", port, example)
	}
	return nil
}

// DefaultControlPath is where the control socket of instance name lives:
// /run/baton as root, else $XDG_RUNTIME_DIR/baton, else a directory of the
// user's own under the temp dir.
func DefaultControlPath(name string) string {
	switch {
	case os.Geteuid() == 0:
		return filepath.Join("/run/baton", name+".sock")
	case os.Getenv("XDG_RUNTIME_DIR") != "":
		return filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "baton", name+".sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("baton-%d", os.Geteuid()), name+".sock")
}
