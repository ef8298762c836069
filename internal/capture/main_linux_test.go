package capture

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// The test binary doubles as the processes the tests need (STYLE.md §6):
//
//   - helperEnv=shim: baton's shim in miniature. It calls InstallFromEnv,
//     as spawn.RunShim will, then execs its arguments; thenEnv says which
//     helper (if any) the exec'd program is.
//   - helperEnv=program: an unmodified program that binds its own ports,
//     written in Go. It reads one command per line on stdin and answers
//     each with one JSON line on stdout.
const (
	helperEnv = "BATON_CAPTURE_TEST_HELPER"
	thenEnv   = "BATON_CAPTURE_TEST_THEN"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "shim":
		runShim()
	case "program":
		runProgram()
	default:
		os.Exit(m.Run())
	}
}

func runShim() {
	installed, err := InstallFromEnv()
	if err != nil || !installed {
		fmt.Fprintf(os.Stderr, "test shim: installed=%v: %v\n", installed, err)
		os.Exit(126)
	}
	then := os.Getenv(thenEnv)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperEnv+"=") && !strings.HasPrefix(kv, thenEnv+"=") {
			env = append(env, kv)
		}
	}
	if then != "" {
		env = append(env, helperEnv+"="+then)
	}
	argv := os.Args[1:]
	path, err := exec.LookPath(argv[0])
	if err == nil {
		err = syscall.Exec(path, argv, env)
	}
	fmt.Fprintf(os.Stderr, "test shim: exec %s: %v\n", argv[0], err)
	os.Exit(127)
}

// reply is the program helper's answer to one command.
type reply struct {
	Pid  int    `json:"pid,omitempty"`
	Fd   int    `json:"fd,omitempty"`
	Addr string `json:"addr,omitempty"`
	Err  string `json:"err,omitempty"`
}

// program is the state of the program helper.
type program struct {
	out     *json.Encoder
	closers map[int]func() error // by descriptor number
	gc      *exec.Cmd            // grandchild, after "spawn"
	gcIn    *bufio.Writer
	gcOut   *bufio.Reader
	gcStdin interface{ Close() error }
}

// runProgram serves commands:
//
//	listen NETWORK ADDRESS      net.Listen; connections get "pid=PID\n"
//	listenpacket NETWORK ADDR   net.ListenPacket
//	raw ADDRESS cloexec|inherit socket(2), bind(2), listen(2) by hand
//	rebind FIRST SECOND         bind(2) one socket twice, by hand
//	netns ADDRESS               like raw, in a new network namespace
//	close FD                    close a listener opened above
//	spawn                       start a grandchild program helper
//	gc COMMAND...               pass a command to the grandchild
//	supported                   Supported() in here
//	fds                         what its descriptors are, comma-separated
//	exit                        wait for the grandchild, then exit
func runProgram() {
	p := &program{out: json.NewEncoder(os.Stdout), closers: map[int]func() error{}}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "gc" {
			p.relay(strings.Join(f[1:], " "))
			continue
		}
		if f[0] == "exit" {
			break
		}
		p.out.Encode(p.do(f))
	}
	if p.gc != nil {
		p.gcStdin.Close()
		p.gc.Wait()
	}
	os.Exit(0)
}

