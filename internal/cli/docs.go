package cli

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-dev/baton/internal/manpage"
)

// newGenManCmd is `baton gen-man --dir DIR`, hidden: it writes a manual
// page for every command (baton.1, baton-run.1, ...) from their help, for
// make install and make deb.
func newGenManCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:    "gen-man --dir DIR",
		Short:  "Write a manual page for every command into DIR",
		Hidden: true,
		Args:   noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			date, err := sourceDate(os.Getenv("SOURCE_DATE_EPOCH"))
			if err != nil {
				return &usageError{err: err}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			h := manpage.Header{Section: "1", Date: date, Source: "baton " + Version, Manual: "baton manual"}
			files, err := manpage.WriteTree(c.Root(), h, manOptions, dir)
			for _, f := range files {
				fmt.Fprintln(c.OutOrStdout(), f)
			}
			return err
		},
	}
	c.Flags().StringVar(&dir, "dir", ".", "the directory to write the pages into")
	return c
}

// sourceDate is the date the pages carry: SOURCE_DATE_EPOCH (seconds,
// https://reproducible-builds.org/specs/source-date-epoch/) when set, so
// that a build of the same source makes the same pages; today otherwise.
func sourceDate(epoch string) (time.Time, error) {
	if epoch == "" {
		return time.Now(), nil
	}
	n, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", epoch)
	}
	return time.Unix(n, 0), nil
}

// manOptions are the sections of the manual pages that no --help has.
var manOptions = manpage.Options{
	Extra: map[string][]manpage.Section{
		"baton": {
			{Title: "EXIT STATUS", Text: `0 success; 1 the operation failed (address in use, a failed reload, no
baton answering); 2 a usage error (a bad flag, an invalid listener), reported
before anything is bound or started; 3 (baton status and baton top --count)
baton answered and the service is degraded.`},
			{Title: "ENVIRONMENT", Text: `NOTIFY_SOCKET
  baton run tells its own service manager READY=1, RELOADING=1, STOPPING=1
  and MAINPID= there (Type=notify or Type=notify-reload).
LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
  sockets handed to baton run itself (a socket unit, or its fd store after a
  restart): each goes to the listener named by FileDescriptorName= or with its
  address; baton binds only the others, and removes these variables.
FDSTORE
  with it (systemd 254 and later set it from FileDescriptorStoreMax=; set
  Environment=FDSTORE=N before), baton keeps its listeners in systemd's fd
  store, named baton/NAME (baton/NAME/SLOT for reuseport): a restart of baton
  closes no socket.
XDG_RUNTIME_DIR, TMPDIR
  where the control socket goes when baton does not run as root.`},
			{Title: "FILES", Text: `/etc/baton/NAME.toml
  the configuration of the instance baton@NAME.service runs.
/run/baton/NAME.sock
  the control socket of instance NAME, as root.
/lib/systemd/system/baton@.service, /lib/systemd/system/baton@.socket
  the units of the Debian package: an instance per configuration file.`},
		},
		"baton run": {
			{Title: "SOCKET ACTIVATION", Text: `Started with sockets (LISTEN_FDS, with LISTEN_PID baton's pid: a systemd
socket unit, systemd-socket-activate), baton takes each for the listener named
by its FileDescriptorName= or, failing that, the listener with its address and
type; it checks the socket's type, address, that it listens, SO_REUSEPORT for
balance=reuseport and the backlog in effect (a difference is a warning), and
binds only the listeners it was not given. A socket that matches no listener,
or is named after one and differs from it, stops baton with its address and
the fix. baton removes LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID from its
environment: its workers get their own.`},
			{Title: "THE FD STORE", Text: `When systemd keeps a file descriptor store for baton (FileDescriptorStoreMax=,
which systemd 254 and later pass as FDSTORE; set Environment=FDSTORE= before),
baton stores every listening socket once bound (FDSTORE=1, FDNAME=baton/NAME,
baton/NAME/SLOT for the slots of a reuseport listener) and removes those a
reload or a scale drops (FDSTOREREMOVE=1). After a restart it takes them back
from LISTEN_FDS: the sockets never close, and connections made while no baton
ran are answered by the next one. Stored sockets the configuration no longer
has are dropped from the store. A UDP listener that keeps its flows (flows=auto
or on) is bound again instead: its sockets belong to generations.
FileDescriptorStorePreserve=yes (systemd 254) keeps the store across a stop
too.`},
		},
	},
	SeeAlso: map[string][]string{
		"baton":     {"systemd.service(5)", "systemd.socket(5)", "sd_notify(3)", "sd_listen_fds(3)"},
		"baton run": {"systemd.socket(5)", "sd_listen_fds(3)"},
	},
}
