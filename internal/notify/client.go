package notify

import (
	"fmt"
	"net"
	"os"
)

// Notify sends state ("READY=1", "STATUS=draining\nSTOPPING=1") to the
// socket named by NOTIFY_SOCKET. It returns false and no error when
// NOTIFY_SOCKET is unset (not supervised), true when the datagram was
// sent, and false with an error when sending failed.
func Notify(state string) (bool, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	return true, Send(addr, state)
}

// Send sends one notification datagram to addr, a path or "@abstract".
func Send(addr, state string) error {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	return nil
}
