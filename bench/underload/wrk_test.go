package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want Load
	}{
		{
			name: "clean",
			out: `Running 30s test @ http://127.0.0.1:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   381.12us  612.20us  20.11ms   95.12%
    Req/Sec    45.10k     3.02k   50.11k    70.00%
  Latency Distribution
     50%  250.00us
     75%  340.00us
     90%  520.00us
     99%    3.10ms
  1346022 requests in 30.00s, 180.46MB read
Requests/sec:  44867.40
Transfer/sec:      6.02MB
`,
			want: Load{Requests: 1346022, P50ms: 0.25, P99ms: 3.1, RPS: 44867.4},
		},
		{
			name: "errors",
			out: `  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%    3.00ms
     99%    1.02s
  1000 requests in 10.01s, 1.00MB read
  Socket errors: connect 12, read 3, write 2, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:    99.90
`,
			want: Load{Requests: 1000, Connect: 12, Read: 3, Write: 2, Timeout: 1, Non2xx: 7, P50ms: 1.5, P99ms: 1020, RPS: 99.9},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Load
			if err := parseWrk(tt.out, &got, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreUnexported(Load{}), cmpopts.EquateApprox(0, 1e-9)); diff != "" {
				t.Errorf("parseWrk (-want +got):\n%s", diff)
			}
		})
	}
	if err := parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n", &Load{}, time.Second); err == nil {
		t.Error("parseWrk accepted output without totals")
	}
}
