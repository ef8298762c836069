package baton

import (
	"os"
	"sync"
	"testing"

	"github.com/baton-dev/baton/internal/spawn"
)

// The test binary doubles as the worker processes some tests start (STYLE
// point 6): with childEnv set it reports what the library sees of the
// sockets it was given, with handoffChildEnv it hands off or adopts
// connections.
func TestMain(m *testing.M) {
	spawn.RunShim() // children are started through baton's shim
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	if mode := os.Getenv(handoffChildEnv); mode != "" {
		os.Exit(handoffChild(mode))
	}
	os.Exit(m.Run())
}

// spawner starts the tests' worker processes. A process has one: its
// reaper collects every child, so a second Spawner would never learn that
// its children exited.
var spawner = sync.OnceValue(spawn.New)
