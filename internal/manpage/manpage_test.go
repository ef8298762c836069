package manpage

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

func tree() *cobra.Command {
	root := &cobra.Command{Use: "tool", Short: "Do things.", Long: "A tool.\n\n  tool go --fast\n.starts with a dot\nback\\slash"}
	goCmd := &cobra.Command{Use: "go [flags] -- COMMAND", Short: "Go somewhere", Example: "  tool go --fast -- ls", Run: func(*cobra.Command, []string) {}}
	goCmd.Flags().BoolP("fast", "f", false, "go fast")
	goCmd.Flags().String("to", "home", "where to `PLACE`")
	goCmd.Flags().Int("hidden", 0, "secret")
	goCmd.Flags().MarkHidden("hidden")
	root.PersistentFlags().String("config", "", "the config file")
	root.AddCommand(goCmd, &cobra.Command{Use: "secret", Hidden: true, Run: func(*cobra.Command, []string) {}})
	return root
}

var header = Header{Section: "1", Date: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), Source: "tool 1.0", Manual: "tool manual"}

func TestWriteTree(t *testing.T) {
	dir := t.TempDir()
	files, err := WriteTree(tree(), header, Options{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	if diff := cmp.Diff([]string{"tool.1", "tool-go.1"}, names); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"tool", "tool-go"}, Pages(tree())); diff != "" {
		t.Errorf("Pages (-want +got):\n%s", diff)
	}
	b, err := os.ReadFile(filepath.Join(dir, "tool-go.1"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{
		`.TH "TOOL\-GO" "1" "2026\-01\-02" "tool 1.0" "tool manual"`,
		".SH NAME\ntool\\-go \\- Go somewhere\n",
		".SH SYNOPSIS\n\\fBtool go\\fR [flags] \\-\\- COMMAND\n",
		"\\fB\\-f\\fR, \\fB\\-\\-fast\\fR\ngo fast\n",
		"\\fB\\-\\-to\\fR \\fIPLACE\\fR\nwhere to PLACE (default \"home\")\n",
		".SH \"OPTIONS INHERITED FROM PARENT COMMANDS\"\n.TP\n\\fB\\-\\-config\\fR \\fIstring\\fR\n",
		".SH EXAMPLES\n.RS 4\n.nf\ntool go \\-\\-fast \\-\\- ls\n.fi\n.RE\n",
		".SH \"SEE ALSO\"\n\\fBtool\\fR(1)\n",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("tool-go.1 lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "hidden") || strings.Contains(page, "secret") {
		t.Errorf("a hidden flag or command is on the page:\n%s", page)
	}
}

func TestWriteEscapes(t *testing.T) {
	var b bytes.Buffer
	o := Options{Extra: map[string][]Section{"tool": {{Title: "FILES", Text: "/etc/tool.conf"}}}, SeeAlso: map[string][]string{"": {"other(5)"}}}
	if err := Write(&b, tree(), header, o); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"A tool.\n.PP\n.RS 4\n.nf\ntool go \\-\\-fast\n.fi\n.RE\n\\&.starts with a dot\nback\\eslash\n",
		".SH COMMANDS\n.TP\n\\fBtool\\-go\\fR(1)\nGo somewhere\n",
		".SH \"FILES\"\n/etc/tool.conf\n",
		".SH \"SEE ALSO\"\n\\fBtool\\-go\\fR(1),\n\\fBother\\fR(5)\n",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
}
