// Command underload measures one contender of `make bench`. It waits until
// the server at -addr answers, then for -for runs two loads side by side,
// keep-alive and a new connection per request, while it reloads the server
// every -every. It writes what it saw as JSON (-out).
//
// The loads come from wrk (-tool wrk: the headline totals and latency
// percentiles) or from this module's internal/loadgen (-tool loadgen: the
// same totals plus a count per -interval, for charts). A reload is the
// command after "--", run to completion at each tick, or with -restart the
// naive way: the command after "--" is the server itself, which underload
// starts, and at each tick stops (SIGTERM, then waits for it to exit) and
// starts again. Ticks that come while a reload still runs are dropped.
// Every reload's start time is recorded.
//
//	underload -name nginx -addr 127.0.0.1:8080 -tool wrk -out nginx.json -- nginx -s reload -c /tmp/x/nginx.conf
//	underload -name naive -addr 127.0.0.1:8080 -restart -- ./hello -addr 127.0.0.1:8080
//
// Loopback only: -addr must be a loopback address. Every run is bounded.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/loadgen"
)

// Output is the JSON underload writes; bench/chart reads the same shape.
type Output struct {
	Name        string   `json:"name"`
	Tool        string   `json:"tool"`
	Addr        string   `json:"addr"`
	Start       int64    `json:"start_unix_ns"`
	Seconds     float64  `json:"seconds"`
	EverySecs   float64  `json:"reload_every_s"`
	IntervalSec float64  `json:"interval_s,omitempty"`
	Reload      string   `json:"reload"`
	Loads       []Load   `json:"loads"`
	Reloads     []Reload `json:"reloads"`
	// ServerCPU is the CPU time (user and system, seconds) the server's
	// processes used during the load: -cpu-pid and its descendants, or
	// with -restart every server process started. Absent if unknown.
	ServerCPU float64 `json:"server_cpu_s,omitempty"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute figures when the load
	// started: how busy the machine was besides.
	LoadAvg string `json:"loadavg,omitempty"`
}

// Load is one load's totals, and with loadgen its series.
type Load struct {
	Name     string    `json:"name"` // keep-alive or close
	Conns    int       `json:"conns"`
	Requests int64     `json:"requests"` // complete answers, 2xx or not
	Connect  int64     `json:"connect"`
	Read     int64     `json:"read"`
	Write    int64     `json:"write"`
	Timeout  int64     `json:"timeout"`
	Non2xx   int64     `json:"non2xx"`
	P50ms    float64   `json:"p50_ms"`
	P99ms    float64   `json:"p99_ms"`
	RPS      float64   `json:"rps"`
	Series   []Bucket  `json:"series,omitempty"`
	Samples  []string  `json:"samples,omitempty"`
	Raw      string    `json:"raw,omitempty"` // wrk's own output
	started  time.Time // loadgen's start, for Output.Start
}

// Bucket is one interval of a loadgen series.
type Bucket struct {
	Requests int64 `json:"requests"`
	Connect  int64 `json:"connect,omitempty"`
	Read     int64 `json:"read,omitempty"`
	Write    int64 `json:"write,omitempty"`
	Timeout  int64 `json:"timeout,omitempty"`
	Non2xx   int64 `json:"non2xx,omitempty"`
}

// Reload is one reload asked for.
type Reload struct {
	At     int64   `json:"at_unix_ns"`
	TookMs float64 `json:"took_ms"`
	OK     bool    `json:"ok"`
	Err    string  `json:"err,omitempty"`
}

type options struct {
	name, addr, tool, out, logFile string
	dur, every, interval, timeout  time.Duration
	ka, close, cpuPid              int
	restart                        bool
	argv                           []string
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("underload: ")
	var o options
	flag.StringVar(&o.name, "name", "", "contender name, written to the JSON")
	flag.StringVar(&o.addr, "addr", "", "loopback HOST:PORT the contender serves HTTP on")
	flag.StringVar(&o.tool, "tool", "wrk", "load generator: wrk or loadgen")
	flag.StringVar(&o.out, "out", "", "write the JSON result to this file (default stdout)")
	flag.StringVar(&o.logFile, "server-log", "", "with -restart: append the server's output to this file")
	flag.DurationVar(&o.dur, "for", 30*time.Second, "how long the load runs")
	flag.DurationVar(&o.every, "every", 100*time.Millisecond, "reload period; 0 for no reloads")
	flag.DurationVar(&o.interval, "interval", 100*time.Millisecond, "loadgen: length of a series interval")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-request timeout (wrk --timeout, loadgen Timeout)")
	flag.IntVar(&o.ka, "ka", 16, "connections of the keep-alive load (0: none)")
	flag.IntVar(&o.close, "close", 16, "connections of the new-connection-per-request load (0: none)")
	flag.BoolVar(&o.restart, "restart", false, "the command after -- is the server: stop and start it at each tick")
	flag.IntVar(&o.cpuPid, "cpu-pid", 0, "count the CPU time of this process and its descendants during the load (the server)")
	flag.Parse()
	o.argv = flag.Args()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "underload:", err)
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	out, err := run(ctx, o)
	if err != nil {
		log.Fatal(err)
	}
	b, err := json.MarshalIndent(out, "", " ")
	if err != nil {
		log.Fatal(err)
	}
	if o.out == "" {
		os.Stdout.Write(append(b, '\n'))
		return
	}
	if err := os.WriteFile(o.out, append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}

func (o options) check() error {
	host, _, err := net.SplitHostPort(o.addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", o.addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-addr %q: not a loopback address; benchmarks send traffic to this machine only", o.addr)
	}
	if o.tool != "wrk" && o.tool != "loadgen" {
		return fmt.Errorf("-tool %q: want wrk or loadgen", o.tool)
	}
	if o.dur <= 0 || o.dur > 10*time.Minute {
		return fmt.Errorf("-for %v: want a duration up to 10m", o.dur)
	}
	if o.restart && len(o.argv) == 0 {
		return errors.New("-restart needs the server command after --")
	}
	if o.every > 0 && len(o.argv) == 0 {
		return errors.New("a reload every -every needs the reload command after -- (or -every 0)")
	}
	if o.ka+o.close == 0 {
		return errors.New("no load: -ka and -close are both 0")
	}
	return nil
}

func run(ctx context.Context, o options) (*Output, error) {
	var srv *server
	if o.restart {
		srv = &server{argv: o.argv, logFile: o.logFile}
		if err := srv.start(); err != nil {
			return nil, err
		}
		defer srv.stop()
	}
	if err := waitAnswer(ctx, o.addr, 15*time.Second); err != nil {
		return nil, err
	}

	out := &Output{Name: o.name, Tool: o.tool, Addr: o.addr, Seconds: o.dur.Seconds(), EverySecs: o.every.Seconds()}
	switch {
	case o.every == 0:
		out.Reload = "none"
	case o.restart:
		out.Reload = "stop (SIGTERM, wait for exit) and start: " + strings.Join(o.argv, " ")
	default:
		out.Reload = strings.Join(o.argv, " ")
	}
	if o.tool == "loadgen" {
		out.IntervalSec = o.interval.Seconds()
	}

	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	loads := make([]*Load, 0, 2)
	errs := make([]error, 2)
	for i, l := range []struct {
		name  string
		conns int
	}{{"keep-alive", o.ka}, {"close", o.close}} {
		if l.conns == 0 {
			continue
		}
		ld := &Load{Name: l.name, Conns: l.conns}
		loads = append(loads, ld)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.tool == "wrk" {
				errs[i] = runWrk(loadCtx, o, ld)
			} else {
				runLoadgen(loadCtx, o, ld)
			}
		}()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			out.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	cpu0 := serverCPU(o, srv)
	start := time.Now()
	reloads := make(chan []Reload, 1)
	go func() { reloads <- tick(loadCtx, o, srv, start.Add(o.dur)) }()
	wg.Wait()
	cancel()
	out.Reloads = <-reloads
	if cpu1 := serverCPU(o, srv); cpu0 >= 0 && cpu1 >= cpu0 {
		out.ServerCPU = cpu1 - cpu0
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out.Start = start.UnixNano()
	for _, ld := range loads {
		if !ld.started.IsZero() && ld.started.Before(start) {
			out.Start = ld.started.UnixNano()
		}
		out.Loads = append(out.Loads, *ld)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	return out, nil
}

// serverCPU is the CPU time the server has used so far, or -1.
func serverCPU(o options, srv *server) float64 {
	if srv != nil {
		return srv.cpu()
	}
	if o.cpuPid > 0 {
		return treeCPU(o.cpuPid)
	}
	return -1
}

// tick reloads every o.every until ctx ends or until end.
func tick(ctx context.Context, o options, srv *server, end time.Time) []Reload {
	var done []Reload
	if o.every <= 0 {
		return done
	}
	t := time.NewTicker(o.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return done
		case now := <-t.C:
			if !now.Before(end) {
				return done
			}
			r := Reload{At: time.Now().UnixNano(), OK: true}
			var err error
			if srv != nil {
				err = srv.restart()
			} else {
				err = command(ctx, o.argv)
			}
			r.TookMs = float64(time.Now().UnixNano()-r.At) / 1e6
			if err != nil && ctx.Err() == nil {
				r.OK, r.Err = false, trim(err.Error(), 300)
			}
			done = append(done, r)
		}
	}
}

// command runs one reload command, bounded to 10s.
func command(ctx context.Context, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", argv[0], err, bytes.TrimSpace(out))
	}
	return nil
}

func trim(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// waitAnswer polls until GET / on addr answers 200, bounded by d.
func waitAnswer(ctx context.Context, addr string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c := &http.Client{Timeout: time.Second}
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
		resp, err := c.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c.CloseIdleConnections()
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer GET / with 200 within %v: %w", addr, d, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func runLoadgen(ctx context.Context, o options, ld *Load) {
	cfg := loadgen.Config{Addr: o.addr, Duration: o.dur, Timeout: o.timeout, Interval: o.interval}
	if ld.Name == "keep-alive" {
		cfg.KeepAlive = ld.Conns
	} else {
		cfg.Close = ld.Conns
	}
	r := loadgen.Run(ctx, cfg)
	ld.started = r.Start
	ld.Requests, ld.Connect, ld.Read, ld.Write, ld.Timeout, ld.Non2xx = r.Requests, r.ConnectErrors, r.ReadErrors, r.WriteErrors, r.Timeouts, r.Non2xx
	ld.P50ms = float64(r.Percentile(50)) / 1e6
	ld.P99ms = float64(r.Percentile(99)) / 1e6
	ld.RPS = float64(r.Requests) / o.dur.Seconds()
	ld.Samples = r.Samples
	for _, b := range r.Series {
		ld.Series = append(ld.Series, Bucket{Requests: b.Requests, Connect: b.ConnectErrors, Read: b.ReadErrors, Write: b.WriteErrors, Timeout: b.Timeouts, Non2xx: b.Non2xx})
	}
}

func runWrk(ctx context.Context, o options, ld *Load) error {
	secs := int(o.dur.Round(time.Second) / time.Second)
	args := []string{"-t1", fmt.Sprintf("-c%d", ld.Conns), fmt.Sprintf("-d%ds", secs), "--latency",
		"--timeout", fmt.Sprintf("%ds", max(int(o.timeout/time.Second), 1))}
	if ld.Name == "close" {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, "http://"+o.addr+"/")
	ctx, cancel := context.WithTimeout(ctx, o.dur+15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	ld.Raw = "wrk " + strings.Join(args, " ") + "\n" + string(out)
	if err != nil {
		return fmt.Errorf("wrk %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return parseWrk(string(out), ld, o.dur)
}

// server is the naive contender's server process, owned by underload.
type server struct {
	argv    []string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{}
	// spent is the CPU time of the server processes that have exited.
	spent float64
}

// cpu is the CPU time of every server process started so far; called
// only while no restart runs.
func (s *server) cpu() float64 {
	live := 0.0
	if s.cmd != nil {
		if live = treeCPU(s.cmd.Process.Pid); live < 0 {
			live = 0
		}
	}
	return s.spent + live
}

func (s *server) start() error {
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	// In underload's process group, so that whoever stops underload's
	// group stops the server too; and killed if underload dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.logFile != "" {
		f, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close() // the child has its own copy
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.argv[0], err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { c.Wait(); close(ch) }(cmd, s.exited)
	return nil
}

// stop asks the server to stop (SIGTERM) and waits for it to exit, at
// most 5s before SIGKILL.
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	if ps := s.cmd.ProcessState; ps != nil {
		s.spent += (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	s.cmd = nil
}

func (s *server) restart() error {
	s.stop()
	return s.start()
}
