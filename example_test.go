package baton_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/baton-dev/baton"
)

// A whole worker: under baton it serves on the inherited "http" socket,
// reports ready and drains on SIGTERM; alone it listens on 127.0.0.1:8080.
func Example() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from slot %d\n", baton.Slot())
	})
	log.Fatal(baton.Serve(&http.Server{Addr: "127.0.0.1:8080"}))
}

func ExampleServe() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello\n")
	})
	// Under baton: serves on the inherited "http" socket, sends READY=1,
	// drains on SIGTERM. Alone: listens on 127.0.0.1:8080.
	if err := baton.Serve(&http.Server{Addr: "127.0.0.1:8080"}); err != nil {
		fmt.Println(err)
	}
}

// Serving every inherited stream socket with one http.Server, with a
// longer drain window.
func ExampleServeOptions_ServeListeners() {
	all, err := baton.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	if len(all) == 0 { // not under baton: listen ourselves
		ln, err := net.Listen("tcp", "127.0.0.1:8080")
		if err != nil {
			log.Fatal(err)
		}
		all = map[string]net.Listener{"http": ln}
	}
	var lns []net.Listener
	for _, ln := range all {
		lns = append(lns, ln)
	}
	opts := baton.ServeOptions{DrainWindow: 5 * time.Second}
	log.Fatal(opts.ServeListeners(&http.Server{Handler: http.DefaultServeMux}, lns...))
}

// A server that accepts on its own: it takes its socket, reports ready,
// and stops accepting on the stop signal by closing its listener (never
// shutdown(2), which would reset what is queued for the next generation).
func ExampleListener() {
	ln, err := baton.Listener("web", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	baton.Ready()
	go func() {
		<-baton.Stopping()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed: draining
		}
		go func() { io.WriteString(c, "hi\n"); c.Close() }()
	}
}

// Code that is handed its Worker, rather than calling the package-level
// functions, takes a *baton.Worker; a program passes it Default().
func ExampleWorker() {
	echo := func(w *baton.Worker) error {
		ln, err := w.Listener("echo", "127.0.0.1:7000")
		if err != nil {
			return err
		}
		go func() {
			<-w.Stopping()
			ln.Close()
		}()
		if err := w.Ready(); err != nil {
			return err
		}
		w.Status(fmt.Sprintf("echoing in slot %d", w.Slot()))
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil // closed: draining
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}
	if err := echo(baton.Default()); err != nil {
		log.Fatal(err)
	}
}

// A line-based server whose connections survive a reload: on the stop
// signal each connection stops at a line boundary and is handed to baton
// with what was read and not processed; the next generation adopts it and
// reads on. examples/chat is a complete one.
func ExampleHandoff() {
	ln, err := baton.Listener("lines", "127.0.0.1:9000")
	if err != nil {
		log.Fatal(err)
	}
	stop := baton.Stopping()
	adopted := baton.Adopted() // before Ready: the subscription must be open when the old generation stops

	var wg sync.WaitGroup
	serve := func(c net.Conn, pending []byte) {
		defer wg.Done()
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case <-stop:
				c.SetReadDeadline(time.Now()) // interrupts the Read below
			case <-done:
			}
		}()
		r := bufio.NewReader(io.MultiReader(bytes.NewReader(pending), c))
		for {
			line, err := r.ReadString('\n')
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Stopped between lines: hand the connection on with the
				// bytes read and not processed (line, and what r holds).
				buffered, _ := r.Peek(r.Buffered())
				c.SetReadDeadline(time.Time{})
				if err := baton.Handoff(c, append([]byte(line), buffered...)); err != nil {
					c.Close() // not under baton, or baton refused: close instead
				}
				return
			}
			if err != nil {
				c.Close()
				return
			}
			fmt.Fprintf(c, "got %s", line)
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for a := range adopted { // closed when baton stops this worker
			wg.Add(1)
			go serve(a.Conn, a.State)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed: draining
			}
			wg.Add(1)
			go serve(c, nil)
		}
	}()
	baton.Ready()
	<-stop
	ln.Close() // never shutdown(2): the socket is shared with the next generation
	wg.Wait()
}
