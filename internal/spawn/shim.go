package spawn

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/capture"
)

// The shim's instructions, all removed before the command runs. shimEnv
// marks a process started as the shim, so a worker that is itself baton
// (baton demo) is not mistaken for one; keepEnv says how many descriptors
// (0..N-1) the command gets, every other one is closed on exec.
const (
	shimEnv   = "BATON_INTERNAL_SHIM"
	keepEnv   = "BATON_INTERNAL_KEEP_FDS"
	ppidEnv   = "BATON_INTERNAL_PPID"
	pdeathEnv = "BATON_INTERNAL_PDEATHSIG"
	userEnv   = "BATON_INTERNAL_USER"
	nofileEnv = "BATON_INTERNAL_NOFILE"
	dirEnv    = "BATON_INTERNAL_DIR"
)

// Credential is an identity a command runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups
}

// String encodes c as "uid:gid:g1,g2".
func (c *Credential) String() string {
	groups := make([]string, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	return fmt.Sprintf("%d:%d:%s", c.UID, c.GID, strings.Join(groups, ","))
}

func parseCredential(s string) (*Credential, error) {
	f := strings.Split(s, ":")
	if len(f) != 3 {
		return nil, fmt.Errorf("%q: want uid:gid:groups", s)
	}
	uid, err1 := strconv.ParseUint(f[0], 10, 32)
	gid, err2 := strconv.ParseUint(f[1], 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("%q: want numeric uid and gid", s)
	}
	c := &Credential{UID: uint32(uid), GID: uint32(gid)}
	for _, g := range strings.Split(f[2], ",") {
		if g == "" {
			continue
		}
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q: group %q is not a number", s, g)
		}
		c.Groups = append(c.Groups, uint32(n))
	}
	return c, nil
}

func init() {
	// The shim must execve from the main thread (only the main thread
	// carries the parent-death signal set at fork, and execve keeps the
	// calling thread's attributes, the capture filter too), and Main serves
	// the spawner from it. Locking in init makes main.main start there.
	runtime.LockOSThread()
}

// RunShim turns this process into the requested command when it was started
// as the shim, and returns otherwise. It must be called before anything
// else in main. The shim's arguments are the resolved path of the command
// followed by its argv.
func RunShim() {
	if os.Getenv(shimEnv) != "1" {
		return
	}
	if len(os.Args) < 3 {
		fail(127, "missing command")
	}
	path, argv := os.Args[1], os.Args[2:]
	// Whatever the parent leaked by accident (a descriptor without
	// close-on-exec) stops here: the command gets exactly what was asked.
	if keep, err := strconv.Atoi(os.Getenv(keepEnv)); err == nil && keep >= 3 {
		unix.CloseRange(uint(keep), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	}
	if d := os.Getenv(dirEnv); d != "" {
		// As baton's user still, as the fork's chdir was: the command's
		// own user may not be able to reach a directory baton can.
		if err := os.Chdir(d); err != nil {
			fail(126, "working directory %s: %v", d, errors.Unwrap(err))
		}
	}
	if v := os.Getenv(nofileEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			fail(126, "rlimit nofile %q: not a number", v)
		}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
			fail(126, "setting RLIMIT_NOFILE to %d: %v (raising the hard limit needs root or CAP_SYS_RESOURCE)", n, err)
		}
	}
	if v := os.Getenv(userEnv); v != "" {
		c, err := parseCredential(v)
		if err != nil {
			fail(126, "user: %v", err)
		}
		if err := dropPrivileges(c); err != nil {
			fail(126, "%v", err)
		}
	}
	// A change of identity clears the parent-death signal; set it again
	// on this thread, the one that execs, and make sure the parent did not
	// die before it was armed.
	if sig, err := strconv.Atoi(os.Getenv(pdeathEnv)); err == nil && sig > 0 {
		unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(sig), 0, 0, 0)
		if ppid, err := strconv.Atoi(os.Getenv(ppidEnv)); err == nil && os.Getppid() != ppid {
			os.Exit(128 + sig)
		}
	}
	// With --capture-bind: the seccomp filter that hands the program's
	// bind(2) calls to baton goes on this thread, which then execs.
	if _, err := capture.InstallFromEnv(); err != nil {
		fmt.Fprintf(os.Stderr, "baton: %v\n", err)
		os.Exit(126)
	}
	// baton ignores SIGTTIN and SIGTTOU, and an ignored signal stays
	// ignored across execve: the command starts with every signal at its
	// default, as it would outside baton.
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU} {
		if err := setDefault(sig); err != nil {
			fail(126, "%v", err)
		}
	}
	if err := blockingFd0(); err != nil {
		fail(126, "%v", err)
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BATON_INTERNAL_") || strings.HasPrefix(kv, "LISTEN_PID=") {
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	}
	err := syscall.Exec(path, argv, env)
	code := 126
	if errors.Is(err, syscall.ENOENT) {
		code = 127
	}
	fail(code, "exec %s: %v", path, err)
}

// blockingFd0 makes fd 0 blocking when it is a listening socket (--fd0):
// the FastCGI convention, in which programs such as php-cgi and those
// built on libfcgi block in accept(2) on it and take EAGAIN for an error
// to exit on, as spawn-fcgi and web servers hand them a blocking socket.
// baton's listeners are non-blocking, and the flag belongs to the open
// file description: this makes the listener blocking for every process
// that holds it, which is right for the FastCGI programs that do, and
// costs baton nothing (it never accepts on it). Anything else on fd 0
// (/dev/null) is left as it is.
func blockingFd0() error {
	if v, err := unix.GetsockoptInt(0, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v == 0 {
		return nil
	}
	if err := unix.SetNonblock(0, false); err != nil {
		return fmt.Errorf("making the --fd0 listener blocking: %w", os.NewSyscallError("fcntl", err))
	}
	return nil
}

// dropPrivileges sets the supplementary groups, the group and the user, in
// that order (after setuid nothing else could be changed). Go applies each
// to every thread of the process.
func dropPrivileges(c *Credential) error {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups %v: %w (changing identity needs root)", c.Groups, err)
	}
	if err := syscall.Setgid(int(c.GID)); err != nil {
		return fmt.Errorf("setgid %d: %w", c.GID, err)
	}
	if err := syscall.Setuid(int(c.UID)); err != nil {
		return fmt.Errorf("setuid %d: %w", c.UID, err)
	}
	return nil
}

// setDefault sets sig's disposition to SIG_DFL with rt_sigaction(2). A
// zeroed struct sigaction is SIG_DFL with no flags and an empty mask on
// every architecture, whatever its layout; the shim execs right after, so
// Go's runtime never sees the change.
func setDefault(sig syscall.Signal) error {
	var act [64]byte // larger than any architecture's struct sigaction
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act[0])), 0, 8, 0, 0); e != 0 {
		return fmt.Errorf("resetting %s to its default: %w", unix.SignalName(sig), os.NewSyscallError("rt_sigaction", e))
	}
	return nil
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "baton: "+format+"\n", args...)
	os.Exit(code)
}
