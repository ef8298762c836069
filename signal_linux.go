package baton

import (
	"os"

	"golang.org/x/sys/unix"
)

// stopSignals are the signals that close Stopping's channel: SIGTERM,
// SIGINT, and the one named (BATON_STOP_SIGNAL, "SIGQUIT"), if any.
func stopSignals(name string) []os.Signal {
	sigs := []os.Signal{unix.SIGTERM, unix.SIGINT}
	if name != "" {
		if sig := unix.SignalNum(name); sig != 0 {
			sigs = append(sigs, sig)
		}
	}
	return sigs
}
