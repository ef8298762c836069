package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go supports.
const userHZ = 100

// treeCPU returns the CPU time, in seconds, that pid and its descendants
// have used so far, user and system, including their reaped children's.
// A process that a descendant reaped between two calls moves into its
// parent's children's time, so the difference between two calls is the
// tree's use in between. It returns -1 if pid does not exist.
func treeCPU(pid int) float64 {
	procs := map[int]stat{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, name := range dirs {
		b, err := os.ReadFile(name)
		if err != nil {
			continue // exited meanwhile
		}
		p, ok := parseStat(string(b))
		if !ok {
			continue
		}
		id, _ := strconv.Atoi(filepath.Base(filepath.Dir(name)))
		procs[id] = p
	}
	if _, ok := procs[pid]; !ok {
		return -1
	}
	children := map[int][]int{}
	for id, p := range procs {
		children[p.ppid] = append(children[p.ppid], id)
	}
	var ticks int64
	todo := []int{pid}
	for len(todo) > 0 {
		id := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		ticks += procs[id].ticks
		todo = append(todo, children[id]...)
	}
	return float64(ticks) / userHZ
}

type stat struct {
	ppid  int
	ticks int64 // utime + stime + cutime + cstime
}

// parseStat reads /proc/PID/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from its last ')'.
func parseStat(s string) (stat, bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return stat{}, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
	if len(f) < 15 {
		return stat{}, false
	}
	var st stat
	var err error
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return stat{}, false
	}
	for _, x := range f[11:15] {
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return stat{}, false
		}
		st.ticks += n
	}
	return st, true
}
