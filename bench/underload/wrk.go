package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkPercent  = regexp.MustCompile(`(?m)^\s*(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
)

// parseWrk reads the totals of one `wrk --latency` run. wrk prints the
// socket error and non-2xx lines only when they are not zero.
func parseWrk(out string, ld *Load, d time.Duration) error {
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("no request count in wrk's output:\n%s", out)
	}
	ld.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for i, p := range []*int64{&ld.Connect, &ld.Read, &ld.Write, &ld.Timeout} {
			*p, _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		ld.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	for _, m := range wrkPercent.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return fmt.Errorf("wrk latency %q: %w", m[0], err)
		}
		ms := v * map[string]float64{"us": 1e-3, "ms": 1, "s": 1e3, "m": 60e3}[m[3]]
		if m[1] == "50" {
			ld.P50ms = ms
		} else {
			ld.P99ms = ms
		}
	}
	if m := wrkRPS.FindStringSubmatch(out); m != nil {
		ld.RPS, _ = strconv.ParseFloat(m[1], 64)
	} else if d > 0 {
		ld.RPS = float64(ld.Requests) / d.Seconds()
	}
	if !strings.Contains(out, "Latency Distribution") {
		return fmt.Errorf("no latency distribution in wrk's output (run it with --latency):\n%s", out)
	}
	return nil
}
