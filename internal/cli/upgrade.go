package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/supervisor"
)

func newUpgradeCmd() *cobra.Command {
	var cf controlFlags
	var binary string
	var keep bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "upgrade",
		Short: "Re-execute baton itself as a new binary, keeping its pid, sockets and workers",
		Long: `Replace the running baton with a new binary without closing a socket.

First a pre-flight: the new binary runs in a check mode with a copy of
baton's state and of every descriptor, and must exit 0. Only then does baton
execve the new binary in place: the pid stays (systemd and other
supervisors keep tracking it), the listening sockets stay open, and the
workers stay its children. The new baton adopts them and starts a new
generation (--keep-workers swaps only baton). If the pre-flight fails, the
running baton is unchanged and upgrade says why.

SIGUSR2 to baton upgrades to its own binary (the file at its path now).`,
		Example: "  baton upgrade\n  baton upgrade --binary /usr/local/bin/baton.new --keep-workers",
		Args:    noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path, err := cf.socketPath()
			if err != nil {
				return err
			}
			if binary != "" {
				if binary, err = filepath.Abs(binary); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			before, err := fetchStatus(ctx, path)
			if err != nil {
				return err
			}
			raw, err := control.Call(ctx, path, "upgrade", map[string]any{"binary": binary, "keep_workers": keep})
			if err != nil {
				return err
			}
			var r supervisor.UpgradeReply
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("reading the upgrade reply: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "pre-flight of %s passed; baton (pid %d) is re-executing itself\n", r.Binary, r.PID)
			// The new baton answers on the same socket once it has taken
			// over; with a new generation, once that one serves.
			for {
				st, err := fetchStatus(ctx, path)
				switch {
				case err == nil && st.Upgrades > r.Upgrades && (keep || st.Generation > before.Generation && st.Pending == 0):
					if st.PID != r.PID {
						return fmt.Errorf("baton answers with pid %d, not %d: the upgrade did not keep the pid", st.PID, r.PID)
					}
					if keep {
						fmt.Fprintf(c.OutOrStdout(), "upgraded: baton pid %d runs %s; generation %d keeps serving\n", st.PID, r.Binary, st.Generation)
					} else {
						fmt.Fprintf(c.OutOrStdout(), "upgraded: baton pid %d runs %s; generation %d serving\n", st.PID, r.Binary, st.Generation)
					}
					return nil
				case err == nil && st.UpgradeError != "" && st.Upgrades == r.Upgrades:
					return fmt.Errorf("upgrade failed: %s", st.UpgradeError)
				case err == nil && st.Upgrades > r.Upgrades && st.Reloads.Last != nil && !st.Reloads.Last.OK && st.Reloads.Last.Reason == "upgrade":
					return fmt.Errorf("baton upgraded itself (pid %d) but its new generation failed: %s", st.PID, st.Reloads.Last.Error)
				case ctx.Err() != nil:
					return fmt.Errorf("the upgraded baton did not report back within %s; see its log and baton status", timeout)
				}
				time.Sleep(50 * time.Millisecond)
			}
		},
	}
	cf.register(c)
	c.Flags().StringVar(&binary, "binary", "", "the new baton binary (default: the file at the running baton's path)")
	c.Flags().BoolVar(&keep, "keep-workers", false, "swap only baton: keep the running workers instead of starting a new generation")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up waiting after this long")
	return c
}

func fetchStatus(ctx context.Context, path string) (supervisor.Status, error) {
	var st supervisor.Status
	raw, err := control.Call(ctx, path, "status", nil)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(raw, &st)
}
