package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"golang.org/x/net/netutil"
)

// MaxConns bounds the metrics connections served at once: each costs
// baton a descriptor and a goroutine, and whoever can reach the address
// (it may be every interface) must not exhaust baton's descriptors, which
// its listeners, workers and fd store need. Further clients wait in the
// listen backlog.
const MaxConns = 32

// Server serves /metrics over HTTP.
type Server struct {
	ln  net.Listener
	srv *http.Server
	log *slog.Logger
}

// Listen binds addr (HOST:PORT, or :PORT for every address) for the
// metrics server; Serve then serves h at /metrics. Binding first lets
// `baton run` fail before it starts any worker.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError(addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "baton: metrics are at /metrics")
	})
	return &Server{
		ln:  netutil.LimitListener(ln, MaxConns),
		log: log,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       10 * time.Second,
			MaxHeaderBytes:    16 << 10,
			WriteTimeout:      ScrapeTimeout + 10*time.Second,
			// A kept-alive connection is dropped soon after its scrape:
			// idle ones must not keep the scraper out of MaxConns.
			IdleTimeout: 5 * time.Second,
			ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
	}, nil
}

// listenError says why the metrics address addr could not be bound, and
// what to do: it names the flag, as the address comes from --metrics (or
// the metrics key, which has the same name).
func listenError(addr string, err error) error {
	hint := ""
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		_, port, _ := net.SplitHostPort(addr)
		hint = fmt.Sprintf(": another process serves on it; choose another --metrics address (ss -ltnp 'sport = :%s' names that process)", port)
	case errors.Is(err, syscall.EACCES):
		hint = ": ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port such as 9100"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		hint = ": no interface of this host has that address; use 127.0.0.1, an address of this host (ip -brief address), or :PORT for every address"
	default:
		var dns *net.DNSError
		var ae *net.AddrError
		switch {
		case errors.As(err, &dns):
			hint = ": the host name does not resolve; give an IP address such as 127.0.0.1"
		case errors.As(err, &ae):
			hint = ": want HOST:PORT with a port from 0 to 65535, for example 127.0.0.1:9100"
		}
	}
	return fmt.Errorf("--metrics %s: %w%s", addr, err, hint)
}

// Addr is the bound address, with the real port when addr said 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Close.
func (s *Server) Serve() {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("metrics server stopped", "err", err)
	}
}

// Close stops serving, giving scrapes in progress a second to finish. It
// closes the listening socket also when Serve never ran.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	s.ln.Close() // already closed if Serve ran
	return err
}
