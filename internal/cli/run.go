package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/instance"
	"github.com/baton-dev/baton/internal/upgrade"
	"github.com/baton-dev/baton/internal/watch"
)

func newRunCmd() *cobra.Command {
	var flags config.Settings
	var configPath, takeoverPath string
	var w watchFlags
	c := &cobra.Command{
		Use:   "run [flags] [--config FILE] -- COMMAND [ARGS...]",
		Short: "Bind the listeners and run N workers of COMMAND on them",
		Long: `Bind every listener once, then run --workers copies of COMMAND, each of
which receives the listeners as fds 3, 4, ... in the order given, with
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set (the systemd socket-activation
protocol) and NOTIFY_SOCKET, BATON_SOCKET, BATON_SLOT, BATON_GENERATION.

Listener addresses, --listen [NAME=]ADDRESS (repeatable):
  tcp://HOST:PORT  tcp4://HOST:PORT  tcp6://[::1]:PORT
  udp://HOST:PORT  udp4://HOST:PORT  udp6://[::1]:PORT
  unix:///absolute/path.sock  unix://@abstract  unixgram:///absolute/path
Port 0 picks a free port (see baton status). The name defaults to the scheme.
At least one listener is needed, unless --no-listeners says that the workers
run without sockets.
` + config.ListenerOptionsHelp() + `

--config FILE reads every setting from a TOML file (docs/config.md); each flag
has a key of the same name, and a flag given on the command line wins. A
reload re-reads the file: listeners that did not change keep their socket.

A worker that crashes, or cannot start, is restarted in its slot with
exponential backoff (100ms doubling to 30s). When a worker exits, what it
started and left running gets its stop signal, and SIGKILL at its drain
deadline. If baton dies, every worker receives the stop signal.

--watch PATH (repeatable) reloads when PATH changes and then stays unchanged
for --watch-settle (500ms): the workers' binary, the config file, a
` + "`current`" + ` symlink a deploy swings. A burst of changes is one reload, at most
one per settle time; a change whose reload fails (a config that does not
validate) changes nothing and logs a warning. Whoever can write PATH's
directory can trigger reloads: watch paths in directories only root can
write (docs/logs.md).

Signals:
` + signalHelp(),
		Example: `  baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- ./server
  baton run --config /etc/baton/web.toml
  baton run -l tcp://:9000 --fd0 tcp -- ./fastcgi-app
  baton run -l web=tcp://:80 -l 'admin=unix:///run/app/admin.sock?mode=0660' \
      --user www-data -- python3 app.py`,
		RunE: func(c *cobra.Command, args []string) error {
			paths, err := w.check()
			if err != nil {
				return err
			}
			return run(c, configPath, takeoverPath, &flags, args, paths, w.settle)
		},
	}
	fl := c.Flags()
	fl.SetInterspersed(false)
	fl.StringVarP(&configPath, "config", "c", "", "read the settings from this TOML file; flags given on the command line override it")
	fl.StringVar(&takeoverPath, "takeover", "", "take the listeners over from the baton whose control socket is PATH; it drains and exits once these workers are ready")
	fl.StringArrayVar(&w.paths, "watch", nil, "reload when this file (binary, config, symlink) changes and stays unchanged for --watch-settle; repeatable")
	fl.DurationVar(&w.settle, "watch-settle", watch.DefaultSettle, "how long a watched file must stay unchanged before the reload; also the least time between two such reloads")
	config.Register(fl, &flags)
	return c
}

// load reads the configuration (file and flags) and validates it; every
// error in what the user wrote is a usage error.
func load(configPath string, flags *config.Settings, fs *pflag.FlagSet, args []string) (*config.Resolved, error) {
	l, err := config.Load(configPath, flags, fs, args)
	if err != nil {
		return nil, &usageError{err: err}
	}
	r, err := l.Resolve()
	if err != nil {
		return nil, &usageError{err: err}
	}
	if err := checkListeners(r); err != nil {
		return nil, &usageError{err: err}
	}
	return r, nil
}

// checkListeners refuses a configuration without listeners unless it
// says that none are wanted (no_listeners): baton's workers would get no
// socket, and a program given none binds a port of its own (baton's
// library does, on its fallback address), which baton neither holds nor
// watches, and which a second worker cannot bind.
func checkListeners(r *config.Resolved) error {
	switch {
	case len(r.Specs) == 0 && !r.NoListeners:
		return &config.Error{Origin: r.Origin("listen"), Msg: "no listeners: the workers would get no socket " +
			"(no LISTEN_FDS), and a program given none binds a port of its own (baton's library listens on its " +
			"fallback address), which baton does not hold: a reload cannot hand it over, and a second worker fails " +
			"with \"address already in use\"; give one with -l NAME=ADDRESS (for example -l http=tcp://0.0.0.0:8080, " +
			"or listen = [...] in the config file), or pass --no-listeners (no_listeners = true) to run workers " +
			"without sockets"}
	case len(r.Specs) > 0 && r.NoListeners:
		return &config.Error{Origin: r.Origin("no_listeners"), Msg: fmt.Sprintf("no_listeners is set, and %d listeners "+
			"are given: leave out one or the other", len(r.Specs))}
	}
	return nil
}

// run is `baton run`: the configuration read and checked, then a
// pre-flight (when a running baton checks this binary before an upgrade),
// or baton itself (internal/instance).
func run(c *cobra.Command, configPath, takeoverPath string, flags *config.Settings, args, watchPaths []string, settle time.Duration) error {
	loadConfig := func() (*config.Resolved, error) { return load(configPath, flags, c.Flags(), args) }
	// A previous baton may have re-executed itself as this binary (an
	// upgrade), or runs it to check that it could (the pre-flight).
	in, err := upgrade.Inherited()
	if err != nil {
		return err
	}
	if in != nil && in.Preflight {
		summary, err := instance.Preflight(in, func() error {
			_, err := loadConfig()
			return err
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.OutOrStdout(), "pre-flight ok: %s\n", summary)
		return nil
	}
	r, err := loadConfig()
	if err != nil {
		return err
	}
	return instance.Run(instance.Options{
		Config:     r,
		Load:       loadConfig,
		ConfigPath: configPath,
		Takeover:   takeoverPath,
		Watch:      watchPaths,
		Settle:     settle,
		Inherited:  in,
		Version:    Version,
	})
}

// watchFlags are --watch and --watch-settle.
type watchFlags struct {
	paths  []string
	settle time.Duration
}

// check makes the watched paths absolute (a reload or an upgrade may run
// in another directory) and refuses one that does not exist, or a
// settle time that is not positive: usage errors.
func (w *watchFlags) check() ([]string, error) {
	if w.settle <= 0 {
		return nil, usagef("--watch-settle %s: want a positive duration, such as 500ms", w.settle)
	}
	var paths []string
	for _, p := range w.paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, usagef("--watch %s: %v", p, err)
		}
		if _, err := os.Lstat(abs); err != nil {
			return nil, usagef("--watch %s: %v: give the binary, the config file or the symlink to watch", p, err)
		}
		paths = append(paths, abs)
	}
	return paths, nil
}

// signalHelp is the signal table (instance.SignalDocs) as `baton run
// --help` shows it.
func signalHelp() string {
	var b strings.Builder
	for _, row := range instance.SignalDocs() {
		first, indent := fmt.Sprintf("  %-17s", strings.Join(row.Names, " ")), strings.Repeat(" ", 20)
		if len(first) > 19 {
			b.WriteString(strings.TrimRight(first, " ") + "\n")
			first = indent
		}
		b.WriteString(strings.Join(wrap(row.Doc, 78, first, indent), "\n") + "\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}
