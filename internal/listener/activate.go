package listener

import (
	"errors"
	"strconv"
	"strings"
)

// ErrHanded is wrapped by the errors Match returns for a socket the
// service manager handed baton that baton cannot use: one that matches no
// listener, or is named after a listener and differs from it.
var ErrHanded = errors.New("socket handed by the service manager")

// StorePrefix starts the name (FDNAME) of every socket baton keeps in its
// service manager's file descriptor store. A handed socket whose name
// starts with it is baton's own, from the store: one this configuration
// no longer has is dropped from the store. Any other handed socket comes
// from a socket unit (or systemd-socket-activate), and one baton cannot
// use is an error. Listener names cannot contain '/', so these names
// never collide with one.
const StorePrefix = "baton/"

// StoreName is the name under which baton keeps a listener's socket in
// the fd store: "baton/NAME" for a shared listener's one socket,
// "baton/NAME/SLOT" for the socket of reuseport slot SLOT (slot >= 0).
func StoreName(listener string, slot int) string {
	if slot < 0 {
		return StorePrefix + listener
	}
	return StorePrefix + listener + "/" + strconv.Itoa(slot)
}

// ParseStoreName reads a name StoreName made: the listener's name and
// its slot (-1 for a shared listener's socket). ok is false for any other
// name.
func ParseStoreName(fdname string) (listener string, slot int, ok bool) {
	rest, ok := strings.CutPrefix(fdname, StorePrefix)
	if !ok {
		return "", 0, false
	}
	name, num, hasSlot := strings.Cut(rest, "/")
	if checkName(name) != nil {
		return "", 0, false
	}
	if !hasSlot {
		return name, -1, true
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || strconv.Itoa(n) != num {
		return "", 0, false
	}
	return name, n, true
}

// Stale is a socket from the fd store that this configuration does not
// use. Match has closed baton's copy; the caller removes it from the
// store (FDSTOREREMOVE=1 with FDNAME=Name, which removes every entry of
// that name), so that the socket really closes.
type Stale struct {
	// Name is the socket's name in the store.
	Name string
	// Address is where it is bound ("tcp 127.0.0.1:8080"), for the log.
	Address string
	// Reason says why it is not used.
	Reason string
}
