package spawn

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/capture"
)

// shimEnv marks a process started as the shim. It is removed before the
// real command runs, so a worker that is itself baton (baton demo) is not
// mistaken for a shim. keepEnv says how many descriptors (0..N-1) the
// command gets; every other one is closed on exec.
const (
	shimEnv = "BATON_INTERNAL_SHIM"
	keepEnv = "BATON_INTERNAL_KEEP_FDS"
)

// RunShim turns this process into the requested command when it was started
// as the shim, and returns otherwise. It must be called before anything
// else in main. The shim's arguments are the resolved path of the command
// followed by its argv.
func RunShim() {
	if os.Getenv(shimEnv) != "1" {
		return
	}
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "baton shim: missing command")
		os.Exit(127)
	}
	path, argv := os.Args[1], os.Args[2:]
	// Whatever the parent leaked by accident (a descriptor without
	// close-on-exec) stops here: the command gets exactly what was asked.
	if keep, err := strconv.Atoi(os.Getenv(keepEnv)); err == nil && keep >= 3 {
		unix.CloseRange(uint(keep), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	}
	// With --capture-bind: the seccomp filter that hands the program's
	// bind(2) calls to baton goes on this thread, which then execs.
	if _, err := capture.InstallFromEnv(); err != nil {
		fmt.Fprintf(os.Stderr, "baton: %v\n", err)
		os.Exit(126)
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, shimEnv+"=") || strings.HasPrefix(kv, keepEnv+"=") || strings.HasPrefix(kv, "LISTEN_PID=") {
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	}
	err := syscall.Exec(path, argv, env)
	fmt.Fprintf(os.Stderr, "baton: exec %s: %v\n", path, err)
	if errors.Is(err, syscall.ENOENT) {
		os.Exit(127)
	}
	os.Exit(126)
}
