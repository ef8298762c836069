package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-dev/baton/internal/api"
)

// client is the control API's client for the baton the flags name.
func (f *controlFlags) client() (*api.Client, error) {
	path, err := f.socketPath()
	if err != nil {
		return nil, err
	}
	return &api.Client{Path: path}, nil
}

func newReloadCmd() *cobra.Command {
	var cf controlFlags
	var noWait bool
	var timeout time.Duration
	var rolling, canary int
	var window time.Duration
	c := &cobra.Command{
		Use:   "reload",
		Short: "Start a new worker generation and drain the old one once it is ready",
		Long: `Start a new generation of workers. When every new worker is ready, the old
generation gets the stop signal and drains. If a new worker exits or misses
its readiness deadline, the new generation is stopped, the old one keeps
serving, and reload exits 1 with the reason. A reload asked for while one
runs is queued behind it (several are coalesced into one, which runs with
the options of the last).

--rolling[=K] replaces K slots at a time (1 when no K is given) instead of
every slot at once: each new worker starts beside the old one of its slot,
the old ones drain once the batch is ready, and the next batch starts once
they have exited, so at most workers+K run at once (a reload otherwise
doubles them for a moment). If a worker of the new generation fails
after slots were replaced, the roll stops and those slots roll back to the
old generation, K at a time; reload exits 1 once it has.

--canary[=N] first starts the new workers of the first N slots (1 when no N
is given) beside their old workers, which keep serving, and watches them for
--canary-window once ready: an exit, a missed readiness deadline, errors
they report (X_BATON_ERRORS) over canary_max_errors, no connection accepted
while the old workers accept plenty, or a warning in the kernel's view that
the old workers do not have, stops them (the old generation is untouched)
and reload exits 1 with the reason. If they pass, the reload goes on:
--rolling K at a time, or every slot left at once.

Without these flags the configuration the reload loads decides (rolling,
canary and canary_window in the config file, or --rolling and --canary of
baton run); --rolling=0 and --canary=0 override it for this reload. SIGHUP
reloads as the configuration says. baton status shows a reload's
progress.

reload waits until the reload has finished unless --no-wait is given.`,
		Example: `  baton reload
  baton reload --rolling            # one slot at a time
  baton reload --rolling=2 --canary --canary-window=1m
  baton reload --canary=0 --rolling=0   # all at once, whatever the config says`,
		Args: func(c *cobra.Command, args []string) error {
			// --rolling 2 is --rolling (1) and an argument 2: say how to
			// write it.
			if len(args) == 1 {
				if _, err := strconv.Atoi(args[0]); err == nil {
					for _, f := range []string{"rolling", "canary"} {
						if c.Flags().Changed(f) {
							return usagef("reload takes no arguments, got %q: write --%s=%s (with '=': --%s alone means 1)", args[0], f, args[0], f)
						}
					}
				}
			}
			return noArgs(c, args)
		},
		RunE: func(c *cobra.Command, _ []string) error {
			p := api.ReloadParams{WaitParams: api.WaitParams{Wait: &[]bool{!noWait}[0]}}
			fl := c.Flags()
			if fl.Changed("rolling") {
				if rolling < 0 {
					return usagef("--rolling=%d: want the number of slots to replace at a time (1 or more), or 0 for all at once", rolling)
				}
				p.Rolling = &rolling
			}
			if fl.Changed("canary") {
				if canary < 0 {
					return usagef("--canary=%d: want the number of slots to try first (1 or more), or 0 for no canary", canary)
				}
				p.Canary = &canary
			}
			if fl.Changed("canary-window") {
				if window <= 0 {
					return usagef("--canary-window=%s: want a positive duration, such as 30s", window)
				}
				d := api.Duration(window)
				p.CanaryWindow = &d
			}
			client, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			r, err := client.ReloadWith(ctx, p)
			if err != nil {
				return err
			}
			if noWait {
				fmt.Fprintln(c.OutOrStdout(), "reload requested")
				return nil
			}
			fmt.Fprintf(c.OutOrStdout(), "reloaded: generation %d is serving (replaced %d) after %s%s\n",
				r.Generation, r.Previous, time.Duration(r.Duration).Round(time.Millisecond), rolloutSummary(r.Rollout))
			return nil
		},
	}
	cf.register(c)
	fl := c.Flags()
	fl.BoolVar(&noWait, "no-wait", false, "return once the reload is requested")
	fl.DurationVar(&timeout, "timeout", 10*time.Minute, "give up waiting after this long (the reload goes on)")
	fl.IntVar(&rolling, "rolling", 0, "replace `K` slots at a time (--rolling alone: 1); 0: all at once (default: the configuration's rolling)")
	fl.Lookup("rolling").NoOptDefVal = "1"
	fl.IntVar(&canary, "canary", 0, "try the new generation on the first `N` slots first (--canary alone: 1); 0: no canary (default: the configuration's canary)")
	fl.Lookup("canary").NoOptDefVal = "1"
	fl.DurationVar(&window, "canary-window", 0, "how long the canaries are watched once ready (default: the configuration's canary_window, 30s)")
	return c
}

