package supervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/baton-dev/baton/internal/control"
)

// TestOwnerOnly: upgrade and takeover are refused to a peer the control
// socket admits for its group (control_group), before anything is done.
func TestOwnerOnly(t *testing.T) {
	s := &Supervisor{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	other := os.Geteuid() + 4242
	for _, method := range []string{"upgrade", "takeover"} {
		t.Run(method, func(t *testing.T) {
			_, err := s.Handle(context.Background(), control.Peer{PID: 1, UID: other, GID: other}, control.Request{Method: method})
			if !errors.Is(err, ErrOwnerOnly) || !strings.Contains(err.Error(), method+" is for root and baton's own user") {
				t.Errorf("%s by uid %d: %v; want it refused with ErrOwnerOnly", method, other, err)
			}
		})
	}
	for _, uid := range []int{0, os.Geteuid()} {
		if err := s.ownerOnly(control.Peer{PID: 1, UID: uid}, "upgrade"); err != nil {
			t.Errorf("upgrade by uid %d: %v; want it allowed", uid, err)
		}
	}
}
