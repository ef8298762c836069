package listener

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// An Option is a setting of a listener beyond its address: a key of the
// query of an address (tcp://:80?backlog=64) and, by the same name, of a
// [[listener]] table in the config file (backlog = 64).
//
// The list of options (Options) is the one place that knows them: Parse
// reads the query with it, Spec.URL writes it, InPlace compares with it,
// the config file's [[listener]] keys, their types and the help of
// `baton run` and docs/config.md come from it. Adding an option is an
// entry in that list, the code that applies it to the socket, and the
// docs (go test ./internal/listener -run TestOptionsDoc -update writes
// their table).
type Option struct {
	// Key is the option's name in a query and in a [[listener]] table.
	Key string
	// Type is the type of the value in a [[listener]] table.
	Type ValueType
	// Unit is what a number counts ("connections"), for messages; "" for
	// other types.
	Unit string
	// Value is how the help writes the value: "N", "true|false".
	Value string
	// Help says what the option does and what it takes, for the help of
	// `baton run` and docs/config.md.
	Help string
	// InPlace is true when a reload can change the option on a live
	// socket (Group.Adjust applies it), so a listener that changes only
	// such options keeps its socket.
	InPlace bool

	// applies reports whether the option may be given to the listener of
	// s, whose scheme and address are set.
	applies func(s *Spec) bool
	// parse checks value and sets it in s. Its error says what is wrong
	// with value and what is allowed, without naming the option.
	parse func(s *Spec, value string) error
	// format is the option's value in s as Spec.URL writes it, "" when s
	// leaves it to the default.
	format func(s Spec) string
}

// ValueType is the type an option's value has in a [[listener]] table of
// the config file (in a query every value is text). A table's value is
// checked against it before anything else, and a number 0 or an empty
// string there is the same as no value.
type ValueType int

// Value types of options.
const (
	// ValueText is a string in quotes: owner = "www-data".
	ValueText ValueType = iota
	// ValueNumber is a whole number without quotes: backlog = 1024.
	ValueNumber
	// ValueBool is true or false without quotes: v6only = true.
	ValueBool
	// ValueOctal is permission bits, a string of octal digits:
	// mode = "0660". A number (660, 0o660) is refused with the string
	// to write.
	ValueOctal
)

