package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/baton-dev/baton/internal/api"
)

// statusWidth is the width `baton status` fits in.
const statusWidth = 100

// fitWriter cuts every line written through it to width runes, ending a
// cut line with "…". Tables are laid out to fit; this is the guarantee.
type fitWriter struct {
	w     io.Writer
	width int
	line  []byte
}

// Write writes p's complete lines, each cut to the width, and keeps the
// rest for the next Write or Flush.
func (f *fitWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := strings.IndexByte(string(p), '\n')
		if i < 0 {
			f.line = append(f.line, p...)
			break
		}
		f.line = append(f.line, p[:i]...)
		if _, err := io.WriteString(f.w, cut(string(f.line), f.width)+"\n"); err != nil {
			return 0, err
		}
		f.line = f.line[:0]
		p = p[i+1:]
	}
	return n, nil
}

// Flush writes a last line that has no newline.
func (f *fitWriter) Flush() error {
	if len(f.line) == 0 {
		return nil
	}
	_, err := io.WriteString(f.w, cut(string(f.line), f.width))
	f.line = f.line[:0]
	return err
}

// cut shortens s to width runes, the last being "…", trailing spaces
// trimmed.
func cut(s string, width int) string {
	s = strings.TrimRight(s, " ")
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1]) + "…"
}

