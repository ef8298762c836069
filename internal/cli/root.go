package cli

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/config"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=...".
var Version = "dev"

// Exit codes of baton's commands, as the README and `baton status
// --help` list them.
const (
	// exitFailed: the operation failed, or no baton answered.
	exitFailed = 1
	// exitUsage: an error in what the user typed.
	exitUsage = 2
	// exitDegraded: baton status (and top --count) answered, and the
	// service is degraded (api.HealthDegraded).
	exitDegraded = 3
)

// exitError is an error with an exit code of its own.
type exitError struct {
	code int
	err  error
}

// Error is the error's own message.
func (e *exitError) Error() string { return e.err.Error() }

// Unwrap returns the error.
func (e *exitError) Unwrap() error { return e.err }

// usageError marks an error in what the user typed; it exits 2.
type usageError struct {
	err error
	// help, when set, is the command whose usage Main prints before the
	// error (a bare `baton`).
	help *cobra.Command
}

// Error is the error's own message.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns the error in what the user typed.
func (e *usageError) Unwrap() error { return e.err }

// usagef is a usageError formatted as fmt.Errorf formats.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// Main runs the command line and returns the exit code: 0 success, 1 the
// operation failed, 2 a usage error, 3 a degraded service (baton status;
// see the package doc).
func Main(args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) && ue.help != nil {
		// What the user typed was nothing to run: the help says what is.
		ue.help.SetOut(stderr)
		ue.help.Usage()
		fmt.Fprintln(stderr)
	}
	writeWithin(stderr, fmt.Sprintln("baton:", err), finalWriteTimeout)
	return exitCode(err)
}

// finalWriteTimeout bounds the last error's write (writeWithin).
const finalWriteTimeout = time.Second

// writeWithin writes s to w, giving up after d: baton run's stderr may be
// a pipe whose reader has stopped (everything else baton run writes goes
// through buffers that never block: internal/outbuf), and an exit must
// not wait for that reader. A write still blocked ends with the process.
func writeWithin(w io.Writer, s string, d time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.WriteString(w, s)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// exitCode is the exit code for a command's error: 2 for a usage error,
// an exitError's own, else 1.
func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailed
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "baton",
		Short: "Zero-downtime socket manager: hold the listeners, run and reload the workers",
		Long: `baton binds every listening socket once and holds it for as long as it runs.
Worker processes in any language accept on the inherited sockets (the systemd
socket-activation protocol: LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), and a
reload swaps worker generations without one refused or reset connection.

  baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- ./server
  baton reload          # start a new generation, drain the old one
  baton status          # listeners, workers and the kernel's view of them
  baton top             # the same, refreshing
  baton logs -f         # the workers' output and baton's log, following
  baton stop            # drain every worker and exit`,
		Version:       versionLine(),
		SilenceUsage:  true,
		SilenceErrors: true,
		// Args and RunE make the root a command of its own, so that
		// cobra hands it what it does not know instead of answering
		// with an error of its own (exit 1) or the help (exit 0):
		// `baton frobnicate` and a bare `baton` are usage errors.
		Args: unknownCommand,
		RunE: func(c *cobra.Command, _ []string) error {
			return &usageError{err: errors.New("missing command: name one of the commands above, for example baton run"), help: c}
		},
	}
	root.SuggestionsMinimumDistance = 2
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(newRunCmd(), newCheckCmd(), newReloadCmd(), newScaleCmd(), newUpgradeCmd(), newStatusCmd(), newTopCmd(), newLogsCmd(), newStopCmd(), newDemoCmd(), newVersionCmd())
	root.SetHelpCommand(newHelpCmd(root))
	// `baton completion bash|zsh|fish` is cobra's, listed in the help;
	// gen-man (hidden) writes the manual pages (docs.go).
	root.AddCommand(newGenManCmd())
	setHelpWidth(root)
	return root
}

// noArgs rejects positional arguments with a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q (see baton %s --help)", c.Name(), strings.Join(args, " "), c.Name())
	}
	return nil
}

// maxSocketPath is the longest unix socket path the kernel accepts:
// sun_path holds it and its terminating NUL.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// controlFlags are how client commands and run find the control socket.
type controlFlags struct {
	path   string
	name   string
	config string
	cmd    *cobra.Command
}

func (f *controlFlags) register(c *cobra.Command) {
	f.cmd = c
	c.Flags().StringVarP(&f.config, "config", "c", "", "find the control socket from this config file's name or control")
	c.Flags().StringVar(&f.path, "control", "", "control socket path (default /run/baton/NAME.sock as root, else $XDG_RUNTIME_DIR/baton/NAME.sock, else $TMPDIR/baton-UID/NAME.sock)")
	c.Flags().StringVar(&f.name, "name", "baton", "instance name: picks the control socket file, so several batons can run")
}

// socketPath resolves the control socket path.
func (f *controlFlags) socketPath() (string, error) {
	if f.config != "" {
		l, err := config.Load(f.config, nil, nil, nil)
		if err != nil {
			return "", &usageError{err: err}
		}
		if !f.cmd.Flags().Changed("name") {
			f.name = l.Name
		}
		if !f.cmd.Flags().Changed("control") && l.Control != "" {
			f.path = l.Control
		}
	}
	p := f.path
	if p == "" {
		if strings.ContainsAny(f.name, "/\x00") || f.name == "" || f.name == "." || f.name == ".." {
			return "", usagef("--name %q: want a plain name such as web or api", f.name)
		}
		p = config.DefaultControlPath(f.name)
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if len(p) > maxSocketPath {
		return "", usagef("control socket path %s is %d bytes; the kernel allows at most %d: pass a shorter --control", p, len(p), maxSocketPath)
	}
	return p, nil
}
