package main

import (
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want stat
		ok   bool
	}{
		{name: "plain", in: "4121 (nginx) S 1 4121 4121 0 -1 4194624 100 0 0 0 7 3 2 1 20 0 1 0 100 1000 10 18446744073709551615",
			want: stat{ppid: 1, ticks: 13}, ok: true},
		{name: "name with spaces and parens", in: "77 (a) b (c)) R 12 77 77 0 -1 0 0 0 0 0 100 50 0 0 20 0 1 0 1 1 1",
			want: stat{ppid: 12, ticks: 150}, ok: true},
		{name: "short", in: "1 (x) S 0 1", ok: false},
		{name: "no name", in: "garbage", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseStat(tt.in)
			if ok != tt.ok || got != tt.want {
				t.Errorf("parseStat = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestTreeCPU(t *testing.T) {
	if got := treeCPU(os.Getpid()); got < 0 {
		t.Errorf("treeCPU(self) = %v, want >= 0", got)
	}
	if got := treeCPU(1 << 30); got != -1 {
		t.Errorf("treeCPU(no such pid) = %v, want -1", got)
	}
}
