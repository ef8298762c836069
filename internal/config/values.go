package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/baton-dev/baton/internal/listener"
)

// durationUnits is what a duration's unit may be, for messages.
const durationUnits = "ns, us, ms, s, m, h"

// checkValues checks the type of every value in a decoded file against
// the key it is given to, before the file is decoded into Settings, so
// that a value that is not what it looks like is refused with the fix
// instead of taken as something else. The TOML decoder would take
// drain_timeout = 30 as 30 nanoseconds, and rlimits.nofile = -1 as
// 18446744073709551615.
func (l *Loaded) checkValues(raw map[string]any) error {
	return l.checkTable(raw, reflect.TypeOf(Settings{}), func(key string) Origin {
		o := Origin{File: l.Path, Line: l.lines.key(toml.Key(strings.Split(key, "."))), Key: key}
		if o.Line == 0 { // in an inline table: the line of its key
			first, _, _ := strings.Cut(key, ".")
			o.Line = l.lines.key(toml.Key{first})
		}
		return o
	}, "")
}

// checkTable checks the keys of one table against the fields of t. at
// says where a key (its full name) is; prefix is the table's name and a
// dot ("" at the top).
func (l *Loaded) checkTable(raw map[string]any, t reflect.Type, at func(string) Origin, prefix string) error {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := f.Tag.Get("toml")
		v, ok := raw[key]
		if key == "" || key == "-" || !ok {
			continue // unknown keys are reported after decoding
		}
		full := prefix + key
		if err := l.checkValue(v, f.Type, full, at); err != nil {
			return err
		}
	}
	if t == reflect.TypeOf(ListenerTable{}) {
		// The options of a [[listener]] table, in their order, each of
		// its type.
		for _, o := range listener.Options() {
			if v, ok := raw[o.Key]; ok {
				if err := l.checkValue(v, optionTypes[o.Type], prefix+o.Key, at); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// optionTypes is the Go type whose check a listener option's value in a
// [[listener]] table gets: what ListenerTable held before its options
// came from listener.Options.
var optionTypes = map[listener.ValueType]reflect.Type{
	listener.ValueText:   reflect.TypeOf(""),
	listener.ValueNumber: reflect.TypeOf(0),
	listener.ValueBool:   reflect.TypeOf(false),
	listener.ValueOctal:  reflect.TypeOf(""),
}

// listenerOption is the listener option the key named full is, when it
// is one in a [[listener]] table ("listener.mode"); nil otherwise.
func listenerOption(full string) *listener.Option {
	if k, ok := strings.CutPrefix(full, "listener."); ok {
		return listener.LookupOption(k)
	}
	return nil
}

// checkValue checks one value, of the key named full, against the Go type
// it decodes into.
func (l *Loaded) checkValue(v any, t reflect.Type, full string, at func(string) Origin) error {
	bad := func(format string, args ...any) error {
		return &Error{Origin: at(full), Msg: fmt.Sprintf(format, args...)}
	}
	short := full[strings.LastIndexByte(full, '.')+1:]
	if t == reflect.TypeOf(time.Duration(0)) {
		return checkDuration(v, short, bad)
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := v.(string); !ok {
			if o := listenerOption(full); o != nil && o.Type == listener.ValueOctal {
				return bad("%s is a number: write the permission bits as a string of octal digits, %s = %q", l.literal(at(full), v), short, octalMode(l.literal(at(full), v)))
			}
			return bad("%s is %s: want a string in quotes, %s = \"...\"", l.literal(at(full), v), typeName(v), short)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return bad("%s is %s: want true or false, without quotes", l.literal(at(full), v), typeName(v))
		}
	case reflect.Int, reflect.Int64, reflect.Uint64, reflect.Uint32:
		n, ok := v.(int64)
		if !ok {
			return bad("%s is %s: want a whole number, without quotes%s", l.literal(at(full), v), typeName(v), unitOf(full))
		}
		if t.Kind() >= reflect.Uint && n < 0 {
			return bad("%d: want 0 or more%s; there is no value for unlimited", n, unitOf(full))
		}
	case reflect.Float64:
		switch v.(type) {
		case int64, float64:
		default:
			return bad("%s is %s: want a number, without quotes%s", l.literal(at(full), v), typeName(v), unitOf(full))
		}
	case reflect.Pointer:
		return l.checkValue(v, t.Elem(), full, at)
	case reflect.Slice:
		var items []any
		switch list := v.(type) {
		case []any:
			items = list
		case []map[string]any:
			for _, m := range list {
				items = append(items, m)
			}
		case map[string]any:
			if t.Elem().Kind() == reflect.Struct {
				return bad("[%s] is a single table: write [[%s]], with two brackets, above each %s", full, short, short)
			}
			return bad("%s is %s: want a list in brackets, %s = [...]", l.literal(at(full), v), typeName(v), short)
		default:
			return bad("%s is %s: want a list in brackets, %s = [...]", l.literal(at(full), v), typeName(v), short)
		}
		for i, e := range items {
			if t.Elem().Kind() == reflect.Struct { // [[listener]] tables
				tb, ok := e.(map[string]any)
				if !ok {
					return bad("%s is %s: want a table, [[%s]]", l.literal(at(full), e), typeName(e), short)
				}
				item := func(key string) Origin {
					k := key[strings.LastIndexByte(key, '.')+1:]
					o := Origin{File: l.Path, Line: l.lines.item(short, i, k), Key: fmt.Sprintf("%s[%d].%s", short, i, k)}
					if o.Line == 0 {
						o.Line = at(full).Line // an inline table
					}
					return o
				}
				if err := l.checkTable(tb, t.Elem(), item, full+"."); err != nil {
					return err
				}
				continue
			}
			if _, ok := e.(string); !ok && t.Elem().Kind() == reflect.String {
				return bad("%v is %s: every element is a string, in quotes: %s = [\"...\"]", e, typeName(e), short)
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("%s is %s: want a table, [%s]", l.literal(at(full), v), typeName(v), full)
		}
		for k, e := range m {
			if _, ok := e.(string); !ok {
				o := Origin{File: l.Path, Line: l.lines.key(toml.Key{full, k}), Key: full + "." + k}
				return &Error{Origin: o, Msg: fmt.Sprintf("%s is %s: every value of [%s] is a string, in quotes: %s = \"%v\"", l.literal(o, e), typeName(e), full, k, e)}
			}
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("%s is %s: want a table, [%s]", l.literal(at(full), v), typeName(v), full)
		}
		return l.checkTable(m, t, at, full+".")
	}
	return nil
}

// checkDuration checks a duration's value: a string with a unit, or a
// bare 0 (which is unambiguous). A TOML number has no unit, and the
// decoder would read it as nanoseconds.
func checkDuration(v any, key string, bad func(string, ...any) error) error {
	switch n := v.(type) {
	case string:
		if _, err := time.ParseDuration(n); err != nil {
			return bad("%q: %s", n, durationError(n))
		}
		return nil
	case int64:
		if n == 0 {
			return nil
		}
		return bad("%d has no unit, so it would mean %d nanoseconds: write it in quotes with its unit, %s = \"%ds\" (units: %s)", n, n, key, n, durationUnits)
	case float64:
		return bad("%v has no unit: write it in quotes with its unit, %s = \"%vs\" (units: %s)", n, key, n, durationUnits)
	}
	return bad("%s: want a duration in quotes with its unit, %s = \"30s\" (units: %s)", typeName(v), key, durationUnits)
}

// durationError explains why s is not a duration.
func durationError(s string) string {
	if isNumber(s) {
		return fmt.Sprintf("a duration needs a unit: %ss, %sms or %sm (units: %s)", s, s, s, durationUnits)
	}
	return fmt.Sprintf("want a duration such as 30s, 1m30s or 500ms (units: %s)", durationUnits)
}

// ParseSize reads a size in bytes with its unit, as --max-rss takes it:
// "512MiB", "1.5 GiB", "800M" (M, G, K and T count in 1024s, as
// systemd's MemoryMax=), "800MB" (MB, GB, KB and TB in 1000s), "4096B".
// "" and "0" are 0 (off). A number without a unit is refused, as a
// duration's is: 512 could mean bytes or MiB.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" || t == "0" {
		return 0, nil
	}
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		return 0, fmt.Errorf("%q: a size needs a unit: %sMiB, %sGiB or %sB (units: %s)", s, t, t, t, sizeUnitNames)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[strings.ToUpper(unit)]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q: want a number and a unit, such as 512MiB or 2GiB (units: %s)", s, sizeUnitNames)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %s is not a number: want one such as 512MiB or 1.5GiB", s, num)
	}
	n := f * float64(mult)
	if n >= 1<<63 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return uint64(n), nil
}

