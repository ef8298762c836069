// Package config is baton run's configuration: the TOML file (--config),
// the command-line flags that override it, and the validation that turns
// both into what the supervisor runs.
//
// Every flag of `baton run` has a key of the same name in the file, with
// '_' for '-' (--ready-timeout is ready_timeout). A flag given on the
// command line wins over the file; a key absent from both keeps its
// default. Errors name where the bad value came from: the file, its line
// and key, or the flag.
package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/supervisor"
)

// Settings is the whole configuration of `baton run`. The toml tag is the
// key in the file; the flag tag the command-line flag (none: file only).
type Settings struct {
	Name    string `toml:"name" flag:"name"`
	Control string `toml:"control" flag:"control"`
	// ControlGroup lets members of this group use the control socket
	// (mode 0660); by default only root and baton's own user may.
	ControlGroup string `toml:"control_group" flag:"control-group"`

	// Command is the worker command; on the command line it follows --.
	Command []string `toml:"command"`
	Dir     string   `toml:"dir" flag:"dir"`
	// Env is added to the workers' environment (--env KEY=VALUE).
	Env map[string]string `toml:"env" flag:"env"`
	// User and Group run the workers under another identity (baton
	// started as root).
	User  string `toml:"user" flag:"user"`
	Group string `toml:"group" flag:"group"`
	// Rlimits are applied to the workers.
	Rlimits Rlimits `toml:"rlimits"`

	// Listen holds listener addresses ([NAME=]ADDRESS); Listeners the
	// [[listener]] tables of the file. Both end up as one list.
	Listen    []string        `toml:"listen" flag:"listen"`
	Listeners []ListenerTable `toml:"listener"`
	// NoListeners says that the workers are meant to run without
	// sockets: without it, a configuration without listeners is refused.
	NoListeners bool   `toml:"no_listeners" flag:"no-listeners"`
	Balance     string `toml:"balance" flag:"balance"`
	Fd0         string `toml:"fd0" flag:"fd0"`

	Workers      int           `toml:"workers" flag:"workers"`
	Ready        string        `toml:"ready" flag:"ready"`
	ReadyTimeout time.Duration `toml:"ready_timeout" flag:"ready-timeout"`
	StopSignal   string        `toml:"stop_signal" flag:"stop-signal"`
	DrainTimeout time.Duration `toml:"drain_timeout" flag:"drain-timeout"`
	StopWhenIdle time.Duration `toml:"stop_when_idle" flag:"stop-when-idle"`
	// StartLimitBurst failures of a slot's workers within
	// StartLimitInterval, while their generation comes up, fail a reload
	// (a crash loop), as systemd's StartLimitBurst and
	// StartLimitIntervalSec.
	StartLimitBurst    int           `toml:"start_limit_burst" flag:"start-limit-burst"`
	StartLimitInterval time.Duration `toml:"start_limit_interval" flag:"start-limit-interval"`
	// MaxRSS ("512MiB") and MaxUptime: past either, baton replaces a
	// worker (a new one in its slot ready first); "" and 0 are off.
	MaxRSS    string        `toml:"max_rss" flag:"max-rss"`
	MaxUptime time.Duration `toml:"max_uptime" flag:"max-uptime"`

	CaptureBind      bool `toml:"capture_bind" flag:"capture-bind"`
	EnableMigrateReq bool `toml:"enable_migrate_req" flag:"enable-migrate-req"`

	// HandoffTimeout is how long a handed-off connection waits for a
	// worker to adopt it; HandoffMaxState bounds its state, in bytes
	// (docs/handoff.md).
	HandoffTimeout  time.Duration `toml:"handoff_timeout" flag:"handoff-timeout"`
	HandoffMaxState int           `toml:"handoff_max_state" flag:"handoff-max-state"`

	// Rolling is how many slots a reload replaces at a time (0: all at
	// once); Canary how many it tries first, watched for CanaryWindow,
	// which fail on more than CanaryMaxErrors errors (and, when set, more
	// than CanaryMaxErrorRate percent of their connections): how a reload
	// (baton reload, SIGHUP) replaces the workers unless baton reload
	// says otherwise (supervisor.Rollout).
	Rolling            int           `toml:"rolling" flag:"rolling"`
	Canary             int           `toml:"canary" flag:"canary"`
	CanaryWindow       time.Duration `toml:"canary_window" flag:"canary-window"`
	CanaryMaxErrors    int64         `toml:"canary_max_errors" flag:"canary-max-errors"`
	CanaryMaxErrorRate float64       `toml:"canary_max_error_rate" flag:"canary-max-error-rate"`

	LogPrefix bool   `toml:"log_prefix" flag:"log-prefix"`
	LogFormat string `toml:"log_format" flag:"log-format"`
	LogLevel  string `toml:"log_level" flag:"log-level"`
	Metrics   string `toml:"metrics" flag:"metrics"`
	// InspectInterval is how often baton checks the kernel's view of its
	// sockets and logs new warnings; 0 checks only when asked.
	InspectInterval time.Duration `toml:"inspect_interval" flag:"inspect-interval"`
}

