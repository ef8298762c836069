package fdpass_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/baton-dev/baton/internal/fdpass"
)

// A listener goes from one process to another with its name and
// address; here both ends of the socket are in one process.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Any connected unix stream socket will do: baton uses its control
	// socket.
	dir, _ := os.MkdirTemp("", "fdpass-example")
	defer os.RemoveAll(dir)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: dir + "/s", Net: "unix"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		fds, err := fdpass.Recv(ctx, c, fdpass.Limits{MaxFDs: 64})
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, f := range fds {
			fmt.Printf("received %s (%s): %s\n", f.Name, f.Kind, f.Meta)
			// The new owner would now serve on f.Fd.
			os.NewFile(uintptr(f.Fd), f.Name).Close()
		}
	}()

	http, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer http.Close() // only after Send has returned: the receiver holds its own copy
	raw, _ := http.(*net.TCPListener).SyscallConn()
	var fd int
	raw.Control(func(s uintptr) { fd = int(s) }) // valid while http is open

	c, err := net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	err = fdpass.Send(ctx, c, []fdpass.FD{{Fd: fd, Name: "http", Kind: "listener", Meta: []byte("tcp://127.0.0.1")}})
	<-done
	fmt.Println("sent:", err)
	// Output:
	// received http (listener): tcp://127.0.0.1
	// sent: <nil>
}
