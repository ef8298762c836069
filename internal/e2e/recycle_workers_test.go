package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/baton-dev/baton"
)

// Knobs of the recycling workers:
const (
	// maxRequestsEnv: the maxreq worker exits with status 0 after
	// answering this many requests, as php-cgi does after
	// PHP_FCGI_MAX_REQUESTS (500 unless set).
	maxRequestsEnv = "E2E_MAX_REQUESTS"
	// leakEnv: the leak-rss worker keeps this many more bytes resident
	// for each request it answers (64 KiB unless set), up to 1 GiB.
	leakEnv = "E2E_LEAK_BYTES"
)

// recycleWorker runs the workers of the recycling tests:
//
//   - maxreq, a program that recycles itself like php-cgi: it accepts on
//     fd 3 one connection at a time, answers one request on each with
//     Connection: close, and exits 0 after E2E_MAX_REQUESTS of them. It
//     knows nothing of readiness; on SIGTERM it stops accepting, finishes
//     the request it has, and exits 0.
//   - leak-rss, a baton.Serve worker that keeps E2E_LEAK_BYTES more
//     memory resident for each request: baton's --max-rss must replace
//     it.
func recycleWorker(mode string) error {
	switch mode {
	case "maxreq":
		return maxRequestsWorker()
	case "leak-rss":
		return leakingWorker()
	}
	return fmt.Errorf("unknown recycling worker mode %q", mode)
}

func maxRequestsWorker() error {
	limit, err := strconv.Atoi(os.Getenv(maxRequestsEnv))
	if err != nil || limit <= 0 {
		limit = 500
	}
	ln, err := baton.Listener("http", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var stopping atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		<-sigs
		stopping.Store(true)
		ln.Close() // our copy: the socket stays with baton and the others
	}()
	for served := 0; served < limit; served++ {
		c, err := ln.Accept()
		if err != nil {
			if stopping.Load() {
				return nil
			}
			return err
		}
		answerOnce(c, served+1, limit)
	}
	return nil // the request limit: exit 0, as php-cgi does
}

// answerOnce reads one request on c, answers it and closes c.
func answerOnce(c net.Conn, n, limit int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	req.Body.Close()
	body := fmt.Sprintf("ok pid %d request %d of %d\n", os.Getpid(), n, limit)
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

// leaked holds what the leak-rss worker keeps resident.
var (
	leakMu sync.Mutex
	leaked [][]byte
	total  int
)

func leakingWorker() error {
	per, err := strconv.Atoi(os.Getenv(leakEnv))
	if err != nil || per <= 0 {
		per = 64 << 10
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		leakMu.Lock()
		if total < 1<<30 {
			b := make([]byte, per)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1 // resident, not only reserved
			}
			leaked = append(leaked, b)
			total += per
		}
		n := total
		leakMu.Unlock()
		fmt.Fprintf(w, "ok pid %d holds %d bytes\n", os.Getpid(), n)
	})
	return baton.Serve(&http.Server{Handler: mux})
}
