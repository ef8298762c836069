// Package manpage writes manual pages (roff, man(7)) for a cobra command
// tree: one page per command, named after its path (baton-run(1) for
// `baton run`), from the same text its --help shows, so the pages never
// drift from the program.
//
// Text is escaped for roff: a backslash is \e, every '-' is \- (so that
// options render as ASCII hyphen-minus and can be copied from the page),
// and a line that would start with '.' or '\” starts with \& instead.
// In a command's Long help, blank lines separate paragraphs and lines
// indented by two spaces or more are kept as they are (examples, tables).
package manpage

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Header is what every page of a tree has in its title line (.TH).
type Header struct {
	// Section is the manual section: "1" for commands.
	Section string
	// Date is the date of the source the pages describe (a release's,
	// or SOURCE_DATE_EPOCH for a reproducible build).
	Date time.Time
	// Source is the program and its version: "baton 1.2.0".
	Source string
	// Manual is the title of the manual: "baton manual".
	Manual string
}

// Section is an extra section of a page, after the generated ones and
// before SEE ALSO: EXIT STATUS, ENVIRONMENT, FILES...
type Section struct {
	// Title is the section's heading, in capitals by convention.
	Title string
	// Text is its body, written as a command's Long help is
	// (paragraphs, and indented lines kept as they are).
	Text string
}

// Options adds to the generated pages.
type Options struct {
	// Extra holds extra sections by command path ("baton", "baton
	// run").
	Extra map[string][]Section
	// SeeAlso lists pages outside the tree each page refers to
	// ("systemd.service(5)"), by command path; "" applies to every
	// page.
	SeeAlso map[string][]string
}

// Name is the page name of cmd: its command path with '-' for spaces
// ("baton-run").
func Name(cmd *cobra.Command) string {
	return strings.ReplaceAll(cmd.CommandPath(), " ", "-")
}

// WriteTree writes a page for root and every command below it that a
// user can run (not hidden, not cobra's help) into dir, as NAME.SECTION,
// and returns the files it wrote.
func WriteTree(root *cobra.Command, h Header, o Options, dir string) ([]string, error) {
	var files []string
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		var b bytes.Buffer
		if err := Write(&b, c, h, o); err != nil {
			return err
		}
		path := filepath.Join(dir, Name(c)+"."+h.Section)
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			return fmt.Errorf("writing the manual page of %s: %w", c.CommandPath(), err)
		}
		files = append(files, path)
		for _, sub := range commands(c) {
			if err := walk(sub); err != nil {
				return err
			}
		}
		return nil
	}
	return files, walk(root)
}

// commands are the subcommands of c that get a page.
func commands(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && sub.Name() != "help" {
			out = append(out, sub)
		}
	}
	return out
}