// sizeUnits are the units ParseSize takes, upper case; sizeUnitNames
// lists them for messages.
var sizeUnits = map[string]uint64{
	"B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

const sizeUnitNames = "B, KiB, MiB, GiB, TiB (or K, M, G, T), KB, MB, GB, TB"

// ParseDuration is time.ParseDuration with an error that says how to
// write a duration, for flags and the keys that hold one.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: %s", s, durationError(s))
	}
	return d, nil
}

// isNumber reports whether s is a plain decimal number ("30", "1.5").
func isNumber(s string) bool {
	s = strings.TrimPrefix(s, "-")
	digits, dot := 0, false
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

// unitOf says what a number of the key named full counts, for messages.
func unitOf(full string) string {
	switch full {
	case "handoff_max_state":
		return " (bytes)"
	case "rlimits.nofile":
		return " (descriptors)"
	case "start_limit_burst":
		return " (failures)"
	case "canary_max_error_rate":
		return " (a percentage: 5 is 5%)"
	}
	if o := listenerOption(full); o != nil && o.Unit != "" {
		return " (" + o.Unit + ")"
	}
	return ""
}

// typeName names the TOML type of a decoded value.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "a number"
	case float64:
		return "a decimal number"
	case bool:
		return "a boolean"
	case []any, []map[string]any:
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date or time"
	}
	return fmt.Sprintf("a %T", v)
}

// literal is how the value at o was written in the file (`key = 660`:
// "660"), or v formatted when the line does not say.
func (l *Loaded) literal(o Origin, v any) string {
	if lit := l.lines.value(o.Line); lit != "" {
		return lit
	}
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case map[string]any:
		return "[" + o.Key + "]" // a table, as its header writes it
	}
	return fmt.Sprint(v)
}

// octalMode suggests the string for a mode written as a number: 660 and
// 0o660 are "0660"; anything else gets the usual example.
func octalMode(lit string) string {
	digits := strings.TrimPrefix(lit, "0o")
	if digits == "" || len(digits) > 4 || strings.Trim(digits, "01234567") != "" {
		return "0660"
	}
	return strings.Repeat("0", 4-len(digits)) + digits
}
