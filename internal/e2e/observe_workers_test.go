package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton"
)

// openFDs: the fds worker opens this many descriptors (default 900).
const openFDs = "E2E_OPEN_FDS"

// observeWorker runs the workers the kernel-view tests need:
//
//   - stall takes the listener but never accepts, so connections wait in
//     the accept queue;
//   - leak accepts, reads each connection until EOF and never closes it,
//     so every connection a client closes stays in CLOSE-WAIT;
//   - fds lowers its soft RLIMIT_NOFILE to the 1024 default and opens
//     E2E_OPEN_FDS descriptors.
//
// Each reports ready and exits when asked to stop.
func observeWorker(mode string) error {
	switch mode {
	case "stall":
		// fd 3 is the listener; holding it without accepting is the point.
	case "leak":
		ln, err := baton.Listener("http", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go leak(ln)
	case "fds":
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
		lim.Cur = 1024
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
		n, err := strconv.Atoi(os.Getenv(openFDs))
		if err != nil {
			n = 900
		}
		for i := range n {
			f, err := os.Open(os.DevNull)
			if err != nil {
				return fmt.Errorf("opening descriptor %d of %d: %w", i+1, n, err)
			}
			held = append(held, f)
		}
	}
	if err := baton.Ready(); err != nil {
		return err
	}
	<-baton.Stopping()
	return nil
}

// held keeps what the workers must never close reachable: a finalizer
// would close it otherwise.
var held []any

var heldConns = make(chan net.Conn, 1024)

func leak(ln net.Listener) {
	go func() {
		for c := range heldConns {
			held = append(held, c)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				fmt.Fprintln(os.Stderr, "worker: accept:", err)
			}
			return
		}
		heldConns <- c
		go io.Copy(io.Discard, c) // reads until the client's FIN, then never closes
	}
}
