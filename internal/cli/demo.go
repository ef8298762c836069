package cli

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-dev/baton"
)

func newDemoCmd() *cobra.Command {
	var addr string
	c := &cobra.Command{
		Use:   "demo",
		Short: "A small HTTP server built on baton's worker library, to run under baton",
		Long: `An HTTP server that says which generation, slot and pid answered, built on
baton's Go library (baton.Serve): it takes the listener named "http" (or the
only one) from baton, sends READY=1, and on SIGTERM drains without losing a
request. Run outside baton it listens on --addr itself.

  GET /            hello from generation G, slot S, pid P (outside baton:
                   not run by baton, listening on --addr, pid P)
  GET /slow?ms=N   answers after N milliseconds (at most 60000)

  baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- baton demo`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "hello from baton demo: %s\n", demoWho())
			})
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
				time.Sleep(time.Duration(min(max(ms, 0), 60000)) * time.Millisecond)
				fmt.Fprintf(w, "slow answer after %dms from pid %d\n", ms, os.Getpid())
			})
			srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			return baton.Serve(srv)
		},
	}
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "address to listen on when not run by baton")
	return c
}

// demoWho says who answered: the generation, slot and pid under baton;
// outside baton, which has neither generation nor slot, that it listens
// on its own address.
func demoWho() string {
	if baton.Generation() < 0 {
		return fmt.Sprintf("not run by baton (listening on --addr itself), pid %d", os.Getpid())
	}
	return fmt.Sprintf("generation %d, slot %d, pid %d", baton.Generation(), baton.Slot(), os.Getpid())
}
