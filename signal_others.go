//go:build !linux

package baton

import (
	"os"
	"syscall"
)

// stopSignals are the signals that close Stopping's channel: SIGTERM and
// SIGINT (os.Interrupt) where the system has them. BATON_STOP_SIGNAL is
// ignored: baton, which sets it, runs on Linux.
func stopSignals(name string) []os.Signal {
	return []os.Signal{syscall.SIGTERM, os.Interrupt}
}
