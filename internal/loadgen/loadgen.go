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
	// Interval, if positive, also splits the run into intervals of this
	// length and counts what happened in each (Result.Series).
	Interval time.Duration
	// UnderWay, if not nil, is closed once every connection loop has had
	// a complete answer, or when Run returns if some never had one: a
	// test acts under the load, not before it has started. Run closes
	// it, so it must be a new channel for each run.
	UnderWay chan struct{}
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
	// Start is when the load began. With Config.Interval set, Series[i]
	// counts what happened from Start+i*Interval to Start+(i+1)*Interval:
	// an answer when it was complete, an error when it was seen. The
	// series adds up to the totals above; it ends with the run.
	Start  time.Time
	Series []Bucket
	// Latencies of answered requests, for percentiles.
	latencies []time.Duration
}

// Bucket counts what happened in one interval of a run, with the same
// meaning as the fields of Result.
type Bucket struct {
	Requests, OK                                             int64
	ConnectErrors, WriteErrors, ReadErrors, Timeouts, Non2xx int64
}

// Failed is the number of requests in the interval that did not get a
// 2xx answer.
func (b Bucket) Failed() int64 {
	return b.ConnectErrors + b.WriteErrors + b.ReadErrors + b.Timeouts + b.Non2xx
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

// kind is what a counter counts.
type kind int

const (
	kindRequest kind = iota // a complete response
	kindOK                  // ... with a 2xx status
	kindConnect
	kindWrite
	kindRead
	kindTimeout
	kindNon2xx
	nKinds
)

type tally [nKinds]atomic.Int64

func (t *tally) bucket() Bucket {
	return Bucket{
		Requests: t[kindRequest].Load(), OK: t[kindOK].Load(),
		ConnectErrors: t[kindConnect].Load(), WriteErrors: t[kindWrite].Load(), ReadErrors: t[kindRead].Load(),
		Timeouts: t[kindTimeout].Load(), Non2xx: t[kindNon2xx].Load(),
	}
}

type counters struct {
	total tally
	// series has one tally per Config.Interval from start; nil without.
	start    time.Time
	interval time.Duration
	series   []tally

	mu        sync.Mutex
	samples   map[string]bool
	latencies []time.Duration
}

// add counts one event of kind k seen at now.
func (c *counters) add(k kind, now time.Time) {
	c.total[k].Add(1)
	if len(c.series) == 0 {
		return
	}
	// An answer that completes after the deadline still counts, in the
	// last interval, so that the series adds up to the totals.
	i := min(max(int(now.Sub(c.start)/c.interval), 0), len(c.series)-1)
	c.series[i][k].Add(1)
}

func (c *counters) fail(k kind, err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		k = kindTimeout
	}
	c.add(k, time.Now())
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
	c := &counters{samples: map[string]bool{}, start: time.Now(), interval: cfg.Interval}
	if cfg.Interval > 0 {
		c.series = make([]tally, (cfg.Duration+cfg.Interval-1)/cfg.Interval)
	}
	head := "GET " + cfg.Path + " HTTP/1.1\r\nHost: " + cfg.Addr + "\r\nUser-Agent: baton-loadgen\r\n"
	reqKeepAlive, reqClose := []byte(head+"\r\n"), []byte(head+"Connection: close\r\n\r\n")
	var wg, first sync.WaitGroup
	for i := 0; i < cfg.KeepAlive+cfg.Close; i++ {
		keepAlive, req := i < cfg.KeepAlive, reqClose
		if keepAlive {
			req = reqKeepAlive
		}
		wg.Add(1)
		first.Add(1)
		answered := sync.OnceFunc(first.Done)
		go func() {
			defer wg.Done()
			defer answered() // never answered: the run is over for it
			loop(ctx, cfg, c, req, keepAlive, answered)
		}()
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		first.Wait()
		if cfg.UnderWay != nil {
			close(cfg.UnderWay)
		}
	}()
	wg.Wait()
	<-closed // every loop has called answered: UnderWay is closed when Run returns
	t := c.total.bucket()
	r := &Result{
		Requests: t.Requests, OK: t.OK,
		ConnectErrors: t.ConnectErrors, WriteErrors: t.WriteErrors, ReadErrors: t.ReadErrors,
		Timeouts: t.Timeouts, Non2xx: t.Non2xx, latencies: c.latencies,
		Start: c.start,
	}
	if len(c.series) > 0 {
		// A run that ended early (ctx, MaxRequests) has nothing in the
		// intervals after its end: leave them out.
		n := min(int((time.Since(c.start)+c.interval-1)/c.interval), len(c.series))
		r.Series = make([]Bucket, max(n, 1))
		for i := range r.Series {
			r.Series[i] = c.series[i].bucket()
		}
	}
	for s := range c.samples {
		r.Samples = append(r.Samples, s)
	}
	sort.Strings(r.Samples)
	return r
}

// loop sends requests on one connection (or a new one for each, without
// keepAlive) until the run is over, and calls answered after each
// complete answer.
func loop(ctx context.Context, cfg Config, c *counters, req []byte, keepAlive bool, answered func()) {
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
					c.fail(kindConnect, err)
				}
				conn = nil
				continue
			}
			br = bufio.NewReader(conn)
		}
		conn.SetDeadline(time.Now().Add(cfg.Timeout))
		if _, err := conn.Write(req); err != nil {
			c.fail(kindWrite, err)
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
			c.fail(kindRead, err)
			conn.Close()
			conn = nil
			continue
		}
		now := time.Now()
		c.add(kindRequest, now)
		answered()
		lat = append(lat, now.Sub(start))
		if resp.StatusCode/100 == 2 {
			c.add(kindOK, now)
		} else {
			c.fail(kindNon2xx, fmt.Errorf("status %s", resp.Status))
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
