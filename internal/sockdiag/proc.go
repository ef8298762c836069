package sockdiag

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

var errFormat = errors.New("unexpected format")

// parseNetstat parses the format of /proc/net/netstat and /proc/net/snmp:
// pairs of lines, a header naming the counters and a line of values, both
// starting with the same "Group:" prefix. The counters are added to m by
// group and name: m["TcpExt"]["ListenOverflows"].
func parseNetstat(m map[string]map[string]int64, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	line := 0
	for sc.Scan() {
		line++
		names := strings.Fields(sc.Text())
		if len(names) == 0 {
			continue
		}
		if !sc.Scan() {
			return fmt.Errorf("line %d: %w: header %q has no line of values", line, errFormat, names[0])
		}
		line++
		values := strings.Fields(sc.Text())
		if len(values) != len(names) || values[0] != names[0] || !strings.HasSuffix(names[0], ":") {
			return fmt.Errorf("line %d: %w: %d values for %d names under %q", line, errFormat, len(values)-1, len(names)-1, names[0])
		}
		group := m[strings.TrimSuffix(names[0], ":")]
		if group == nil {
			group = make(map[string]int64, len(names)-1)
			m[strings.TrimSuffix(names[0], ":")] = group
		}
		for i := 1; i < len(names); i++ {
			v, err := parseCounter(values[i])
			if err != nil {
				return fmt.Errorf("line %d: %s %s: %w", line, names[0], names[i], err)
			}
			group[names[i]] = v
		}
	}
	return sc.Err()
}

// parseSockstat parses the format of /proc/net/sockstat and sockstat6:
// "TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1", one group a line, as
// m["TCP"]["inuse"].
func parseSockstat(m map[string]map[string]int64, r io.Reader) error {
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f)%2 == 0 || !strings.HasSuffix(f[0], ":") {
			return fmt.Errorf("line %d: %w: %q", line, errFormat, sc.Text())
		}
		name := strings.TrimSuffix(f[0], ":")
		group := m[name]
		if group == nil {
			group = make(map[string]int64, len(f)/2)
			m[name] = group
		}
		for i := 1; i < len(f); i += 2 {
			v, err := parseCounter(f[i+1])
			if err != nil {
				return fmt.Errorf("line %d: %s %s: %w", line, name, f[i], err)
			}
			group[f[i]] = v
		}
	}
	return sc.Err()
}

// parseCounter parses a counter. Most are unsigned; /proc/net/snmp has
// -1 for "no limit" (Tcp MaxConn). An unsigned value beyond int64 (never
// seen) is capped rather than failing the whole file.
func parseCounter(s string) (int64, error) {
	v, err := strconv.ParseInt(s, 10, 64)
	if err == nil {
		return v, nil
	}
	if _, uerr := strconv.ParseUint(s, 10, 64); uerr == nil {
		return math.MaxInt64, nil
	}
	return 0, err
}

// parseNofile finds the "Max open files" line of /proc/PID/limits:
//
//	Limit                     Soft Limit           Hard Limit           Units
//	Max open files            1024                 524288               files
//
// "unlimited" is RLIM_INFINITY, the largest uint64.
func parseNofile(r io.Reader) (soft, hard uint64, err error) {
	const prefix = "Max open files"
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			return 0, 0, fmt.Errorf("%w: %q", errFormat, sc.Text())
		}
		if soft, err = parseLimit(f[0]); err != nil {
			return 0, 0, fmt.Errorf("soft limit: %w", err)
		}
		if hard, err = parseLimit(f[1]); err != nil {
			return 0, 0, fmt.Errorf("hard limit: %w", err)
		}
		return soft, hard, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, fmt.Errorf("%w: no %q line", errFormat, prefix)
}

func parseLimit(s string) (uint64, error) {
	if s == "unlimited" {
		return math.MaxUint64, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// socketInode parses the target of a /proc/PID/fd link, "socket:[INODE]",
// without allocating: it runs once for every fd of every process asked
// about.
func socketInode(link []byte) (uint64, bool) {
	const prefix = "socket:["
	if len(link) < len(prefix)+2 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0, false
	}
	digits := link[len(prefix) : len(link)-1]
	if len(digits) > 19 {
		return 0, false // more than fits in a uint64; not a kernel inode
	}
	var ino uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		ino = ino*10 + uint64(c-'0')
	}
	return ino, true
}
