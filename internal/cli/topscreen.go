package cli

import (
	"bytes"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// screenFrame lays out one frame of `baton top` for a terminal of rows
// by cols (80x24 at the least is the target): what needs acting on first
// and never cut (the listeners and their connections, warnings, slots
// without a worker), then as many workers as the screen has rows for and
// a line that counts the rest, and the host's counters last. Every line
// is cut to cols. err is why there is no status this time (st is then
// the last one, or nil).
func screenFrame(st *api.Status, err error, deltas string, every time.Duration, now time.Time, rows, cols int) string {
	var top, alerts, workers, bottom []string
	head := fmt.Sprintf("baton top, every %s, q quits; %s", every, now.Format(time.TimeOnly))
	if st != nil {
		state := "running"
		if st.Stopping {
			state = "stopping"
		}
		head = fmt.Sprintf("pid %d %s, up %s, generation %d", st.PID, state, shortDur(st.Uptime), st.Generation)
		if st.Pending != 0 {
			head += fmt.Sprintf(" (%d starting)", st.Pending)
		}
		head += fmt.Sprintf(", ready %s; every %s, q quits, %s", st.Ready, every, now.Format(time.TimeOnly))
	}
	top = append(top, head)
	if err != nil {
		top = append(top, wrap("no status: "+err.Error(), cols, "", "    ")...)
	}
	if st == nil {
		return fit(top, rows, cols)
	}
	second := ""
	if deltas != "" {
		second = "since the last frame: " + deltas + "; "
	}
	second += fmt.Sprintf("reloads %d ok, %d failed", st.Reloads.OK, st.Reloads.Failed)
	if st.Reloads.Queued {
		second += ", one queued"
	}
	if l := st.Reloads.Last; l != nil && !l.OK {
		second += "; last failed: " + strings.Join(strings.Fields(l.Error), " ")
	}
	top = append(top, second)
	if h := api.HealthOf(st); h.Degraded() {
		top = append(top, "health: DEGRADED: "+strings.Join(h.Reasons, "; "))
	} else {
		top = append(top, "health: ok")
	}
	top = append(top, "")
	top = append(top, listenerRows(*st)...)
	top = append(top, "")

	alerts = append(alerts, alertRows(*st)...)
	if len(alerts) > 0 {
		alerts = append(alerts, "")
	}
	var host bytes.Buffer
	printHost(&host, *st)
	if h := strings.Join(strings.Fields(host.String()), " "); h != "" {
		bottom = append(bottom, h)
	}
	var out bytes.Buffer
	printOutput(&out, st.Output)
	if o := strings.Join(strings.Fields(out.String()), " "); o != "" {
		bottom = append(bottom, o)
	}
	room := rows - len(top) - len(alerts) - len(bottom)
	workers = workerRows(*st, room, cols)
	if len(bottom) > 0 && len(workers) > 0 {
		workers = append(workers, "")
	}
	lines := append(append(append(top, alerts...), workers...), bottom...)
	return fit(lines, rows, cols)
}

// fit cuts lines to cols and their count to rows.
func fit(lines []string, rows, cols int) string {
	if len(lines) > rows {
		lines = lines[:rows]
	}
	for i, l := range lines {
		lines[i] = cut(l, cols)
	}
	return strings.Join(lines, "\n")
}

// listenerRows is one table of the listeners, their accept queues and
// their connections by state: the status's two tables in one, with what
// an operator watches (KIND, BALANCE, BACKLOG and the inode are in
// baton status).
func listenerRows(st api.Status) []string {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tADDRESS\tQUEUE\t"+strings.Join(connColumns, "\t"))
	for _, l := range st.Listeners {
		lv := kernelListener(st, l.Name)
		fmt.Fprintf(tw, "%s\t%s\t%s", middle(l.Name, 10), middle(l.Address, 21), listenerQueue(lv))
		for _, c := range connColumns {
			if lv == nil || lv.Protocol != api.ProtocolTCP {
				fmt.Fprint(tw, "\t-")
				continue
			}
			fmt.Fprintf(tw, "\t%d", lv.Connections[c])
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
}

// alertRows are the lines that say something needs acting on: the
// kernel view's errors, each warning and each slot without a worker, one
// line each (baton status has them whole).
func alertRows(st api.Status) []string {
	var rows []string
	if st.Kernel != nil {
		for _, e := range st.Kernel.Errors {
			rows = append(rows, "kernel view incomplete: "+e)
		}
		if n := len(st.Kernel.Warnings); n > 0 {
			rows = append(rows, fmt.Sprintf("warnings (%d; baton status has them whole):", n))
			for _, w := range st.Kernel.Warnings {
				rows = append(rows, fmt.Sprintf("  ! %s: %s", w.Code, strings.Join(strings.Fields(w.Message), " ")))
			}
		}
	}
	if r := st.Recycling; r != nil {
		rows = append(rows, fmt.Sprintf("recycling slot %d: pid %d, %s", r.Slot, r.PID, r.Why))
	}
	var down []string
	for _, sl := range st.SlotStates {
		if sl.State == api.SlotUp {
			continue
		}
		line := fmt.Sprintf("  ! slot %d: %s", sl.Slot, sl.State)
		if sl.State == api.SlotBackoff && !sl.NextStart.IsZero() {
			line += ", next in " + soon(sl.NextIn)
		}
		line += fmt.Sprintf(" (restarts %d)", sl.Restarts)
		if sl.LastError != "" {
			line += ": " + sl.LastError
		}
		down = append(down, line)
	}
	if len(down) > 0 {
		rows = append(rows, fmt.Sprintf("slots without a worker (%d):", len(down)))
		rows = append(rows, down...)
	}
	return rows
}

// workerRows is the workers table in at most room lines: the header and
// a row per worker, or, when they do not all fit, as many as do and a
// line that counts the others by state.
func workerRows(st api.Status, room, cols int) []string {
	if room < 1 {
		return nil
	}
	pad := 2
	if cols < 120 {
		pad = 1 // the first eleven columns fit 80 with one space between them
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, pad, ' ', 0)
	// What top is watched for first: state, memory and CPU, descriptors
	// and connections; ACCEPTED and STATUS last, cut first.
	fmt.Fprintln(tw, "SLOT\tGEN\tPID\tSTATE\tUPTIME\tRESTARTS\tRSS\tCPU\tFDS\tESTAB\tCLOSE-WAIT\tACCEPTED\tSTATUS")
	for _, wk := range st.Workers {
		accepted := "-"
		if wk.Accepted != nil {
			accepted = fmt.Sprint(*wk.Accepted)
		}
		wv := kernelWorker(st, wk.PID)
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wk.Slot, wk.Generation, wk.PID, wk.State, shortDur(wk.Uptime), wk.Restarts,
			rssCell(wk), cpuCell(wk), fdsCell(wv), countCell(wv, "ESTAB"), countCell(wv, "CLOSE-WAIT"), accepted, strings.Join(strings.Fields(wk.Status), " "))
	}
	tw.Flush()
	table := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(table) <= room {
		return table
	}
	shown := room - 2 // the header, and the line that counts the rest
	if shown < 1 {
		return []string{"workers: " + countStates(st.Workers) + " (baton status lists them)"}
	}
	rest := st.Workers[shown:]
	return append(table[:1+shown], fmt.Sprintf("… %d more: %s (a taller terminal, or baton status, shows them)", len(rest), countStates(rest)))
}

// countStates counts workers by state: "12 ready, 4 draining".
func countStates(ws []api.WorkerStatus) string {
	n := map[api.WorkerState]int{}
	var order []api.WorkerState
	for _, w := range ws {
		if n[w.State] == 0 {
			order = append(order, w.State)
		}
		n[w.State]++
	}
	parts := make([]string, len(order))
	for i, s := range order {
		parts[i] = fmt.Sprintf("%d %s", n[s], s)
	}
	return strings.Join(parts, ", ")
}

// shortDur is an uptime in at most two units, as top has room for: 12s,
// 5m3s, 3h2m, 4d4h.
func shortDur(d api.Duration) string {
	t := time.Duration(d)
	switch {
	case t < time.Second:
		return t.Round(time.Millisecond).String()
	case t < time.Minute:
		return t.Round(time.Second).String()
	case t < time.Hour:
		return fmt.Sprintf("%dm%ds", int(t/time.Minute), int(t%time.Minute/time.Second))
	case t < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(t/time.Hour), int(t%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%dh", int(t/(24*time.Hour)), int(t%(24*time.Hour)/time.Hour))
}
