package loadgen

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// sum adds up a series.
func sum(series []Bucket) Bucket {
	var s Bucket
	for _, b := range series {
		s.Requests += b.Requests
		s.OK += b.OK
		s.ConnectErrors += b.ConnectErrors
		s.WriteErrors += b.WriteErrors
		s.ReadErrors += b.ReadErrors
		s.Timeouts += b.Timeouts
		s.Non2xx += b.Non2xx
	}
	return s
}

func totals(r *Result) Bucket {
	return Bucket{
		Requests: r.Requests, OK: r.OK,
		ConnectErrors: r.ConnectErrors, WriteErrors: r.WriteErrors, ReadErrors: r.ReadErrors,
		Timeouts: r.Timeouts, Non2xx: r.Non2xx,
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestSeries(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%5 == 0 { // some non-2xx answers in the mix
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	ok := srv.Listener.Addr().String()

	tests := []struct {
		name      string
		addr      string
		cfg       Config
		wantSlots int // intervals in the series, at most
		wantReq   bool
	}{
		{name: "answers", addr: ok, cfg: Config{KeepAlive: 2, Close: 2, Duration: 300 * time.Millisecond, Interval: 50 * time.Millisecond}, wantSlots: 6, wantReq: true},
		{name: "refused", addr: closedAddr(t), cfg: Config{Close: 1, Duration: 200 * time.Millisecond, Interval: 100 * time.Millisecond}, wantSlots: 2},
		{name: "interval longer than the run", addr: ok, cfg: Config{KeepAlive: 1, Duration: 100 * time.Millisecond, Interval: time.Second}, wantSlots: 1, wantReq: true},
		{name: "ended early by MaxRequests", addr: ok, cfg: Config{KeepAlive: 1, MaxRequests: 3, Duration: 10 * time.Second, Interval: time.Second}, wantSlots: 1, wantReq: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Addr = tt.addr
			before := time.Now()
			r := Run(context.Background(), tt.cfg)
			if r.Start.Before(before) || r.Start.After(time.Now()) {
				t.Errorf("Start = %v, want between %v and now", r.Start, before)
			}
			if len(r.Series) == 0 || len(r.Series) > tt.wantSlots {
				t.Errorf("len(Series) = %d, want 1..%d", len(r.Series), tt.wantSlots)
			}
			if got, want := sum(r.Series), totals(r); got != want {
				t.Errorf("series adds up to %+v, totals are %+v", got, want)
			}
			if tt.wantReq && r.Requests == 0 {
				t.Errorf("no request answered: %v", r)
			}
			if !tt.wantReq && r.ConnectErrors == 0 {
				t.Errorf("no connect error against a closed port: %v", r)
			}
		})
	}
}

func TestNoSeriesWithoutInterval(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	r := Run(context.Background(), Config{Addr: srv.Listener.Addr().String(), KeepAlive: 1, Close: 1, Duration: 100 * time.Millisecond})
	if r.Series != nil {
		t.Errorf("Series = %v without Interval, want nil", r.Series)
	}
	if r.Requests == 0 || r.Failed() != 0 {
		t.Errorf("got %v, want answers and no failure", r)
	}
}

// TestUnderWay: UnderWay stays open while a connection loop has had no
// answer, closes once each has had one, and closes when a run ends with
// loops that never had one.
func TestUnderWay(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	underWay := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan *Result, 1)
	go func() {
		ran <- Run(ctx, Config{Addr: srv.Listener.Addr().String(), KeepAlive: 2, Close: 2, Duration: time.Minute, UnderWay: underWay})
	}()
	batontest.WaitFor(t, 10*time.Second, func() error {
		if n := arrived.Load(); n < 4 {
			return fmt.Errorf("%d of the 4 loops' first requests arrived", n)
		}
		return nil
	})
	select {
	case <-underWay:
		t.Fatal("UnderWay closed before any answer")
	default:
	}
	close(release)
	select {
	case <-underWay:
	case <-time.After(10 * time.Second):
		t.Fatal("UnderWay still open after every loop had an answer")
	}
	cancel()
	if r := <-ran; r.OK < 4 {
		t.Errorf("%d answers, want at least the 4 first ones", r.OK)
	}

	refused := make(chan struct{})
	Run(context.Background(), Config{Addr: closedAddr(t), Close: 1, Duration: 100 * time.Millisecond, UnderWay: refused})
	select {
	case <-refused:
	default:
		t.Error("UnderWay still open after a run that never had an answer")
	}
}
