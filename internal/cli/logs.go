package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-dev/baton/internal/api"
)

func newLogsCmd() *cobra.Command {
	var cf controlFlags
	var follow, asJSON bool
	var slot, generation, lines int
	c := &cobra.Command{
		Use:   "logs",
		Short: "Show the workers' recent output and baton's own log",
		Long: `Show what baton's workers printed (stdout and stderr, each line with its
slot, generation, pid and the time baton read it) and baton's own log
records, from a ring buffer inside the running baton: the output of a worker
that crashed before anyone looked is still there after its exit.

The buffer holds 1 MiB: each line costs its text plus 112 bytes of
bookkeeping, and the oldest lines go first. A line longer than 4 KiB is cut
there and marked [truncated]. Worker output reaches the buffer when baton
reads it (log_prefix, on by default); with --log-prefix=false workers write
to baton's stdout and stderr directly, and the buffer has baton's log only.
The buffer lives in baton's memory: it starts empty when baton starts; an
upgrade hands its lines to the new baton.

--follow keeps printing new lines as they come, until interrupted. A
follower that reads slower than the workers print does not slow baton down:
its queue in baton (256 KiB) drops lines, and the place where they were is
marked "N lines dropped". --slot and --generation select the workers' lines
of that slot or generation (and hide baton's log); --lines prints only the
last N lines held (with --follow, --lines 0 prints only new lines). --json
prints each entry as the control API sends it (docs/logs.md).`,
		Example: `  baton logs
  baton logs --follow --slot 0
  baton logs --generation 3 --lines 50
  baton logs --json | jq -r 'select(.line.stream == "stderr") | .line.text'`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			p := api.LogsParams{Follow: follow}
			if c.Flags().Changed("slot") {
				p.Slot = &slot
			}
			if c.Flags().Changed("generation") {
				p.Generation = &generation
			}
			if c.Flags().Changed("lines") {
				p.Lines = &lines
			}
			if err := p.Check(); err != nil {
				return &usageError{err: err}
			}
			client, err := cf.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !follow {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Minute)
				defer cancel()
			}
			print := printEntry
			if asJSON {
				print = printEntryJSON
			}
			out := c.OutOrStdout()
			err = client.Logs(ctx, p, func(e api.LogEntry) error { return print(out, e) })
			if follow && errors.Is(err, context.Canceled) {
				return nil // interrupted: the way a follow ends
			}
			return err
		},
	}
	cf.register(c)
	fl := c.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new lines as they come")
	fl.IntVar(&slot, "slot", 0, "only the lines of the workers of this slot")
	fl.IntVar(&generation, "generation", 0, "only the lines of the workers of this generation")
	fl.IntVarP(&lines, "lines", "n", 0, "only the last N lines held (default: all)")
	fl.BoolVar(&asJSON, "json", false, "print each entry as JSON, one a line")
	return c
}

// printEntry prints a logs entry as text: a line with its time and
// origin, or where lines were dropped. The end says nothing.
func printEntry(w io.Writer, e api.LogEntry) error {
	switch {
	case e.Line != nil:
		l := e.Line
		origin := "baton"
		if l.Slot != nil {
			origin = fmt.Sprintf("g%d s%d %d %s", l.Generation, *l.Slot, l.PID, l.Stream)
		}
		text := l.Text
		if l.Truncated {
			text += " [truncated]"
		}
		_, err := fmt.Fprintf(w, "%s [%s] %s\n", l.Time.Local().Format("2006-01-02 15:04:05.000"), origin, text)
		return err
	case e.Dropped > 0:
		_, err := fmt.Fprintf(w, "--- %d lines dropped here: this reader did not keep up (its queue in baton was full) ---\n", e.Dropped)
		return err
	}
	return nil
}

// printEntryJSON prints a logs entry as the JSON baton sent.
func printEntryJSON(w io.Writer, e api.LogEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
