package listener

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// holderOfPort names the process holding a socket bound to the spec's
// port ("pid 1234 (nginx)"), or returns "" when it cannot be found: the
// holder may live in another network namespace or belong to a user whose
// /proc entries this process may not read.
func holderOfPort(spec Spec) string {
	if spec.IsUnix() {
		return holderOfUnixPath(spec.Path)
	}
	tables, state := []string{"tcp", "tcp6"}, "0A" // TCP_LISTEN
	if spec.Kind == Datagram {
		tables, state = []string{"udp", "udp6"}, "07" // TCP_CLOSE, how /proc shows bound UDP sockets
	}
	for _, t := range tables {
		if ino := findInetInode("/proc/net/"+t, spec.Port, state); ino != 0 {
			return processWithSocket(ino)
		}
	}
	return ""
}

// holderOfUnixPath names the process bound to a unix socket path.
func holderOfUnixPath(path string) string {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		// Connections queued on a listener carry its path too and belong
		// to no process yet: keep looking until a holder is found.
		fields := strings.Fields(sc.Text())
		if len(fields) == 8 && fields[7] == path {
			if ino, err := strconv.ParseUint(fields[6], 10, 64); err == nil {
				if who := processWithSocket(ino); who != "" {
					return who
				}
			}
		}
	}
	return ""
}

// findInetInode scans a /proc/net/{tcp,udp}[6] table for a socket in the
// given state bound to port and returns its inode.
func findInetInode(table string, port int, state string) uint64 {
	f, err := os.Open(table)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	want := fmt.Sprintf(":%04X", port)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != state || !strings.HasSuffix(fields[1], want) {
			continue
		}
		if ino, err := strconv.ParseUint(fields[9], 10, 64); err == nil && ino != 0 {
			return ino
		}
	}
	return 0
}

// processWithSocket finds a process with an open descriptor on the socket
// inode and describes it as "pid N (comm)".
func processWithSocket(ino uint64) string {
	target := fmt.Sprintf("socket:[%d]", ino)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		fds, err := os.ReadDir(p + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(p + "/fd/" + fd.Name()); err == nil && link == target {
				comm, _ := os.ReadFile(p + "/comm")
				return fmt.Sprintf("pid %s (%s)", filepath.Base(p), strings.TrimSpace(string(comm)))
			}
		}
	}
	return ""
}
