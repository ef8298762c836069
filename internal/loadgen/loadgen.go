// Package loadgen is a strict HTTP/1.1 load client for baton's tests and
// benchmarks. Unlike net/http's client it never retries: a request that
// fails is counted, the way wrk and other non-retrying clients see it. It
// mixes keep-alive connections with a new connection per request, and it
// is always bounded by a duration and a request count.
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes a load.
type Config struct {
	Addr string // host:port
	Path string // default "/"
	// KeepAlive connections each send requests back to back on one
	// connection, reconnecting only when the server says Connection:
	// close. Close connections open a new connection per request.
	KeepAlive, Close int
	// Duration bounds the run; MaxRequests, if positive, bounds the
	// requests per connection loop.
	Duration    time.Duration
	MaxRequests int
	// Timeout bounds each connect, write and read (default 5s).
	Timeout time.Duration
}

// Result counts what happened.
type Result struct {
	Requests      int64 // answered with a complete response
	OK            int64 // ... with a 2xx status
	ConnectErrors int64
	WriteErrors   int64
	ReadErrors    int64 // reset, EOF before a complete response, bad response
	Timeouts      int64
	Non2xx        int64
	// Samples holds up to 10 distinct error messages.
	Samples []string
	// Latencies of answered requests, for percentiles.
	latencies []time.Duration
}

// Failed is the number of requests that did not get a 2xx answer.
func (r *Result) Failed() int64 {
	return r.ConnectErrors + r.WriteErrors + r.ReadErrors + r.Timeouts + r.Non2xx
}

// Percentile returns the p-th percentile latency (0 < p <= 100).
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
	i := int(float64(len(r.latencies)-1) * p / 100)
	return r.latencies[i]
}

func (r *Result) String() string {
	return fmt.Sprintf("%d requests, %d ok, %d failed (connect %d, write %d, read %d, timeout %d, non-2xx %d)",
		r.Requests, r.OK, r.Failed(), r.ConnectErrors, r.WriteErrors, r.ReadErrors, r.Timeouts, r.Non2xx)
}

type counters struct {
	requests, ok, connect, write, read, timeout, non2xx atomic.Int64
	mu                                                  sync.Mutex
	samples                                             map[string]bool
	latencies                                           []time.Duration
}

func (c *counters) fail(kind *atomic.Int64, err error) {
	kind.Add(1)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		kind.Add(-1)
		c.timeout.Add(1)
	}
	c.mu.Lock()
	if len(c.samples) < 10 {
		c.samples[err.Error()] = true
	}
	c.mu.Unlock()
}

// Run generates the load until ctx ends, Duration passes or every loop
// reached MaxRequests.
func Run(ctx context.Context, cfg Config) *Result {
	if cfg.Path == "" {
		cfg.Path = "/"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{samples: map[string]bool{}}
	head := "GET " + cfg.Path + " HTTP/1.1\r\nHost: " + cfg.Addr + "\r\nUser-Agent: baton-loadgen\r\n"
	reqKeepAlive, reqClose := []byte(head+"\r\n"), []byte(head+"Connection: close\r\n\r\n")
	var wg sync.WaitGroup
	for i := 0; i < cfg.KeepAlive+cfg.Close; i++ {
		keepAlive, req := i < cfg.KeepAlive, reqClose
		if keepAlive {
			req = reqKeepAlive
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx, cfg, c, req, keepAlive)
		}()
	}
	wg.Wait()
	r := &Result{
		Requests: c.requests.Load(), OK: c.ok.Load(),
		ConnectErrors: c.connect.Load(), WriteErrors: c.write.Load(), ReadErrors: c.read.Load(),
		Timeouts: c.timeout.Load(), Non2xx: c.non2xx.Load(), latencies: c.latencies,
	}
	for s := range c.samples {
		r.Samples = append(r.Samples, s)
	}
	sort.Strings(r.Samples)
	return r
}

func loop(ctx context.Context, cfg Config, c *counters, req []byte, keepAlive bool) {
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var lat []time.Duration
	defer func() {
		c.mu.Lock()
		c.latencies = append(c.latencies, lat...)
		c.mu.Unlock()
	}()
	d := net.Dialer{Timeout: cfg.Timeout}
	for n := 0; cfg.MaxRequests <= 0 || n < cfg.MaxRequests; n++ {
		if expired(ctx) {
			return
		}
		start := time.Now()
		if conn == nil {
			var err error
			conn, err = d.DialContext(ctx, "tcp", cfg.Addr)
			if err != nil {
				if !expired(ctx) {
					c.fail(&c.connect, err)
				}
				conn = nil
				continue
			}
			br = bufio.NewReader(conn)
		}
		conn.SetDeadline(time.Now().Add(cfg.Timeout))
		if _, err := conn.Write(req); err != nil {
			c.fail(&c.write, err)
			conn.Close()
			conn = nil
			continue
		}
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			c.fail(&c.read, err)
			conn.Close()
			conn = nil
			continue
		}
		c.requests.Add(1)
		lat = append(lat, time.Since(start))
		if resp.StatusCode/100 == 2 {
			c.ok.Add(1)
		} else {
			c.fail(&c.non2xx, fmt.Errorf("status %s", resp.Status))
		}
		if !keepAlive || resp.Close {
			conn.Close()
			conn = nil
		}
	}
}

// expired reports whether the run is over. A dial fails at once once the
// deadline has passed, even before ctx.Err is set by its timer, so both
// are checked: such a dial is the end of the run, not a failure.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}
