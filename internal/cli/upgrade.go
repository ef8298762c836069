package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/upgrade"
)

// upgradeSilence is how long `baton upgrade` waits for baton to answer
// again once the pre-flight has passed: the execve and the new baton's
// start take a second or two, and a new baton that has not answered in
// this time is stuck.
const upgradeSilence = 20 * time.Second

func newUpgradeCmd() *cobra.Command {
	var cf controlFlags
	var binary string
	var keep bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "upgrade",
		Short: "Re-execute baton itself as a new binary, keeping its pid, sockets and workers",
		Long: `Replace the running baton with a new binary without closing a socket.

baton opens the new binary once and runs that very file twice, so that a
file put at the path in between is not what runs. It must be a regular ELF
executable (not a script); when baton runs as root, it and every directory
above it must be owned by root or baton's user and not writable by group or
others.

First a pre-flight: the new binary runs in a check mode with a copy of
baton's state and of every descriptor, and must answer a handshake, on a
descriptor of its own, with the nonce in that state, the state version it
read and what it checked (listeners, workers, descriptors); it also loads
the configuration. A program that is not a baton, or a baton that cannot
read this state version, cannot answer: the upgrade is refused, and the
running baton is unchanged. Reloads asked for from then on wait until the
upgrade is over (they run in the new baton); an upgrade asked for during a
reload waits for that reload first.

Then baton execve's the new binary in place: the pid stays (systemd and
other supervisors keep tracking it), the listening sockets stay open, and
the workers stay its children. The new baton adopts them and starts a new
generation (--keep-workers swaps only baton).

upgrade prints a line for each step that happened: the pre-flight passed,
then baton upgraded, or the upgrade failed and why. It exits 1 when the
upgrade was refused or failed, and when baton stopped answering (20
seconds without an answer, or at once when its process is gone): then it
says whether the old baton had already re-executed itself (then the old
one is gone).

Only root and baton's own user may upgrade it (members of control_group
may not). SIGUSR2 to baton upgrades to its own binary (the file at its path
now).`,
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
			client := &api.Client{Path: path}
			r, err := client.Upgrade(ctx, api.UpgradeParams{Binary: binary, KeepWorkers: keep})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "pre-flight of %s passed: %s\n", r.Binary, r.Preflight)
			return waitUpgraded(ctx, c.OutOrStdout(), client, &r, keep, timeout)
		},
	}
	cf.register(c)
	c.Flags().StringVar(&binary, "binary", "", "the new baton binary (default: the file at the running baton's path)")
	c.Flags().BoolVar(&keep, "keep-workers", false, "swap only baton: keep the running workers instead of starting a new generation")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up waiting for the new generation after this long (the upgrade goes on)")
	return c
}

// waitUpgraded watches baton's status after a pre-flight passed until
// the upgrade is done (with a new generation serving, unless keep) or has
// failed, and says which. It gives up after upgradeSilence without an
// answer, or at once when baton's process is gone, saying whether the
// execve had happened.
func waitUpgraded(ctx context.Context, out io.Writer, client *api.Client, r *api.UpgradeReply, keep bool, timeout time.Duration) error {
	path := client.Path
	replied := time.Now()
	lastAnswer := replied
	execd := false    // seen re-executed (the nonce in its environment)
	upgraded := false // the new baton has answered
	var lastErr error
	for {
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := client.StatusWithoutKernel(callCtx)
		cancel()
		if err == nil {
			lastAnswer = time.Now()
			upgraded = st.Upgrades > r.Upgrades
			last := st.Reloads.Last
			switch {
			case st.PID != r.PID:
				return fmt.Errorf("baton answers with pid %d, not %d: the upgrade did not keep the pid", st.PID, r.PID)
			case !upgraded && st.UpgradeError != "":
				return fmt.Errorf("upgrade failed: %s", st.UpgradeError)
			case upgraded && keep:
				fmt.Fprintf(out, "upgraded: baton pid %d runs %s; generation %d keeps serving\n", st.PID, r.Binary, st.Generation)
				return nil
			case upgraded && st.Generation > r.Generation:
				// Reloads are held during an upgrade: the first one the
				// new baton finished is the upgrade's own.
				fmt.Fprintf(out, "upgraded: baton pid %d runs %s; generation %d serving\n", st.PID, r.Binary, st.Generation)
				return nil
			case upgraded && last != nil && !last.OK && last.Reason == "upgrade" && !last.Started.Before(replied):
				return fmt.Errorf("baton upgraded itself (pid %d runs %s), but its new generation failed: %s", st.PID, r.Binary, last.Error)
			}
		} else {
			lastErr = err
			if yes, _ := upgrade.Upgraded(r.PID, r.ID); yes {
				execd = true
			}
			switch {
			case processGone(r.PID) && execd:
				return fmt.Errorf("baton (pid %d) re-executed itself as %s, which then exited before it answered: the old baton is gone and nothing serves its listeners; see its log, and start baton again", r.PID, r.Binary)
			case processGone(r.PID):
				return fmt.Errorf("baton (pid %d) exited after the pre-flight of %s passed, before it answered again: nothing serves its listeners; see its log, and start baton again", r.PID, r.Binary)
			case time.Since(lastAnswer) > upgradeSilence && execd:
				return fmt.Errorf("baton (pid %d) re-executed itself as %s (the old baton is gone), and the new one has not answered on %s for %s (%w): see its log", r.PID, r.Binary, path, upgradeSilence, lastErr)
			case time.Since(lastAnswer) > upgradeSilence:
				return fmt.Errorf("baton (pid %d) has not answered on %s for %s since the pre-flight of %s passed (%w): see its log", r.PID, path, upgradeSilence, r.Binary, lastErr)
			}
		}
		switch {
		case ctx.Err() != nil && upgraded:
			return fmt.Errorf("baton upgraded itself (pid %d runs %s), but its new generation was not serving within --timeout %s; it goes on: see baton status", r.PID, r.Binary, timeout)
		case ctx.Err() != nil:
			return fmt.Errorf("baton (pid %d) had not re-executed itself as %s within --timeout %s; see baton status and its log", r.PID, r.Binary, timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's status
	}
}

// processGone reports whether pid has exited (a zombie counts as gone).
func processGone(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// "pid (comm) state ...": the state follows the last parenthesis.
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z'
	}
	return false
}