// options is every option, in the order a [[listener]] table's keys are
// checked and written into its address.
var options = []*Option{
	{
		Key:     "backlog",
		Type:    ValueNumber,
		Unit:    "connections",
		Value:   "N",
		Help:    "the listen(2) backlog, 1 to 1048576: how many connections may wait to be accepted (default and upper bound: net.core.somaxconn)",
		InPlace: true,
		applies: func(s *Spec) bool { return s.Kind == Stream },
		parse: func(s *Spec, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxBacklog {
				return fmt.Errorf("%q: want a number from 1 to %d", v, maxBacklog)
			}
			s.Backlog = n
			return nil
		},
		format: func(s Spec) string {
			if s.Backlog == 0 {
				return ""
			}
			return strconv.Itoa(s.Backlog)
		},
	},
	{
		Key:     "v6only",
		Type:    ValueBool,
		Value:   "true|false",
		Help:    "IPV6_V6ONLY: an IPv6 socket takes IPv6 only (true) or IPv4 too (false); the default is true for tcp6 and udp6, false for tcp and udp",
		applies: func(s *Spec) bool { return s.IsInet() && s.family != "inet4" },
		parse: func(s *Spec, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q: want true or false", v)
			}
			s.V6Only = &b
			return nil
		},
		format: func(s Spec) string {
			if s.V6Only == nil {
				return ""
			}
			return strconv.FormatBool(*s.V6Only)
		},
	},
	{
		Key:     "mode",
		Type:    ValueOctal,
		Value:   "0660",
		Help:    "the socket file's permission bits, in octal (default: 0777 less baton's umask)",
		InPlace: true,
		applies: isSocketFile,
		parse: func(s *Spec, v string) error {
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil || m > 0o777 || m == 0 {
				return fmt.Errorf("%q: want octal permission bits such as 0660", v)
			}
			s.Mode = uint32(m)
			return nil
		},
		format: func(s Spec) string {
			if s.Mode == 0 {
				return ""
			}
			return fmt.Sprintf("%04o", s.Mode)
		},
	},
	{
		Key:     "owner",
		Type:    ValueText,
		Value:   "USER[:GROUP]",
		Help:    "the socket file's owner and group, names or numbers: user, user:group or :group (baton as root; default: baton's)",
		InPlace: true,
		applies: isSocketFile,
		parse: func(s *Spec, v string) error {
			uid, gid, err := lookupOwner(v)
			if err != nil {
				return err
			}
			s.Owner, s.UID, s.GID = v, uid, gid
			return nil
		},
		format: func(s Spec) string { return s.Owner },
	},
	{
		Key:     "balance",
		Type:    ValueText,
		Value:   Shared + "|" + Reuseport,
		Help:    "shared: one socket for every worker; reuseport: one SO_REUSEPORT socket per slot, held for the slot's life (docs/balance.md; default: --balance)",
		applies: func(s *Spec) bool { return s.IsInet() },
		parse: func(s *Spec, v string) error {
			if v != Shared && v != Reuseport {
				return fmt.Errorf("%q: want %s or %s", v, Shared, Reuseport)
			}
			s.Balance = v
			return nil
		},
		format: func(s Spec) string { return s.Balance },
	},
	{
		Key:     "flows",
		Type:    ValueText,
		Value:   FlowsAuto + "|" + FlowsOn + "|" + FlowsQUIC + "|" + FlowsOff,
		Help:    "keep each UDP peer on the worker that first got its datagrams, across reloads, with an eBPF program baton owns (docs/udp.md): auto does where baton may (CAP_BPF and CAP_NET_ADMIN, or root; Linux 4.19+) and says once why not elsewhere, on refuses to start without it, quic is on and also keeps a QUIC connection on its worker when the client's address changes, by the cookie its connection IDs start with (BATON_QUIC_COOKIE; quicid.FromEnv for quic-go), off never steers (default: auto); a reload may switch between auto and on, not to or from quic or off, without restarting baton",
		applies: func(s *Spec) bool { return s.Kind == Datagram && s.IsInet() },
		parse: func(s *Spec, v string) error {
			if v != FlowsAuto && v != FlowsOn && v != FlowsQUIC && v != FlowsOff {
				return fmt.Errorf("%q: want %s, %s, %s or %s", v, FlowsAuto, FlowsOn, FlowsQUIC, FlowsOff)
			}
			s.Flows = v
			return nil
		},
		format: func(s Spec) string { return s.Flows },
	},
}

// maxBacklog is the largest backlog an option may ask for; the kernel
// caps it at net.core.somaxconn in any case.
const maxBacklog = 1 << 20

// isSocketFile reports whether s names a unix socket with a file (not an
// abstract name): what mode and owner apply to.
func isSocketFile(s *Spec) bool { return s.IsUnix() && !s.Abstract() }

// Options lists every listener option, in the order of the config file's
// [[listener]] keys. The list is shared: do not change it.
func Options() []*Option { return options }

// LookupOption is the option named key, nil when there is none.
func LookupOption(key string) *Option {
	for _, o := range options {
		if o.Key == key {
			return o
		}
	}
	return nil
}

// Check reports whether value is one the option takes, with the error
// Parse would give for it (without the option's name): for a setting
// that gives every listener a default of this option, such as
// --balance. It does not say whether the option applies to a scheme.
func (o *Option) Check(value string) error {
	var s Spec
	return o.parse(&s, value)
}

// Schemes lists the schemes the option applies to (with a path, for
// unix schemes), in the order of their names.
func (o *Option) Schemes() []string {
	var out []string
	for _, name := range schemeNames() {
		if s := probe(name, "/probe.sock"); o.applies(&s) {
			out = append(out, name)
		}
	}
	return out
}

// scope says which listeners the option applies to, for the help: its
// schemes, and whether a unix socket needs a path (not an abstract
// name).
func (o *Option) scope() string {
	list := strings.Join(o.Schemes(), ", ")
	for _, name := range o.Schemes() {
		if s := probe(name, "@probe"); s.IsUnix() && !o.applies(&s) {
			return list + " with a path"
		}
	}
	return list
}

