// Command hello is the smallest Go worker for baton: it serves HTTP on the
// socket baton passes it, reports ready, and drains on SIGTERM without
// losing a request, all through baton.Serve. Outside baton it listens on
// -addr itself.
//
// From the top of the repository, after make build:
//
//	bin/baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- bin/hello
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/baton-dev/baton"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on when not run by baton")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pid %d\n", os.Getpid())
	})
	if err := baton.Serve(&http.Server{Addr: *addr}); err != nil {
		log.Fatal(err)
	}
}
