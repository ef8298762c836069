// Command selfbind is an HTTP server that knows nothing of baton: it binds
// its own port with net.Listen, as most programs do. Under
// `baton run --capture-bind` its bind of a listener's address gets baton's
// socket, so two generations share the port and a reload drops nothing.
//
// It drains the way shared/DESIGN.md says a Go server must, without baton's
// library: on SIGTERM it closes its listener, waits until Serve has
// returned, answers with "Connection: close" for a short window so that
// keep-alive clients move to a new connection, then shuts down.
//
// From the top of the repository, after make build:
//
//	bin/baton run --capture-bind --ready bind -l http=tcp://127.0.0.1:8080 -n 2 -- bin/selfbind -addr 127.0.0.1:8080
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	admin := flag.String("admin", "", "optional second address, with a plain status page")
	window := flag.Duration("drain-window", time.Second, "how long to answer with Connection: close before shutting down")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if *admin != "" {
		aln, err := net.Listen("tcp", *admin)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(aln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "admin of pid %d\n", os.Getpid())
		}))
	}

	var draining atomic.Bool
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprintf(w, "hello from pid %d\n", os.Getpid())
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	draining.Store(true)
	ln.Close()
	<-served // no connection is left between Accept and the server's tracking
	time.Sleep(*window)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
}