// Write writes the page of cmd to w.
func Write(w io.Writer, cmd *cobra.Command, h Header, o Options) error {
	cmd.InitDefaultHelpFlag()
	cmd.InitDefaultVersionFlag()
	var b bytes.Buffer
	name := Name(cmd)
	fmt.Fprintf(&b, ".\\\" Generated from the command's help by baton's internal/manpage; do not edit.\n")
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", quote(strings.ToUpper(name)), quote(h.Section), quote(h.Date.UTC().Format("2006-01-02")), quote(h.Source), quote(h.Manual))

	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", escape(name), escape(strings.TrimSuffix(cmd.Short, ".")))

	b.WriteString(".SH SYNOPSIS\n")
	path, rest := cmd.CommandPath(), strings.TrimPrefix(cmd.UseLine(), cmd.CommandPath())
	if cmd.HasAvailableSubCommands() && !cmd.Runnable() {
		rest = " COMMAND" + rest
	}
	fmt.Fprintf(&b, "\\fB%s\\fR%s\n", escape(path), escape(rest))

	b.WriteString(".SH DESCRIPTION\n")
	text := cmd.Long
	if text == "" {
		text = cmd.Short
	}
	writeText(&b, text)

	if subs := commands(cmd); len(subs) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, sub := range subs {
			fmt.Fprintf(&b, ".TP\n\\fB%s\\fR(%s)\n%s\n", escape(Name(sub)), h.Section, escape(sub.Short))
		}
	}
	if fs := cmd.NonInheritedFlags(); fs.HasAvailableFlags() {
		b.WriteString(".SH OPTIONS\n")
		writeFlags(&b, fs)
	}
	if fs := cmd.InheritedFlags(); fs.HasAvailableFlags() {
		b.WriteString(".SH \"OPTIONS INHERITED FROM PARENT COMMANDS\"\n")
		writeFlags(&b, fs)
	}
	if cmd.Example != "" {
		b.WriteString(".SH EXAMPLES\n")
		writeText(&b, cmd.Example)
	}
	for _, s := range o.Extra[cmd.CommandPath()] {
		fmt.Fprintf(&b, ".SH %s\n", quote(s.Title))
		writeText(&b, s.Text)
	}

	var see []string
	if p := cmd.Parent(); p != nil {
		see = append(see, Name(p)+"("+h.Section+")")
	}
	for _, sub := range commands(cmd) {
		see = append(see, Name(sub)+"("+h.Section+")")
	}
	see = append(see, o.SeeAlso[cmd.CommandPath()]...)
	see = append(see, o.SeeAlso[""]...)
	if len(see) > 0 {
		b.WriteString(".SH \"SEE ALSO\"\n")
		for i, s := range see {
			page, sect, _ := strings.Cut(s, "(")
			sep := ","
			if i == len(see)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, "\\fB%s\\fR(%s%s\n", escape(page), sect, sep)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// writeFlags writes a flag set as a tagged list.
func writeFlags(b *bytes.Buffer, fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		b.WriteString(".TP\n")
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			fmt.Fprintf(b, "\\fB\\-%s\\fR, ", escape(f.Shorthand))
		}
		fmt.Fprintf(b, "\\fB\\-\\-%s\\fR", escape(f.Name))
		varname, usage := pflag.UnquoteUsage(f)
		if varname != "" {
			if f.NoOptDefVal != "" {
				fmt.Fprintf(b, "[=\\fI%s\\fR]", escape(varname))
			} else {
				fmt.Fprintf(b, " \\fI%s\\fR", escape(varname))
			}
		}
		b.WriteString("\n")
		if def := defaultOf(f); def != "" {
			usage += " (default " + def + ")"
		}
		writeText(b, usage)
	})
}

// defaultOf is a flag's default as --help shows it, "" when it has
// none worth saying.
func defaultOf(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "bool":
		if f.DefValue == "false" {
			return ""
		}
	case "string":
		if f.DefValue == "" {
			return ""
		}
		return fmt.Sprintf("%q", f.DefValue)
	case "stringArray", "stringSlice", "intSlice":
		if f.DefValue == "[]" {
			return ""
		}
	case "int", "uint", "int64", "uint64", "float64":
		if f.DefValue == "0" {
			return ""
		}
	case "duration":
		if f.DefValue == "0s" {
			return ""
		}
	}
	return f.DefValue
}

// writeText writes help text: blank lines end paragraphs; lines indented
// by two spaces or more are written as they are (no filling), the rest
// filled.
func writeText(b *bytes.Buffer, text string) {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	literal, first := false, true
	for _, line := range lines {
		trimmed := strings.TrimRight(line, " \t")
		switch {
		case trimmed == "":
			if literal {
				b.WriteString(".fi\n.RE\n")
				literal = false
			}
			if !first {
				b.WriteString(".PP\n")
				first = true
			}
			continue
		case strings.HasPrefix(trimmed, "  "):
			if !literal {
				b.WriteString(".RS 4\n.nf\n")
				literal = true
			}
			b.WriteString(escapeLine(dedent(trimmed)) + "\n")
		default:
			if literal {
				b.WriteString(".fi\n.RE\n")
				literal = false
			}
			b.WriteString(escapeLine(trimmed) + "\n")
		}
		first = false
	}
	if literal {
		b.WriteString(".fi\n.RE\n")
	}
}

// dedent takes the first two spaces off an indented line: the block is
// indented by .RS already.
func dedent(line string) string { return line[2:] }

// escapeLine is escape, and a line that roff would read as a request
// made text.
func escapeLine(s string) string {
	s = escape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = "\\&" + s
	}
	return s
}

// escape makes s literal roff text.
func escape(s string) string {
	r := strings.NewReplacer(`\`, `\e`, "-", `\-`)
	return r.Replace(s)
}

// quote makes s one argument of a request (.TH, .SH).
func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}

// Pages lists the page names WriteTree writes for root, in order.
func Pages(root *cobra.Command) []string {
	var out []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		out = append(out, Name(c))
		for _, sub := range commands(c) {
			walk(sub)
		}
	}
	walk(root)
	return slices.Clip(out)
}