// Rlimits are resource limits for the workers.
type Rlimits struct {
	// Nofile is RLIMIT_NOFILE (soft and hard); 0 leaves baton's own.
	Nofile uint64 `toml:"nofile"`
}

// ListenerTable is a [[listener]] table: a name, an address, and the
// listener's options (listener.Options) as keys instead of the query of
// the address.
type ListenerTable struct {
	Name    string `toml:"name"`
	Address string `toml:"address"`
	// Options holds the table's other keys, each a listener option, with
	// its value as the file has it: an int64, a bool or a string, as the
	// option's type says (checkValues checked it).
	Options map[string]any `toml:"-"`

	// unknown lists the keys that are neither, in order; loadFile
	// reports them.
	unknown []string
}

// UnmarshalTOML decodes a [[listener]] table whose values' types
// checkValues has checked: name and address, the listener options into
// Options, and any other key into unknown, for loadFile to report with
// its line.
func (t *ListenerTable) UnmarshalTOML(data any) error {
	m, isTable := data.(map[string]any)
	if !isTable {
		return fmt.Errorf("%v is not a table: want [[listener]]", data)
	}
	*t = ListenerTable{}
	for k, v := range m {
		var ok bool
		switch {
		case k == "name":
			t.Name, ok = v.(string)
		case k == "address":
			t.Address, ok = v.(string)
		case listener.LookupOption(k) != nil:
			if t.Options == nil {
				t.Options = map[string]any{}
			}
			t.Options[k], ok = v, true
		default:
			t.unknown, ok = append(t.unknown, k), true
		}
		if !ok {
			return fmt.Errorf("%s: %v is not a string", k, v)
		}
	}
	sort.Strings(t.unknown)
	return nil
}

// listenerKeys lists the keys a [[listener]] table may have.
func listenerKeys() []string {
	keys := []string{"name", "address"}
	for _, o := range listener.Options() {
		keys = append(keys, o.Key)
	}
	sort.Strings(keys)
	return keys
}

// Defaults are the settings when neither file nor flag says otherwise.
func Defaults() Settings {
	return Settings{
		Name:         "baton",
		Workers:      runtime.NumCPU(),
		Ready:        "delay:1s",
		ReadyTimeout: 60 * time.Second,
		StopSignal:   "TERM",
		DrainTimeout: 30 * time.Second,
		Balance:      "shared",
		LogPrefix:    true,
		LogFormat:    "text",
		LogLevel:     "info",

		InspectInterval: 10 * time.Second,

		StartLimitBurst:    supervisor.DefaultStartLimitBurst,
		StartLimitInterval: supervisor.DefaultStartLimitInterval,

		HandoffTimeout:  handoff.DefaultTimeout,
		HandoffMaxState: handoff.DefaultMaxState,

		CanaryWindow: supervisor.DefaultCanaryWindow,
	}
}

// Origin says where a setting's value came from, for error messages.
type Origin struct {
	File string // the config file, when the value came from it
	Line int    // its line, 0 when unknown
	Key  string // the key in the file, or the flag's name
	Flag bool   // the value came from a command-line flag
}

func (o Origin) String() string {
	switch {
	case o.Flag:
		return "--" + o.Key
	case o.File != "" && o.Line > 0:
		return fmt.Sprintf("%s:%d: %s", o.File, o.Line, o.Key)
	case o.File != "":
		return fmt.Sprintf("%s: %s", o.File, o.Key)
	}
	return o.Key
}

// Loaded is a configuration with the origin of each value.
type Loaded struct {
	Settings
	Path    string // the config file, "" without one
	origins map[string]Origin
	lines   *lineIndex
}

// Origin tells where the value of key (a toml key) came from. A key given
// nowhere belongs in the config file, when there is one.
func (l *Loaded) Origin(key string) Origin {
	if o, ok := l.origins[key]; ok {
		return o
	}
	return Origin{File: l.Path, Key: key}
}

var decodeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)

// ListenerOrigin tells where listener i (in Listen order, then the
// tables) came from.
func (l *Loaded) ListenerOrigin(i int) Origin {
	if i < len(l.Listen) {
		o := l.Origin("listen")
		return o
	}
	o := Origin{File: l.Path, Key: fmt.Sprintf("listener[%d]", i-len(l.Listen))}
	if l.lines != nil {
		o.Line = l.lines.table("listener", i-len(l.Listen))
	}
	return o
}

// ErrFile wraps errors about the file itself (unreadable, not TOML, an
// unknown key).
var ErrFile = errors.New("config file")

// Load reads path (if not "") over the defaults, then applies the flags of
// fs that were given on the command line (their values in flags), and
// args, the command after --, when there is one.
func Load(path string, flags *Settings, fs *pflag.FlagSet, args []string) (*Loaded, error) {
	l := &Loaded{Settings: Defaults(), Path: path, origins: map[string]Origin{}}
	if path != "" {
		if err := l.loadFile(path); err != nil {
			return nil, err
		}
	}
	if fs != nil {
		l.applyFlags(flags, fs)
	}
	if len(args) > 0 {
		l.Command = args
		l.origins["command"] = Origin{Key: "command (after --)", Flag: false}
	}
	return l, nil
}

// loadFile reads the config file at path (readFile), checks the type of
// every value (checkValues) and takes the keys it sets over the defaults.
func (l *Loaded) loadFile(path string) error {
	data, err := readFile(path)
	if err != nil {
		return err
	}
	l.lines = indexLines(string(data))
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return l.decodeError(err)
	}
	if err := l.checkValues(raw); err != nil {
		return err
	}
	var file Settings
	md, err := toml.Decode(string(data), &file)
	if err != nil {
		return l.decodeError(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return l.unknownKey(und[0])
	}
	for i, t := range file.Listeners {
		if len(t.unknown) > 0 {
			line := l.lines.item("listener", i, t.unknown[0])
			if line == 0 { // an inline table: the line of its key
				line = l.lines.key(toml.Key{"listener"})
			}
			return fmt.Errorf("%w %s:%d: unknown key \"listener[%d].%s\"%s keys of a [[listener]] table are %s", ErrFile, path, line, i, t.unknown[0], didYouMean(t.unknown[0], listenerKeys()), strings.Join(listenerKeys(), ", "))
		}
	}
	fv, dv := reflect.ValueOf(file), reflect.ValueOf(&l.Settings).Elem()
	st := fv.Type()
	for i := 0; i < st.NumField(); i++ {
		key := st.Field(i).Tag.Get("toml")
		if md.IsDefined(key) {
			dv.Field(i).Set(fv.Field(i))
			l.origins[key] = Origin{File: path, Line: l.lines.key(toml.Key{key}), Key: key}
		}
	}
	return nil
}

// decodeError names the file, the line and the key of a TOML decoding
// error, and how to write what the parser could not read.
func (l *Loaded) decodeError(err error) error {
	path := l.Path
	var pe toml.ParseError
	if errors.As(err, &pe) {
		line := ""
		if n := pe.Position.Line; n >= 1 && n <= len(l.lines.text) {
			line = l.lines.text[n-1]
		}
		key := pe.LastKey
		if k, _, ok := strings.Cut(line, "="); ok && key == "" {
			key = strings.TrimSpace(k)
		}
		msg := strings.TrimSuffix(pe.Message, ".")
		if key != "" && !strings.HasPrefix(strings.TrimSpace(line), "[") {
			return fmt.Errorf("%w %s:%d: %s: %s: %s", ErrFile, path, pe.Position.Line, key, msg, syntaxFix(msg, line))
		}
		return fmt.Errorf("%w %s:%d: %s: %s", ErrFile, path, pe.Position.Line, msg, syntaxFix(msg, line))
	}
	// A value of the wrong type: "toml: line 3 (last key "workers"):
	// incompatible types: ...".
	if m := decodeErr.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("%w %s:%s: %s: %s", ErrFile, path, m[1], m[2], m[3])
	}
	return fmt.Errorf("%w %s: %w", ErrFile, path, err)
}