// probe is a spec of scheme with addr, its address if unix, for asking
// an option whether it applies.
func probe(scheme, addr string) Spec {
	info := schemes[scheme]
	s := Spec{Scheme: scheme, Kind: info.kind, family: info.family, Name: scheme}
	if s.IsUnix() {
		s.Path = addr
	}
	return s
}

// OptionError is a problem with one option of a listener specification:
// unknown, not for this kind of listener, given twice, or a value it
// does not take. Parse returns it inside a *SpecError; find it with
// errors.As to learn which option is at fault (the config file points at
// that key of its [[listener]] table).
type OptionError struct {
	// Key is the option as written, known or not.
	Key string
	// Value is the value given, when there is one.
	Value string
	// Msg is the whole message: it names the option, says what is wrong
	// and what is allowed.
	Msg string
}

// Error is Msg.
func (e *OptionError) Error() string { return e.Msg }

// parseOptions reads the query of a specification into s, whose scheme
// and address are set: options in the order of their keys, each known,
// given once, applying to s and with a value it takes.
func (s *Spec) parseOptions(values map[string][]string) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vs := values[k]
		o := LookupOption(k)
		switch {
		case o == nil:
			return &OptionError{Key: k, Value: vs[0], Msg: fmt.Sprintf("unknown option %q; options are %s", k, strings.Join(optionNames(), ", "))}
		case !o.applies(s):
			return &OptionError{Key: k, Value: vs[0], Msg: fmt.Sprintf("option %q does not apply to %s listeners", k, s.describe())}
		case len(vs) != 1:
			return &OptionError{Key: k, Msg: fmt.Sprintf("option %q given %d times; give it once", k, len(vs))}
		}
		if err := o.parse(s, vs[0]); err != nil {
			return &OptionError{Key: k, Value: vs[0], Msg: fmt.Sprintf("option %s: %v", k, err)}
		}
	}
	return nil
}

// optionNames lists the options' keys in alphabetical order.
func optionNames() []string {
	names := make([]string, 0, len(options))
	for _, o := range options {
		names = append(names, o.Key)
	}
	slices.Sort(names)
	return names
}

// OptionsHelp describes every option for the help of `baton run`: a
// line on how options are written, then one entry an option, wrapped to
// 78 columns.
func OptionsHelp() string {
	var b strings.Builder
	b.WriteString("Options follow the address in query form, ADDRESS?KEY=VALUE&KEY=VALUE (in a\n")
	b.WriteString("[[listener]] table of --config, KEY = VALUE):\n")
	const indent = "                      "
	for _, o := range options {
		head := "  " + o.Key + "=" + o.Value
		text := o.scope() + ": " + o.Help
		if o.InPlace {
			text += "; a reload changes it in place"
		}
		lines := wrap(text, 78-len(indent))
		if len(head) < len(indent)-1 {
			b.WriteString(head + indent[len(head):] + lines[0] + "\n")
			lines = lines[1:]
		} else {
			b.WriteString(head + "\n")
		}
		for _, l := range lines {
			b.WriteString(indent + l + "\n")
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// wrap breaks text into lines of at most width bytes at spaces (a word
// longer than width gets a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= width:
			line += " " + w
		default:
			lines = append(lines, line)
			line = w
		}
	}
	return append(lines, line)
}

// OptionsMarkdown is the table of options for docs/config.md, from the
// same list as OptionsHelp.
func OptionsMarkdown() string {
	var b strings.Builder
	b.WriteString("| key | value | in a `[[listener]]` table | schemes | a reload changes it in place | meaning |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, o := range options {
		inPlace := "no: a new socket"
		if o.InPlace {
			inPlace = "yes"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s | %s |\n", o.Key, cell(o.Value), o.Type, o.scope(), inPlace, cell(o.Help))
	}
	return b.String()
}

// cell escapes what would end a cell of a markdown table.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// String says how a value of the type is written in a [[listener]]
// table.
func (t ValueType) String() string {
	switch t {
	case ValueText:
		return "a string"
	case ValueNumber:
		return "a number"
	case ValueBool:
		return "true or false"
	case ValueOctal:
		return "a string of octal digits"
	}
	return fmt.Sprintf("ValueType(%d)", int(t))
}
