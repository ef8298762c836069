// Command baton is a zero-downtime socket manager: it binds listening
// sockets once, runs worker processes of any language on them, and reloads
// them without dropping a connection. See `baton --help`.
package main

import (
	"os"

	"github.com/baton-dev/baton/internal/cli"
	"github.com/baton-dev/baton/internal/spawn"
)

func main() {
	// A worker is started as a re-exec of baton that becomes the real
	// command; that must happen before anything else runs.
	spawn.RunShim()
	// The main thread forks every worker; the command line runs beside it.
	spawn.Main(func() int { return cli.Main(os.Args[1:], os.Stdout, os.Stderr) })
}
