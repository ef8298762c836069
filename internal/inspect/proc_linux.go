package inspect

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
)

// maxEnviron bounds what is read of a process's environment.
const maxEnviron = 1 << 20

// readProc reads a process's command name and parent (/proc/PID/stat)
// and its executable (/proc/PID/exe) and, with env, LISTEN_PID and LISTEN_FDS of its environment
// (/proc/PID/environ, which root and the process's own user may read;
// left zero when it cannot be read) and its command line.
func readProc(pid int, env bool) (proc, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return proc{}, err
	}
	p, err := parseStat(b)
	if err != nil {
		return proc{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	if l, err := os.Readlink(dir + "/exe"); err == nil {
		p.Exe = path.Base(strings.TrimSuffix(l, " (deleted)"))
	}
	if !env {
		return p, nil
	}
	if f, err := os.Open(dir + "/environ"); err == nil {
		if b, err := io.ReadAll(io.LimitReader(f, maxEnviron)); err == nil {
			p.ListenPID, p.ListenFDs = parseEnviron(b)
		}
		f.Close()
	}
	if b, err := os.ReadFile(dir + "/cmdline"); err == nil {
		p.Cmdline = parseCmdline(b)
	}
	return p, nil
}

// children lists the children of every thread of process pid, from
// /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN). It returns an error
// wrapping fs.ErrNotExist when the process is gone or the kernel lacks
// the file.
func children(pid int) ([]int, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	tids, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	var out []int
	for _, tid := range tids {
		b, err := os.ReadFile(dir + "/" + tid + "/children")
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat(dir + "/" + tid); serr == nil {
				return nil, err // the thread is there, the file is not: no CONFIG_PROC_CHILDREN
			}
			continue // the thread exited
		}
		if err != nil {
			return nil, err
		}
		out = parseChildren(b, out)
	}
	return out, nil
}

// childrenByScan maps every process of /proc to its children (in pid
// order), for a kernel without /proc/PID/task/TID/children.
func childrenByScan() (map[int][]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	m := map[int][]int{}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		if p, err := readProc(pid, false); err == nil {
			m[p.PPID] = append(m[p.PPID], pid)
		}
	}
	for _, kids := range m {
		slices.Sort(kids)
	}
	return m, nil
}

// descendants lists the descendants of process pid, parents before
// children, at most limit of them. A process that exits meanwhile is
// left out; an error means pid itself could not be read.
func descendants(pid, limit int) ([]int, error) {
	kidsOf := children
	var out []int
	queue := []int{pid}
	for len(queue) > 0 && len(out) < limit {
		p := queue[0]
		queue = queue[1:]
		kids, err := kidsOf(p)
		if err != nil {
			if p != pid {
				continue // exited meanwhile
			}
			if _, serr := os.Stat("/proc/" + strconv.Itoa(pid)); serr != nil {
				return nil, serr
			}
			// The process is there and its children file is not: scan.
			byParent, serr := childrenByScan()
			if serr != nil {
				return nil, fmt.Errorf("children of pid %d: %w (and %w)", pid, err, serr)
			}
			kidsOf = func(p int) ([]int, error) { return byParent[p], nil }
			kids = byParent[pid]
		}
		for _, k := range kids {
			if len(out) == limit {
				break
			}
			out = append(out, k)
			queue = append(queue, k)
		}
	}
	return out, nil
}
