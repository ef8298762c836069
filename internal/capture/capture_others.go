//go:build !linux

package capture

import (
	"context"
	"fmt"
	"os"
	"runtime"
)

func errOS() error {
	return fmt.Errorf("%w on %s: it needs Linux seccomp user notification (Linux 5.9 or later); run programs that accept on inherited sockets (LISTEN_FDS) instead",
		ErrNotSupported, runtime.GOOS)
}

// Supported reports that bind capture is Linux only.
func Supported() error { return errOS() }

// InstallAndSend reports that bind capture is Linux only.
func InstallAndSend(sock int) error { return errOS() }

// InstallFromEnv returns false and nil when EnvFD is not set, and an error
// otherwise: bind capture is Linux only.
func InstallFromEnv() (bool, error) {
	if _, ok := os.LookupEnv(EnvFD); !ok {
		return false, nil
	}
	return true, errOS()
}

// ReceiveNotifFd reports that bind capture is Linux only.
func ReceiveNotifFd(sock int) (int, error) { return -1, errOS() }

// Socketpair reports that bind capture is Linux only.
func Socketpair() (baton, shim int, err error) { return -1, -1, errOS() }

// Serve reports that bind capture is Linux only.
func Serve(ctx context.Context, notifFd int, held []Listener, events func(Event)) error {
	return errOS()
}
