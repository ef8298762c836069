package sockdiag

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseNetstat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    map[string]map[string]int64
		wantErr bool
	}{
		{
			name: "netstat",
			in: "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPMigrateReqSuccess\n" +
				"TcpExt: 1 2 30 31 0\n" +
				"IpExt: InNoRoutes InOctets\n" +
				"IpExt: 0 18446744073709551615\n",
			want: map[string]map[string]int64{
				"TcpExt": {"SyncookiesSent": 1, "SyncookiesRecv": 2, "ListenOverflows": 30, "ListenDrops": 31, "TCPMigrateReqSuccess": 0},
				"IpExt":  {"InNoRoutes": 0, "InOctets": math.MaxInt64},
			},
		},
		{
			name: "snmp with -1",
			in:   "Tcp: RtoAlgorithm MaxConn CurrEstab\nTcp: 1 -1 12\n",
			want: map[string]map[string]int64{"Tcp": {"RtoAlgorithm": 1, "MaxConn": -1, "CurrEstab": 12}},
		},
		{name: "empty", in: "", want: map[string]map[string]int64{}},
		{name: "header without values", in: "TcpExt: A B\n", wantErr: true},
		{name: "count mismatch", in: "TcpExt: A B\nTcpExt: 1\n", wantErr: true},
		{name: "prefix mismatch", in: "TcpExt: A\nIpExt: 1\n", wantErr: true},
		{name: "no colon", in: "TcpExt A\nTcpExt 1\n", wantErr: true},
		{name: "not a number", in: "TcpExt: A\nTcpExt: x\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(map[string]map[string]int64)
			err := parseNetstat(got, strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSockstat(t *testing.T) {
	in := "sockets: used 290\n" +
		"TCP: inuse 5 orphan 0 tw 22029 alloc 7 mem 1\n" +
		"UDP: inuse 2 mem 2\n" +
		"FRAG: inuse 0 memory 0\n" +
		"TCP6: inuse 3\n"
	got := make(map[string]map[string]int64)
	if err := parseSockstat(got, strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]int64{
		"sockets": {"used": 290},
		"TCP":     {"inuse": 5, "orphan": 0, "tw": 22029, "alloc": 7, "mem": 1},
		"UDP":     {"inuse": 2, "mem": 2},
		"FRAG":    {"inuse": 0, "memory": 0},
		"TCP6":    {"inuse": 3},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"TCP: inuse\n", "TCP inuse 5\n", "TCP: inuse x\n"} {
		if err := parseSockstat(map[string]map[string]int64{}, strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseNofile(t *testing.T) {
	const head = "Limit                     Soft Limit           Hard Limit           Units     \n" +
		"Max cpu time              unlimited            unlimited            seconds   \n"
	for _, tc := range []struct {
		name       string
		in         string
		soft, hard uint64
		wantErr    bool
	}{
		{name: "numbers", in: head + "Max open files            1024                 524288               files     \n", soft: 1024, hard: 524288},
		{name: "unlimited", in: head + "Max open files            unlimited            unlimited            files     \n", soft: math.MaxUint64, hard: math.MaxUint64},
		{name: "missing", in: head, wantErr: true},
		{name: "truncated", in: "Max open files            1024\n", wantErr: true},
		{name: "garbage", in: "Max open files            lots   more  files\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			soft, hard, err := parseNofile(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
			if soft != tc.soft || hard != tc.hard {
				t.Errorf("got %d/%d, want %d/%d", soft, hard, tc.soft, tc.hard)
			}
		})
	}
}

func TestSocketInode(t *testing.T) {
	for _, tc := range []struct {
		link string
		ino  uint64
		ok   bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[4294967295]", 4294967295, true},
		{"socket:[9999999999999999999]", 9999999999999999999, true},
		{"socket:[99999999999999999999]", 0, false},
		{"socket:[]", 0, false},
		{"socket:[12a]", 0, false},
		{"socket:[12", 0, false},
		{"pipe:[12345]", 0, false},
		{"anon_inode:[eventpoll]", 0, false},
		{"/dev/null", 0, false},
		{"", 0, false},
	} {
		ino, ok := socketInode([]byte(tc.link))
		if ino != tc.ino || ok != tc.ok {
			t.Errorf("socketInode(%q) = %d, %v; want %d, %v", tc.link, ino, ok, tc.ino, tc.ok)
		}
	}
}