// rolloutSummary says how a rolling or canary reload went, after the
// reload's line: ", rolling 1 slot at a time; canary slot 0 passed its
// 30s window (0 errors, 120 connections)". Empty without a rollout.
func rolloutSummary(ro *api.RolloutStatus) string {
	if ro == nil {
		return ""
	}
	var s string
	switch ro.Batch {
	case 0:
	case 1:
		s = ", rolling 1 slot at a time"
	default:
		s = fmt.Sprintf(", rolling %d slots at a time", ro.Batch)
	}
	if c := ro.Canary; c != nil {
		s += fmt.Sprintf("; canary %s passed its %s window", slotWords(c.Slots), time.Duration(c.Window))
		var seen []string
		if c.Errors != nil {
			seen = append(seen, fmt.Sprintf("%d errors", *c.Errors))
		}
		if c.Accepted != nil {
			seen = append(seen, fmt.Sprintf("%d connections", *c.Accepted))
		}
		if c.Recycled > 0 {
			seen = append(seen, fmt.Sprintf("%d recycled", c.Recycled))
		}
		if len(seen) > 0 {
			s += " (" + strings.Join(seen, ", ") + ")"
		}
	}
	return s
}

// slotWords names slots: "slot 0", "slots 0, 1".
func slotWords(slots []int) string {
	if len(slots) == 1 {
		return fmt.Sprintf("slot %d", slots[0])
	}
	var s []string
	for _, i := range slots {
		s = append(s, strconv.Itoa(i))
	}
	return "slots " + strings.Join(s, ", ")
}

