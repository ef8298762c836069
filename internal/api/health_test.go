package api

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestHealthOf(t *testing.T) {
	slot := func(i int) *int { return &i }
	tests := []struct {
		name string
		st   Status
		want Health
	}{
		{name: "every slot up", st: Status{SlotStates: []SlotStatus{{Slot: 0, State: SlotUp}, {Slot: 1, State: SlotUp}}},
			want: Health{State: HealthOK}},
		{name: "a slot in backoff",
			st: Status{SlotStates: []SlotStatus{{Slot: 0, State: SlotUp},
				{Slot: 1, State: SlotBackoff, Restarts: 5, NextStart: time.Unix(1, 0), NextIn: Duration(1640 * time.Millisecond)}}},
			want: Health{State: HealthDegraded, Reasons: []string{"slot 1: no worker, restarting in 1.6s (5 restarts)"}}},
		{name: "stopping: slots stop on purpose",
			st:   Status{Stopping: true, SlotStates: []SlotStatus{{Slot: 0, State: SlotStopped}, {Slot: 1, State: SlotBackoff}}},
			want: Health{State: HealthOK}},
		{name: "warnings of severity degraded, and one that is not",
			st: Status{Kernel: &KernelView{Warnings: []Warning{
				{Code: NotAccepting, Listener: "http", Severity: SeverityDegraded},
				{Code: BacklogClamped, Listener: "http", Severity: SeverityWarning},
				{Code: CrashLoop, Slot: slot(2), Severity: SeverityDegraded},
			}}},
			want: Health{State: HealthDegraded, Reasons: []string{"not_accepting: listener http", "crash_loop: slot 2"}}},
		{name: "an older baton sends no severity: the code says",
			st:   Status{Kernel: &KernelView{Warnings: []Warning{{Code: BindsOwnPort, Slot: slot(0)}, {Code: CloseWait, PID: 4}}}},
			want: Health{State: HealthDegraded, Reasons: []string{"binds_own_port: slot 0"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := HealthOf(&tt.st)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("HealthOf (-want +got):\n%s", diff)
			}
			if got.Degraded() != (tt.want.State == HealthDegraded) {
				t.Errorf("Degraded() = %v", got.Degraded())
			}
		})
	}
}