// syntaxFix says how to write what the TOML parser could not read, from
// its message and the line it was on: the usual slips are a string
// without quotes (ready = delay:1s, drain_timeout = 30s), a key or table
// given twice, and ':' for '='.
func syntaxFix(msg, line string) string {
	key, value, isAssignment := strings.Cut(line, "=")
	key = strings.TrimSpace(key)
	value, _, _ = strings.Cut(value, " #")
	value = strings.TrimSpace(value)
	switch {
	case strings.Contains(msg, "has already been defined"):
		return "a key, and a table, may appear once in a file: remove one of the two (several values go in one list: listen = [\"...\", \"...\"])"
	case strings.Contains(msg, "but got ':'"):
		return "write key = value, with '='"
	case strings.Contains(msg, "to end table name"):
		return "close the table's name with ']', as in [rlimits] (or ']]' for [[listener]])"
	case strings.Contains(msg, "out of range"):
		return "use a smaller number"
	case strings.Contains(msg, "leading zero"):
		return "write the number without leading zeros (a file mode is a string: mode = \"0660\")"
	case strings.Contains(msg, "strings cannot contain newlines"):
		if key == "" {
			key = "key"
		}
		return fmt.Sprintf("end the string with a quote on the same line: %s = \"...\"", key)
	case strings.Contains(msg, "a comma (',') or array terminator"):
		return "separate the elements of a list with commas: key = [\"a\", \"b\"]"
	case strings.Contains(msg, "unexpected EOF"):
		return "a list, string or table is not closed"
	case !isAssignment:
	case strings.HasPrefix(value, "["):
		return fmt.Sprintf("every string in a list goes in quotes: %s = [\"...\"]", key)
	case value == "True" || value == "False" || value == "TRUE" || value == "FALSE":
		return fmt.Sprintf("true and false are lowercase, without quotes: %s = %s", key, strings.ToLower(value))
	case strings.Contains(msg, "expected value but found"), strings.Contains(msg, "to end with a newline"):
		if value != "" && (unicode.IsLetter(rune(value[0])) || unicode.IsDigit(rune(value[0]))) {
			return fmt.Sprintf("a string goes in quotes (and so does a duration): %s = %q", key, value)
		}
	}
	return "a line is key = value, with strings (and durations such as \"30s\") in quotes: see docs/config.md"
}

// applyFlags copies the flags given on the command line over the values.
// Flags override the file, except --env, which adds to the file's [env].
func (l *Loaded) applyFlags(flags *Settings, fs *pflag.FlagSet) {
	fv, dv := reflect.ValueOf(flags).Elem(), reflect.ValueOf(&l.Settings).Elem()
	st := fv.Type()
	for i := 0; i < st.NumField(); i++ {
		name := st.Field(i).Tag.Get("flag")
		if name == "" || !fs.Changed(name) {
			continue
		}
		key := st.Field(i).Tag.Get("toml")
		if key == "env" {
			if l.Env == nil {
				l.Env = map[string]string{}
			}
			for k, v := range flags.Env {
				l.Env[k] = v
			}
		} else {
			dv.Field(i).Set(fv.Field(i))
		}
		if key == "listen" {
			l.Listeners = nil // listeners on the command line replace the file's
		}
		l.origins[key] = Origin{Key: name, Flag: true}
	}
}

// tableKeys lists the keys of the table that struct type t decodes.
func tableKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if k := t.Field(i).Tag.Get("toml"); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// unknownKey is the error for key, which the file has and Settings does
// not: it names the line, a near key, and the keys of the table the key
// is in ([rlimits] has nofile), not those of the top.
func (l *Loaded) unknownKey(key toml.Key) error {
	at := fmt.Sprintf("%s:%d", l.Path, l.lines.key(key))
	last := key[len(key)-1]
	t := reflect.TypeOf(Settings{})
	for _, k := range key[:len(key)-1] {
		f, ok := fieldByKey(t, k)
		if !ok || f.Type.Kind() != reflect.Struct {
			break
		}
		t = f.Type
	}
	keys := tableKeys(t)
	if len(key) == 1 {
		return fmt.Errorf("%w %s: unknown key %q%s keys are %s (docs/config.md)", ErrFile, at, last, didYouMean(last, keys), strings.Join(keys, ", "))
	}
	table := strings.Join(key[:len(key)-1], ".")
	return fmt.Errorf("%w %s: unknown key %q in [%s]%s the keys of [%s] are %s (docs/config.md)", ErrFile, at, last, table, didYouMean(last, keys), table, strings.Join(keys, ", "))
}

// fieldByKey is the field of struct type t whose toml key is key.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Tag.Get("toml") == key {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}