func (p *program) do(f []string) reply {
	arg := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	fail := func(err error) reply { return reply{Err: err.Error()} }
	switch f[0] {
	case "listen":
		ln, err := net.Listen(arg(1), arg(2))
		if err != nil {
			return fail(err)
		}
		fd := rawFd(ln.(interface {
			SyscallConn() (syscall.RawConn, error)
		}))
		p.closers[fd] = ln.Close
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "pid=%d\n", os.Getpid())
				c.Close()
			}
		}()
		return reply{Fd: fd, Addr: ln.Addr().String(), Pid: os.Getpid()}
	case "listenpacket":
		pc, err := net.ListenPacket(arg(1), arg(2))
		if err != nil {
			return fail(err)
		}
		fd := rawFd(pc.(interface {
			SyscallConn() (syscall.RawConn, error)
		}))
		p.closers[fd] = pc.Close
		return reply{Fd: fd, Addr: pc.LocalAddr().String(), Pid: os.Getpid()}
	case "raw":
		ap, err := net.ResolveTCPAddr("tcp4", arg(1))
		if err != nil {
			return fail(err)
		}
		flags := unix.SOCK_STREAM
		if arg(2) == "cloexec" {
			flags |= unix.SOCK_CLOEXEC
		}
		fd, err := unix.Socket(unix.AF_INET, flags, 0)
		if err != nil {
			return fail(err)
		}
		sa := &unix.SockaddrInet4{Port: ap.Port, Addr: [4]byte(ap.IP.To4())}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return fail(fmt.Errorf("bind: %w", err))
		}
		if err := unix.Listen(fd, 16); err != nil {
			unix.Close(fd)
			return fail(fmt.Errorf("listen: %w", err))
		}
		p.closers[fd] = func() error { return unix.Close(fd) }
		return reply{Fd: fd, Pid: os.Getpid()}
	case "netns":
		done := make(chan reply, 1)
		go func() {
			// Never unlocked: the thread leaves the process with its
			// namespace. The socket stays in the shared descriptor table.
			runtime.LockOSThread()
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				done <- fail(fmt.Errorf("unshare: %w", err))
				return
			}
			done <- p.do([]string{"raw", arg(1), "cloexec"})
		}()
		return <-done
	case "rebind":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		p.closers[fd] = func() error { return unix.Close(fd) }
		for _, a := range f[1:3] {
			ap, err := net.ResolveTCPAddr("tcp4", a)
			if err != nil {
				return fail(err)
			}
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: ap.Port, Addr: [4]byte(ap.IP.To4())}); err != nil {
				return reply{Fd: fd, Pid: os.Getpid(), Err: fmt.Sprintf("bind %s: %v", a, err)}
			}
		}
		return reply{Fd: fd, Pid: os.Getpid()}
	case "close":
		fd, _ := strconv.Atoi(arg(1))
		c, ok := p.closers[fd]
		if !ok {
			return fail(fmt.Errorf("no listener at %d", fd))
		}
		delete(p.closers, fd)
		if err := c(); err != nil {
			return fail(err)
		}
		return reply{Fd: fd}
	case "spawn":
		exe, err := os.Executable()
		if err != nil {
			return fail(err)
		}
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), helperEnv+"=program")
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return fail(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return fail(err)
		}
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		p.gc, p.gcStdin, p.gcIn, p.gcOut = cmd, in, bufio.NewWriter(in), bufio.NewReader(out)
		return reply{Pid: cmd.Process.Pid}
	case "fds":
		fds, err := batontest.OpenFDs()
		if err != nil {
			return fail(err)
		}
		var links []string
		for _, fd := range slices.Sorted(maps.Keys(fds)) {
			links = append(links, fmt.Sprintf("%d=%s", fd, fds[fd]))
		}
		return reply{Addr: strings.Join(links, ",")}
	case "supported":
		if err := Supported(); err != nil {
			return fail(err)
		}
		return reply{}
	}
	return fail(fmt.Errorf("unknown command %q", f[0]))
}

// relay passes a command to the grandchild and its answer back.
func (p *program) relay(cmd string) {
	if p.gc == nil {
		p.out.Encode(reply{Err: "no grandchild"})
		return
	}
	p.gcIn.WriteString(cmd + "\n")
	p.gcIn.Flush()
	line, err := p.gcOut.ReadString('\n')
	if err != nil {
		p.out.Encode(reply{Err: "grandchild: " + err.Error()})
		return
	}
	os.Stdout.WriteString(line)
}

func rawFd(c interface {
	SyscallConn() (syscall.RawConn, error)
}) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}
