//go:build !linux

package watch

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// Watcher needs inotify: off Linux, New fails.
type Watcher struct{}

// New fails: watching files needs Linux's inotify.
func New(paths []string, settle time.Duration, log *slog.Logger) (*Watcher, error) {
	return nil, fmt.Errorf("watch: not supported on %s (it needs Linux's inotify)", runtime.GOOS)
}

// Run returns at once.
func (w *Watcher) Run(ctx context.Context, changed func([]Change)) {}

// Close does nothing.
func (w *Watcher) Close() error { return nil }