func newStopCmd() *cobra.Command {
	var cf controlFlags
	var noWait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "stop",
		Short: "Drain every worker and stop baton",
		Long: `Send every worker the stop signal, wait for them to drain (each is killed
after the drain timeout), then baton exits 0. stop waits for that unless
--no-wait is given. Sending SIGTERM to baton does the same.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := client.Stop(ctx, !noWait); err != nil {
				return err
			}
			if noWait {
				fmt.Fprintln(c.OutOrStdout(), "stopping")
			} else {
				fmt.Fprintln(c.OutOrStdout(), "stopped")
			}
			return nil
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&noWait, "no-wait", false, "return once the stop has begun")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up waiting after this long (the stop goes on)")
	return c
}

func newScaleCmd() *cobra.Command {
	var cf controlFlags
	c := &cobra.Command{
		Use:   "scale N",
		Short: "Change the number of worker slots",
		Long: `Change the number of workers (slots) of a running baton.

Adding slots starts their workers in the serving generation; with
balance=reuseport each new slot's socket joins the SO_REUSEPORT group first.
Removing slots drains their workers. A reuseport slot's socket is closed
once its worker has let go of it, and only if the kernel moves what is
queued in it to the other slots (net.ipv4.tcp_migrate_req=1; baton sets it
when started with --enable-migrate-req as root): otherwise the scale-down is
refused and nothing changes. A scale asked for during a reload is applied
when the reload ends.`,
		Example: "  baton scale 8\n  baton scale 2 --name api",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("scale takes the number of workers, for example: baton scale 4")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return usagef("scale %q: want a number of workers, 1 or more", args[0])
			}
			client, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := client.Scale(ctx, n)
			if err != nil {
				return err
			}
			switch {
			case len(r.Started) > 0:
				fmt.Fprintf(c.OutOrStdout(), "scaled from %d to %d workers: starting slots %v\n", r.From, r.To, r.Started)
			case len(r.Stopped) > 0:
				fmt.Fprintf(c.OutOrStdout(), "scaled from %d to %d workers: draining slots %v\n", r.From, r.To, r.Stopped)
			default:
				fmt.Fprintf(c.OutOrStdout(), "already %d workers\n", r.To)
			}
			return nil
		},
	}
	cf.register(c)
	return c
}

func newStatusCmd() *cobra.Command {
	var cf controlFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show listeners, workers and reloads of a running baton",
		Long: `Show the listeners baton holds (name, address with the real port, kind,
backlog, accept queue now/max as the kernel reports it, socket inode), the
TCP connections on each by state, and the workers (slot, generation, pid,
state, uptime, restarts, open fds against RLIMIT_NOFILE, connections held),
with warnings about the classic traps: a backlog capped by somaxconn or
lowered by the program's own listen(2), the 1024 fd default, a full accept
queue or listen overflows, CLOSE-WAIT leaks, TIME-WAIT pile-ups, and the
misconfigurations that look healthy: a listener nobody accepts on, a
wrapper script without exec, a program that binds its own port, a slot
that crash-loops. --json prints the full snapshot; docs/status.md
documents its fields.

Exit codes, for monitoring (--json too):
  0  healthy: every slot has a worker, no warning of severity degraded
  3  degraded: a slot has no worker (it crashed or could not start and
     waits in backoff), or a warning of severity degraded is active
     (not_accepting, crash_loop, binds_own_port); the reasons follow on
     stderr
  1  no baton answered (not running, wrong --name or --control), or it
     could not say
  2  a usage error`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			client, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if asJSON {
				res, err := client.StatusJSON(ctx)
				if err != nil {
					return err
				}
				// Through a map: every field baton sent, keys sorted.
				var v any
				if err := json.Unmarshal(res, &v); err != nil {
					return fmt.Errorf("reading the status: %w", err)
				}
				out, err := json.MarshalIndent(v, "", "  ")
				if err != nil {
					return fmt.Errorf("printing the status: %w", err)
				}
				fmt.Fprintln(c.OutOrStdout(), string(out))
				var st api.Status
				if err := json.Unmarshal(res, &st); err != nil {
					return fmt.Errorf("reading the status: %w", err)
				}
				return healthError(&st)
			}
			st, err := client.Status(ctx)
			if err != nil {
				return err
			}
			printStatus(c.OutOrStdout(), st)
			return healthError(&st)
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return c
}

// healthError judges a status (api.HealthOf, whatever baton sent): nil
// when healthy, else an error naming what degrades the service, which
// exits 3.
func healthError(st *api.Status) error {
	h := api.HealthOf(st)
	if !h.Degraded() {
		return nil
	}
	return &exitError{code: exitDegraded, err: fmt.Errorf("degraded: %s (the status says why)", strings.Join(h.Reasons, "; "))}
}

// printStatus writes the status as tables that fit 100 columns: the
// listeners with their accept queues (with balance=reuseport, the sums,
// and a row per slot's socket below), connections by state, the workers
// with their fds and connections, warnings, and the counters behind them.
func printStatus(out io.Writer, st api.Status) {
	w := &fitWriter{w: out, width: statusWidth}
	defer w.Flush()
	state := "running"
	if st.Stopping {
		state = "stopping"
	}
	fmt.Fprintf(w, "baton pid %d, %s, up %s, generation %d", st.PID, state, roundDur(st.Uptime), st.Generation)
	if st.Pending != 0 {
		fmt.Fprintf(w, " (generation %d starting)", st.Pending)
	}
	fmt.Fprintf(w, ", ready %s\ncommand: %s\n", st.Ready, strings.Join(st.Command, " "))
	printHealth(w, st)
	fmt.Fprintln(w)
	printRollout(w, st, time.Now())

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tADDRESS\tKIND\tBALANCE\tBACKLOG\tQUEUE\tINODE")
	var perSlot []api.ListenerStatus
	for _, l := range st.Listeners {
		backlog, inode := "-", fmt.Sprint(l.Inode)
		if l.Backlog > 0 {
			backlog = fmt.Sprint(l.Backlog)
		}
		if l.Balance == "reuseport" {
			inode = "per slot"
			perSlot = append(perSlot, l)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", middle(l.Name, 14), middle(l.Address, 28), l.Kind, l.Balance, backlog,
			listenerQueue(kernelListener(st, l.Name)), inode)
	}
	tw.Flush()
	for _, l := range st.Listeners {
		if line := flowsLine(l); line != "" {
			fmt.Fprintln(w, line)
		}
	}
	if len(perSlot) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SLOT\tLISTENER\tINODE\tFD\tQUEUE")
		for _, l := range perSlot {
			lv := kernelListener(st, l.Name)
			for _, s := range l.Sockets {
				fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\n", s.Slot, middle(l.Name, 14), s.Inode, s.Fd, socketQueue(lv, s.Inode))
			}
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	printConnections(w, st)
	printWorkers(w, st)
	var captured []string
	for _, wk := range st.Workers {
		for _, c := range wk.Captures {
			captured = append(captured, fmt.Sprintf("  slot %d pid %d: %s bound %s (pid %d, fd %d) at %s",
				wk.Slot, wk.PID, c.Listener, c.Addr, c.PID, c.Fd, c.Time.Local().Format("15:04:05.000")))
		}
	}
	if len(captured) > 0 {
		fmt.Fprintf(w, "\ncaptured binds:\n%s\n", strings.Join(captured, "\n"))
	}
	fmt.Fprintln(w)
	printSlotsDown(w, st)
	printWarnings(w, st)
	printLimits(w, st)
	reloads := fmt.Sprintf("reloads: %d ok, %d failed", st.Reloads.OK, st.Reloads.Failed)
	if st.Reloads.Queued {
		reloads += ", one queued"
	}
	if l := st.Reloads.Last; l != nil {
		outcome := "ok"
		if !l.OK {
			outcome = "failed: " + l.Error
		}
		reloads += fmt.Sprintf("; last to generation %d took %s, %s", l.Generation, roundDur(l.Duration), outcome)
	}
	for _, line := range wrap(reloads, statusWidth, "", "    ") {
		fmt.Fprintln(w, line)
	}
	printHost(w, st)
	fmt.Fprintf(w, "baton itself: %d fds, %d goroutines, %.1f MiB resident\n",
		st.Process.FDs, st.Process.Goroutines, float64(st.Process.RSSBytes)/(1<<20))
	printHandoff(w, st.Handoff)
	printOutput(w, st.Output)
}

// printHandoff writes the fd store's line.
func printHandoff(w io.Writer, h api.HandoffStatus) {
	fmt.Fprintf(w, "handoff: %d held, %d stored, %d adopted, %d expired, %d refused", h.Held, h.Stored, h.Adopted, h.Expired, h.Refused)
	if h.Unconfirmed > 0 {
		fmt.Fprintf(w, ", %d unconfirmed", h.Unconfirmed)
	}
	fmt.Fprintf(w, " (timeout %s); fd headroom %d of %d\n", roundDur(h.Timeout), h.FDHeadroom, h.FDLimit)
}

func roundDur(d api.Duration) string {
	t := time.Duration(d)
	switch {
	case t < time.Second:
		return t.Round(time.Millisecond).String()
	case t < time.Hour:
		return t.Round(time.Second).String()
	}
	return t.Round(time.Minute).String()
}
