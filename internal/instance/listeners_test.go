package instance

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/supervisor"
)

// resolved is a configuration with the given workers and listeners.
func resolved(t *testing.T, workers int, specs ...string) *config.Resolved {
	t.Helper()
	r := &config.Resolved{Loaded: &config.Loaded{}, Supervisor: supervisor.Config{Workers: workers}}
	r.Name, r.LogFormat = "web", "text"
	for _, s := range specs {
		spec, err := listener.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		r.Specs = append(r.Specs, spec)
	}
	return r
}

// TestPlannerPrepare: a reload re-reads the configuration, keeps the
// workers a scale set unless the configuration changed them, keeps the
// listeners that did not change, warns about settings it cannot apply,
// and takes the configuration for the serving one only once its plan is
// applied (the reload succeeded).
func TestPlannerPrepare(t *testing.T) {
	first := resolved(t, 2, "http=tcp://127.0.0.1:0")
	current, err := listener.OpenAll(first.Specs, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer current[0].Close()
	var next *config.Resolved
	var log bytes.Buffer
	p := &planner{load: func() (*config.Resolved, error) { return next, nil }, log: slog.New(slog.NewTextHandler(&log, nil)), prev: first}

	// The same workers in the file: a scale to 5 stands.
	next = resolved(t, 2, "http=tcp://127.0.0.1:0")
	next.Name = "api"
	plan, err := p.prepare(current, 5)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Config.Workers != 5 {
		t.Errorf("workers %d after a scale to 5 the configuration did not change; want 5", plan.Config.Workers)
	}
	if len(plan.Listeners) != 1 || plan.Listeners[0] != current[0] {
		t.Errorf("the unchanged listener got a new group")
	}
	if !strings.Contains(log.String(), "a reload cannot apply it") || !strings.Contains(log.String(), "key=name") {
		t.Errorf("no warning that the name cannot change on a reload:\n%s", log.String())
	}
	if p.prev != first {
		t.Error("the configuration was taken for the serving one before the reload succeeded")
	}
	commit, err := plan.Apply()
	if err != nil {
		t.Fatal(err)
	}
	if commit != nil {
		commit()
	}
	if p.prev != next {
		t.Error("the plan applied, but the serving configuration is still the previous one")
	}

	// The file changed the workers: it wins over the scale.
	next = resolved(t, 3, "http=tcp://127.0.0.1:0")
	if plan, err = p.prepare(current, 5); err != nil || plan.Config.Workers != 3 {
		t.Errorf("workers changed in the configuration: %v, %v; want 3", plan, err)
	}

	// A configuration that does not load fails the reload.
	bad := errors.New("web.toml:3: workers: want a number")
	p.load = func() (*config.Resolved, error) { return nil, bad }
	if _, err := p.prepare(current, 5); !errors.Is(err, bad) {
		t.Errorf("prepare with a broken configuration: %v, want its error", err)
	}
}
