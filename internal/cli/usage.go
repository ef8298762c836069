package cli

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/config"
)

// helpWidth is the width the flags of every --help are wrapped to, so
// that help reads on an 80-column terminal.
const helpWidth = 80

// versionLine is what `baton version` and `baton --version` print.
func versionLine() string {
	return fmt.Sprintf("baton version %s (%s, %s/%s)", Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// newVersionCmd is `baton version`: the same line as `baton --version`,
// since both are what people type.
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print baton's version",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintln(c.OutOrStdout(), versionLine())
			return nil
		},
	}
}

// newHelpCmd is `baton help [COMMAND]`, cobra's help but for a topic it
// does not know, which is a usage error (cobra's prints the help and
// exits 0).
func newHelpCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "Help about any command",
		Long:  "Help provides help for any command: baton help COMMAND, or baton COMMAND --help.",
		RunE: func(c *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 || target == nil {
				typed := strings.Join(args, " ")
				return usagef("help %q: no such command; %s", typed, commandChoices(root, lastWord(args)))
			}
			target.InitDefaultHelpFlag()
			target.InitDefaultVersionFlag()
			return target.Help()
		},
	}
}

// lastWord is the last of args, "" when there is none.
func lastWord(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[len(args)-1]
}

// unknownCommand is the root's Args: a word the root does not know as a
// command is a usage error that lists the commands, with the likely one
// first.
func unknownCommand(root *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return usagef("unknown command %q: %s", args[0], commandChoices(root, args[0]))
}

// commandChoices says which commands there are: "did you mean status?"
// when typed is close to one, then the list and where the help is.
func commandChoices(root *cobra.Command, typed string) string {
	var names []string
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	s := "the commands are " + strings.Join(names, ", ") + " (see baton --help)"
	if typed != "" {
		if sug := root.SuggestionsFor(typed); len(sug) > 0 {
			s = "did you mean " + strings.Join(sug, " or ") + "? " + s
		}
	}
	return s
}

// flagError turns pflag's errors into usage errors that name the flag,
// what is wrong with the value, and the fix: a near flag for an unknown
// one (or the command that has it), the form of the value for a bad one.
func flagError(c *cobra.Command, err error) error {
	help := fmt.Sprintf("see %s --help", c.CommandPath())
	var (
		notExist *pflag.NotExistError
		invalid  *pflag.InvalidValueError
		required *pflag.ValueRequiredError
		syntax   *pflag.InvalidSyntaxError
	)
	switch {
	case errors.As(err, &notExist):
		name := notExist.GetSpecifiedName()
		if sh := notExist.GetSpecifiedShortnames(); sh != "" {
			return usagef("unknown flag: -%s (in -%s): %s has no such short flag; %s", name, sh, c.CommandPath(), help)
		}
		return usagef("unknown flag: --%s: %s", name, flagHint(c, name, help))
	case errors.As(err, &invalid):
		return usagef("%s (%s)", valueError(invalid.GetFlag(), invalid.GetValue(), invalid.Unwrap()), help)
	case errors.As(err, &required):
		f := required.GetFlag()
		return usagef("--%s needs a value: --%s %s (%s)", f.Name, f.Name, valueExample(f), help)
	case errors.As(err, &syntax):
		return usagef("bad flag syntax %s: write a flag as --name or -n (%s)", syntax.GetSpecifiedFlag(), help)
	}
	return usagef("%w (%s)", err, help)
}

// flagHint says what the user may have meant by --name, which c does not
// have: a flag of c with a near name, or another command that has it.
func flagHint(c *cobra.Command, name, help string) string {
	var names []string
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	if near := config.Near(name, names); len(near) > 0 {
		sort.Strings(near)
		return fmt.Sprintf("%s has no such flag; did you mean --%s? (%s)", c.CommandPath(), strings.Join(near, " or --"), help)
	}
	var others []string
	for _, o := range c.Root().Commands() {
		if o != c && o.IsAvailableCommand() && o.Flags().Lookup(name) != nil {
			others = append(others, o.CommandPath())
		}
	}
	if len(others) > 0 {
		return fmt.Sprintf("%s has no such flag; it is a flag of %s (%s)", c.CommandPath(), strings.Join(others, ", "), help)
	}
	return fmt.Sprintf("%s has no such flag (%s)", c.CommandPath(), help)
}

// valueError says why value is not one flag f takes, and how to write one.
func valueError(f *pflag.Flag, value string, cause error) string {
	name := "--" + f.Name
	switch f.Value.Type() {
	case "int", "int64", "int32", "uint", "uint64", "uint32":
		return fmt.Sprintf("%s %q: want a whole number, for example %s %s", name, value, name, valueExample(f))
	case "bool":
		return fmt.Sprintf("%s=%q: want true or false (%s alone means true)", name, value, name)
	case "duration":
		if _, err := config.ParseDuration(value); err != nil {
			return fmt.Sprintf("%s %v", name, err)
		}
	}
	// The flag types of baton's own (durations, KEY=VALUE) say what they
	// want, after the value in quotes.
	if msg := cause.Error(); strings.HasPrefix(msg, `"`) {
		return name + " " + msg
	}
	return fmt.Sprintf("%s %q: %v", name, value, cause)
}

// valueExample is a value flag f takes, for messages: its default when
// it has one worth showing, else the kind of value.
func valueExample(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "int", "int64", "int32", "uint", "uint64", "uint32":
		if f.DefValue != "" && f.DefValue != "0" {
			return f.DefValue
		}
		return "4"
	case "duration":
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" {
			return f.DefValue
		}
		return "30s"
	case "string", "stringArray":
		return strings.ToUpper(f.Name)
	}
	return f.Value.Type()
}

// setHelpWidth makes every command's help list its flags wrapped to
// helpWidth columns instead of one line each.
func setHelpWidth(root *cobra.Command) {
	cobra.AddTemplateFunc("wrappedFlags", func(fs *pflag.FlagSet) string {
		return strings.TrimRight(fs.FlagUsagesWrapped(helpWidth), " \n")
	})
	t := root.UsageTemplate()
	t = strings.ReplaceAll(t, ".LocalFlags.FlagUsages | trimTrailingWhitespaces", "wrappedFlags .LocalFlags")
	t = strings.ReplaceAll(t, ".InheritedFlags.FlagUsages | trimTrailingWhitespaces", "wrappedFlags .InheritedFlags")
	root.SetUsageTemplate(t)
}
