//go:build !linux

package fdpass

import (
	"context"
	"fmt"
	"net"
	"runtime"
)

func errOS() error {
	return fmt.Errorf("fdpass: %w on %s: passing descriptors is implemented for Linux only", ErrNotSupported, runtime.GOOS)
}

// Send is not supported on this platform.
func Send(ctx context.Context, conn *net.UnixConn, fds []FD) error { return errOS() }

// SendAllow is not supported on this platform.
func SendAllow(ctx context.Context, conn *net.UnixConn, fds []FD, allow func(Cred) error) error {
	return errOS()
}

// Recv is not supported on this platform.
func Recv(ctx context.Context, conn *net.UnixConn, lim Limits) ([]FD, error) { return nil, errOS() }

// PeerCred is not supported on this platform.
func PeerCred(conn *net.UnixConn) (Cred, error) { return Cred{}, errOS() }

// CheckPeer is not supported on this platform.
func CheckPeer(conn *net.UnixConn) (Cred, error) { return Cred{}, errOS() }
