// Command fcgihello is the FastCGI twin of examples/hello for `make bench`:
// it serves FastCGI responder requests on the listening socket it finds as
// fd 0 (the convention of spawn-fcgi and of baton's --fd0) and answers
// every request with "hello". Under baton with --ready notify it reports
// ready; elsewhere that is a no-op.
//
//	spawn-fcgi -n -a 127.0.0.1 -p 9000 -- ./fcgihello
//	baton run -l fcgi=tcp://127.0.0.1:9000 --fd0 fcgi -n 1 --ready notify -- ./fcgihello
package main

import (
	"fmt"
	"log"
	"net/http"
	"net/http/fcgi"
	"os"

	"github.com/baton-dev/baton"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: fcgihello (the FastCGI socket is fd 0)")
		os.Exit(2)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello from pid %d\n", os.Getpid())
	})
	if err := baton.Ready(); err != nil {
		log.Printf("fcgihello: READY=1: %v", err)
	}
	// A nil listener: fcgi.Serve accepts on fd 0.
	if err := fcgi.Serve(nil, h); err != nil {
		log.Fatal(err)
	}
}