// middle shortens s to width runes by eliding its middle, which keeps both
// the start and the end of an address or path.
func middle(s string, width int) string {
	r := []rune(s)
	if len(r) <= width || width < 5 {
		return s
	}
	head := (width - 1) / 2
	tail := width - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

// wrap breaks text into lines of at most width runes, the first starting
// with first and the others with rest.
func wrap(text string, width int, first, rest string) []string {
	var lines []string
	line := first
	empty := strings.TrimSpace(first) == ""
	for _, word := range strings.Fields(text) {
		if !empty && utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) > width {
			lines = append(lines, line)
			line, empty = rest, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	return append(lines, line)
}

// kernelListener finds the kernel's view of a listener.
func kernelListener(st api.Status, name string) *api.KernelListener {
	if st.Kernel == nil {
		return nil
	}
	for i := range st.Kernel.Listeners {
		if st.Kernel.Listeners[i].Name == name {
			return &st.Kernel.Listeners[i]
		}
	}
	return nil
}

// kernelWorker finds the kernel's view of a worker.
func kernelWorker(st api.Status, pid int) *api.KernelWorker {
	if st.Kernel == nil {
		return nil
	}
	for i := range st.Kernel.Workers {
		if st.Kernel.Workers[i].PID == pid {
			return &st.Kernel.Workers[i]
		}
	}
	return nil
}

// queueCell shows a socket's queue: "waiting/max" for a listening socket,
// bytes for a datagram one, "?" when the kernel did not say.
func queueCell(s api.KernelSocket) string {
	switch {
	case s.State == "":
		return "?"
	case s.Listening():
		return fmt.Sprintf("%d/%d", s.RecvQ, s.SendQ)
	}
	return fmt.Sprintf("%d B", s.RecvQ)
}

// listenerQueue is the QUEUE cell of a listener's row: its one socket's
// queue, or with a socket per slot the sums.
func listenerQueue(lv *api.KernelListener) string {
	if lv == nil || len(lv.Sockets) == 0 {
		return "-"
	}
	if len(lv.Sockets) == 1 {
		return queueCell(lv.Sockets[0])
	}
	var recvQ, sendQ uint32
	for _, s := range lv.Sockets {
		if !s.Listening() {
			return "-"
		}
		recvQ, sendQ = recvQ+s.RecvQ, sendQ+s.SendQ
	}
	return fmt.Sprintf("%d/%d", recvQ, sendQ)
}

// socketQueue is the QUEUE cell of one socket of a listener, by inode.
func socketQueue(lv *api.KernelListener, inode uint64) string {
	if lv != nil {
		for _, s := range lv.Sockets {
			if s.Inode == inode {
				return queueCell(s)
			}
		}
	}
	return "-"
}

func fdsCell(wv *api.KernelWorker) string {
	switch {
	case wv == nil || wv.FDLimit == 0:
		return "-"
	case wv.FDLimit < 0:
		return fmt.Sprintf("%d/unlim", wv.FDs)
	}
	return fmt.Sprintf("%d/%d", wv.FDs, wv.FDLimit)
}

func countCell(wv *api.KernelWorker, state string) string {
	if wv == nil {
		return "-"
	}
	return strconv.Itoa(wv.Connections[state])
}

// connColumns are the states the connections table has a column for;
// the others add up under OTHER.
var connColumns = []string{"ESTAB", "SYN-RECV", "CLOSE-WAIT", "TIME-WAIT"}

// printConnections writes the TCP connections of each listener by state.
func printConnections(w io.Writer, st api.Status) {
	if st.Kernel == nil {
		return
	}
	var rows []api.KernelListener
	for _, l := range st.Kernel.Listeners {
		if l.Protocol == api.ProtocolTCP {
			rows = append(rows, l)
		}
	}
	if len(rows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTIONS\t"+strings.Join(connColumns, "\t")+"\tOTHER")
	for _, l := range rows {
		other := 0
		for state, n := range l.Connections {
			other += n
			for _, c := range connColumns {
				if c == state {
					other -= n
				}
			}
		}
		fmt.Fprint(tw, middle(l.Name, 16))
		for _, c := range connColumns {
			fmt.Fprintf(tw, "\t%d", l.Connections[c])
		}
		fmt.Fprintf(tw, "\t%d\n", other)
	}
	tw.Flush()
	fmt.Fprintln(w)
}

// printWarnings writes the warnings, each wrapped to the status width.
func printWarnings(w io.Writer, st api.Status) {
	if st.Kernel == nil {
		return
	}
	for _, e := range st.Kernel.Errors {
		for _, line := range wrap(e, statusWidth, "kernel view incomplete:", "    ") {
			fmt.Fprintln(w, line)
		}
	}
	if len(st.Kernel.Warnings) == 0 {
		return
	}
	fmt.Fprintf(w, "warnings (%d):\n", len(st.Kernel.Warnings))
	for _, wn := range st.Kernel.Warnings {
		sev := ""
		if wn.Severity == api.SeverityDegraded {
			sev = " (degraded)"
		}
		head := fmt.Sprintf("  ! %s%s, since %s:", wn.Code, sev, wn.Since.Local().Format(time.TimeOnly))
		for _, line := range wrap(wn.Message, statusWidth, head, "    ") {
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintln(w)
}

// printHost writes the host's counters that explain dropped connections.
func printHost(w io.Writer, st api.Status) {
	if st.Kernel == nil {
		return
	}
	h := st.Kernel.Host
	var parts []string
	if h.Somaxconn > 0 {
		parts = append(parts, fmt.Sprintf("somaxconn %d;", h.Somaxconn))
	}
	names := make([]string, 0, len(h.Netstat))
	for _, name := range api.NetstatCounters {
		if n, ok := h.Netstat[name]; ok && (n != 0 || name == "ListenOverflows" || name == "ListenDrops") {
			names = append(names, fmt.Sprintf("%s %d", name, n))
		}
	}
	if len(names) > 0 {
		parts = append(parts, strings.Join(names, ", ")+";")
	}
	if tcp, ok := h.Sockstat["TCP"]; ok {
		parts = append(parts, fmt.Sprintf("TCP sockets %d in use, %d TIME-WAIT, %d orphaned",
			tcp["inuse"]+h.Sockstat["TCP6"]["inuse"], tcp["tw"], tcp["orphan"]))
	}
	if len(parts) == 0 {
		return
	}
	for _, line := range wrap(strings.Join(parts, " "), statusWidth, "host:", "    ") {
		fmt.Fprintln(w, line)
	}
}

// counterDeltas says how much the host's TcpExt drop counters rose
// between two views, for `baton top`: "ListenOverflows +3, ListenDrops +3".
// ListenOverflows and ListenDrops always show; the others when they moved.
func counterDeltas(prev, cur *api.KernelView) string {
	if prev == nil || cur == nil || cur.Host.Netstat == nil {
		return ""
	}
	var out []string
	for _, name := range api.NetstatCounters {
		d := cur.Host.Netstat[name] - prev.Host.Netstat[name]
		if d != 0 || name == "ListenOverflows" || name == "ListenDrops" {
			out = append(out, fmt.Sprintf("%s %+d", name, d))
		}
	}
	return strings.Join(out, ", ")
}

// printSlotsDown writes the slots of the serving generation that have no
// live worker: each with its backoff, when the next start is due, and the
// last error with its time.
func printSlotsDown(w io.Writer, st api.Status) {
	var down []api.SlotStatus
	for _, sl := range st.SlotStates {
		if sl.State != api.SlotUp {
			down = append(down, sl)
		}
	}
	if len(down) == 0 {
		return
	}
	fmt.Fprintf(w, "slots without a worker (%d):\n", len(down))
	for _, sl := range down {
		line := fmt.Sprintf("slot %d: %s", sl.Slot, sl.State)
		if sl.State == api.SlotBackoff && !sl.NextStart.IsZero() {
			line += ", next in " + soon(sl.NextIn)
		}
		line += fmt.Sprintf(" (restarts %d)", sl.Restarts)
		if sl.LastError != "" {
			line += fmt.Sprintf("; last error at %s: %s", sl.LastErrorTime.Local().Format("15:04:05.000"), sl.LastError)
		}
		for _, l := range wrap(line, statusWidth, "  !", "    ") {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintln(w)
}

// soon is a short wait as an operator reads it: 2.3s, 250ms, 1m30s.
func soon(d api.Duration) string {
	t := time.Duration(d)
	switch {
	case t < time.Second:
		return t.Round(10 * time.Millisecond).String()
	case t < time.Minute:
		return t.Round(100 * time.Millisecond).String()
	}
	return t.Round(time.Second).String()
}

// printOutput writes a line about baton's own stdout and stderr when
// lines were dropped, a write is stuck or failed: "output: stderr: 1204
// lines dropped, dropping since 15:04:05, 1.0 of 1.0 MiB buffered, a
// write blocked for 12s: nothing reads it". Nothing when all is well.
func printOutput(w io.Writer, o api.OutputStatus) {
	streams := []struct {
		name string
		s    api.OutputStream
	}{{"stdout", o.Stdout}, {"stderr", o.Stderr}}
	if o.Stdout.Shared {
		streams = []struct {
			name string
			s    api.OutputStream
		}{{"stdout and stderr", o.Stderr}}
	}
	var parts []string
	for _, st := range streams {
		s := st.s
		if s.DroppedLines == 0 && s.DroppingSince == nil && s.Error == "" && time.Duration(s.BlockedFor) < time.Second {
			continue
		}
		p := fmt.Sprintf("%s: %d lines dropped", st.name, s.DroppedLines)
		if s.DroppingSince != nil {
			p += fmt.Sprintf(", dropping since %s", s.DroppingSince.Local().Format(time.TimeOnly))
		}
		p += fmt.Sprintf(", %.1f of %.1f MiB buffered", float64(s.BufferedBytes)/(1<<20), float64(s.LimitBytes)/(1<<20))
		if time.Duration(s.BlockedFor) >= time.Second {
			p += fmt.Sprintf(", a write blocked for %s: nothing reads it", roundDur(s.BlockedFor))
		}
		if s.Error != "" {
			p += ", last write failed: " + s.Error
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return
	}
	for _, line := range wrap(strings.Join(parts, "; "), statusWidth, "output:", "    ") {
		fmt.Fprintln(w, line)
	}
}

// printWorkers writes the workers table (with what the kernel and /proc
// say of each: fds, connections, resident memory, CPU), then a line for
// the replacement baton has under way and for workers that are stopped
// only when idle.
func printWorkers(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tGEN\tPID\tSTATE\tUPTIME\tRESTARTS\tACCEPTED\tFDS\tESTAB\tCLOSE-WAIT\tRSS\tCPU\tSTATUS")
	for _, wk := range st.Workers {
		status := wk.Status
		if len(status) > 30 {
			status = status[:27] + "..."
		}
		accepted := "-"
		if wk.Accepted != nil {
			accepted = fmt.Sprint(*wk.Accepted)
		}
		wv := kernelWorker(st, wk.PID)
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wk.Slot, wk.Generation, wk.PID, wk.State, roundDur(wk.Uptime), wk.Restarts, accepted,
			fdsCell(wv), countCell(wv, "ESTAB"), countCell(wv, "CLOSE-WAIT"), rssCell(wk), cpuCell(wk), status)
	}
	tw.Flush()
	var notes []string
	if r := st.Recycling; r != nil {
		n := fmt.Sprintf("recycling slot %d since %s: pid %d, %s; ", r.Slot, r.Since.Local().Format(time.TimeOnly), r.PID, r.Why)
		if r.NewPID != 0 {
			n += fmt.Sprintf("its replacement pid %d is starting, and pid %d drains once it is ready", r.NewPID, r.PID)
		} else {
			n += "its replacement is being started"
		}
		notes = append(notes, n)
	}
	// Workers stopped only when idle, grouped by the reason.
	var reasons []string
	idle := map[string][]string{}
	for _, wk := range st.Workers {
		if wk.Drain != "when-idle" {
			continue
		}
		if _, ok := idle[wk.DrainReason]; !ok {
			reasons = append(reasons, wk.DrainReason)
		}
		idle[wk.DrainReason] = append(idle[wk.DrainReason], strconv.Itoa(wk.PID))
	}
	for _, why := range reasons {
		notes = append(notes, fmt.Sprintf("drain when idle, pid %s: %s", strings.Join(idle[why], ", "), why))
	}
	for _, n := range notes {
		for _, line := range wrap(n, statusWidth, "  ", "    ") {
			fmt.Fprintln(w, line)
		}
	}
}

// rssCell is a worker's resident memory, short: "812K", "95.3M", "1.5G";
// "-" until baton has read it.
func rssCell(wk api.WorkerStatus) string {
	n := float64(wk.RSSBytes)
	switch {
	case wk.RSSBytes == 0:
		return "-"
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", n/(1<<20))
	}
	return fmt.Sprintf("%.0fK", n/(1<<10))
}

// cpuCell is a worker's CPU use over the last second, in percent of one
// core; "-" until baton has read it twice.
func cpuCell(wk api.WorkerStatus) string {
	if wk.RSSBytes == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", wk.CPUPercent)
}

// printLimits writes how baton recycles workers and how many it has, when
// it does: "recycling: --max-rss 512 MiB, --max-uptime 24h; recycled:
// slot 0 3 times, last exited at 15:04:05".
func printLimits(w io.Writer, st api.Status) {
	var parts []string
	if st.MaxRSS > 0 {
		parts = append(parts, "--max-rss "+sizeCell(st.MaxRSS))
	}
	if st.MaxUptime > 0 {
		parts = append(parts, "--max-uptime "+roundDur(st.MaxUptime))
	}
	var recycled []string
	for _, sl := range st.SlotStates {
		if sl.Recycles > 0 {
			recycled = append(recycled, fmt.Sprintf("slot %d %d times, last %s at %s", sl.Slot, sl.Recycles, sl.LastRecycle, sl.LastRecycleTime.Local().Format(time.TimeOnly)))
		}
	}
	if len(parts) == 0 && len(recycled) == 0 {
		return
	}
	line := "recycling: "
	if len(parts) > 0 {
		line += strings.Join(parts, ", ")
	} else {
		line += "only when workers exit 0 on their own"
	}
	if len(recycled) > 0 {
		line += "; recycled: " + strings.Join(recycled, "; ")
	}
	for _, l := range wrap(line, statusWidth, "", "    ") {
		fmt.Fprintln(w, l)
	}
}

// sizeCell writes a limit in bytes as the flags take it: "512 MiB".
func sizeCell(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}

// printHealth writes the health line: "health: ok", or "health:
// degraded:" and the reasons, wrapped.
func printHealth(w io.Writer, st api.Status) {
	h := api.HealthOf(&st)
	if !h.Degraded() {
		fmt.Fprintln(w, "health: ok")
		return
	}
	for _, line := range wrap(strings.Join(h.Reasons, "; "), statusWidth, "health: DEGRADED:", "    ") {
		fmt.Fprintln(w, line)
	}
}

// flowsLine says whether a UDP listener's flows are kept across reloads,
// and what its steering program holds and did; "" for other listeners.
func flowsLine(l api.ListenerStatus) string {
	f := l.Flows
	if f == nil {
		return ""
	}
	if !f.Kept {
		return fmt.Sprintf("flows %s: %s", l.Name, f.Error)
	}
	var gens []string
	for _, g := range f.Generations {
		role := "draining"
		if g.Serving {
			role = "serving"
		}
		gens = append(gens, fmt.Sprintf("gen %d %s %d", g.Generation, role, g.Flows))
	}
	line := fmt.Sprintf("flows %s: kept: %d peers of %d (%s); %d known, %d new, %d moved, %d fallback; %d to draining generations",
		l.Name, f.Tracked, f.Capacity, strings.Join(gens, ", "), f.Known, f.New, f.Moved, f.Fallback, f.Draining)
	if f.Mode == "quic" {
		line += fmt.Sprintf("; %d QUIC packets by connection ID", f.QUIC)
	}
	if f.Evicted > 0 {
		line += fmt.Sprintf("; %d evicted", f.Evicted)
	}
	if f.ProgramRuns > 0 && f.ProgramNS > 0 {
		line += fmt.Sprintf("; program %.0f ns a datagram", float64(f.ProgramNS)/float64(f.ProgramRuns))
	}
	return line
}
