package statuspage

import (
	"fmt"
	"html/template"
	"slices"
	"strconv"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// view is what the template renders: the snapshot, joined and ordered as
// the page shows it. status.js builds the same from /status.json; keep
// the two in step (the data-k attributes name the JSON path of a value
// shown as it is).
type view struct {
	St       *api.Status
	Sockets  []socketView
	Conns    []connView
	States   []string
	Workers  []workerView
	History  []historyView
	Warnings []api.Warning
	Handoff  []counterView
}

// socketView is a listening socket's accept queue.
type socketView struct {
	Listener, Slot string
	Key            string // JSON path of the socket in kernel.listeners
	Queue, Max     uint32
}

// connView is a listener's connections by state, in States' order.
type connView struct {
	Listener string
	Key      string // JSON path of its connections map
	Counts   []int
}

// workerView is a live worker with what the kernel says of it.
type workerView struct {
	api.WorkerStatus
	Key    string // JSON path in workers
	Kernel *api.KernelWorker
	KKey   string // JSON path in kernel.workers, "" without it
}

// historyView is a reload or upgrade, newest first.
type historyView struct {
	api.HistoryEntry
	Key string
}

// counterView is one handoff counter.
type counterView struct {
	Name  string
	Value int
}

// connStates are the TCP states always shown, in this order; any other
// state a listener has gets a column of its own after them, sorted.
var connStates = []string{"ESTAB", "SYN-RECV", "CLOSE-WAIT", "TIME-WAIT"}

// newView joins st for the template.
func newView(st *api.Status) view {
	v := view{St: st, States: slices.Clone(connStates)}
	k := st.Kernel
	if k != nil {
		for _, l := range k.Listeners {
			for s := range l.Connections {
				if !slices.Contains(v.States, s) {
					v.States = append(v.States, s)
				}
			}
		}
		slices.Sort(v.States[len(connStates):])
		for i, l := range k.Listeners {
			for j, s := range l.Sockets {
				if !s.Listening() {
					continue
				}
				slot := "shared"
				if s.Slot != nil {
					slot = "slot " + strconv.Itoa(*s.Slot)
				}
				v.Sockets = append(v.Sockets, socketView{Listener: l.Name, Slot: slot, Key: fmt.Sprintf("kernel.listeners.%d.sockets.%d", i, j), Queue: s.RecvQ, Max: s.SendQ})
			}
			if l.Protocol == api.ProtocolTCP {
				c := connView{Listener: l.Name, Key: fmt.Sprintf("kernel.listeners.%d.connections", i)}
				for _, s := range v.States {
					c.Counts = append(c.Counts, l.Connections[s])
				}
				v.Conns = append(v.Conns, c)
			}
		}
		v.Warnings = k.Warnings
	}
	for i, w := range st.Workers {
		wv := workerView{WorkerStatus: w, Key: fmt.Sprintf("workers.%d", i)}
		if k != nil {
			for j := range k.Workers {
				if k.Workers[j].PID == w.PID {
					wv.Kernel, wv.KKey = &k.Workers[j], fmt.Sprintf("kernel.workers.%d", j)
				}
			}
		}
		v.Workers = append(v.Workers, wv)
	}
	for i := len(st.History) - 1; i >= 0; i-- {
		v.History = append(v.History, historyView{HistoryEntry: st.History[i], Key: fmt.Sprintf("history.%d", i)})
	}
	h := st.Handoff
	v.Handoff = []counterView{
		{"held", h.Held}, {"stored", h.Stored}, {"adopted", h.Adopted}, {"expired", h.Expired},
		{"refused", h.Refused}, {"unconfirmed", h.Unconfirmed}, {"rejected", h.Rejected},
	}
	return v
}

// funcs are the template's formatting helpers; status.js has the same.
var funcs = template.FuncMap{
	"bytes":   formatBytes,
	"seconds": func(d api.Duration) string { return formatSeconds(time.Duration(d).Seconds()) },
	"clock":   formatClock,
	"deref":   func(p *int64) int64 { return *p },
	"fdlimit": formatLimit,
	"fdmax":   func(n int64) int64 { return max(n, 0) },
}

// formatBytes is n in IEC units, one decimal: "12.3 MiB".
func formatBytes(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	f, units := float64(n)/1024, []string{"KiB", "MiB", "GiB", "TiB"}
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
}

// formatSeconds is a duration as people read it: "850ms", "12.5s",
// "3m07s", "2h05m", "3d04h".
func formatSeconds(s float64) string {
	switch {
	case s < 1:
		return strconv.Itoa(int(s*1000)) + "ms"
	case s < 60:
		return strconv.FormatFloat(s, 'f', 1, 64) + "s"
	}
	n := int(s)
	switch {
	case n < 3600:
		return fmt.Sprintf("%dm%02ds", n/60, n%60)
	case n < 86400:
		return fmt.Sprintf("%dh%02dm", n/3600, n%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", n/86400, n%86400/3600)
}

// formatClock is t in UTC, to the second: "14:02:11Z".
func formatClock(t time.Time) string { return t.UTC().Format("15:04:05Z") }

// formatLimit is an RLIMIT_NOFILE: "unlimited" for -1.
func formatLimit(n int64) string {
	if n < 0 {
		return "unlimited"
	}
	return strconv.FormatInt(n, 10)
}
