package api

import (
	"fmt"
	"time"
)

// The control socket's methods.
const (
	// MethodStatus returns a Status; its params are StatusParams.
	MethodStatus = "status"
	// MethodReload starts a reload; its params are ReloadParams, its
	// reply a ReloadResult, or ReloadQueued when not waiting.
	MethodReload = "reload"
	// MethodScale changes the number of slots; its params are
	// ScaleParams, its reply a ScaleResult.
	MethodScale = "scale"
	// MethodUpgrade re-executes baton in place; its params are
	// UpgradeParams, its reply an UpgradeReply. Only root and baton's own
	// user may call it.
	MethodUpgrade = "upgrade"
	// MethodTakeover hands every listener to the caller (baton run
	// --takeover); its params are TakeoverParams, and the exchange that
	// follows is internal/takeover's. Only root and baton's own user may
	// call it.
	MethodTakeover = "takeover"
	// MethodStop stops baton; its params are WaitParams, its reply
	// StopReply.
	MethodStop = "stop"
)

// Methods lists every method of the control socket.
var Methods = []string{MethodStatus, MethodReload, MethodScale, MethodUpgrade, MethodTakeover, MethodStop, MethodLogs}

// StatusParams are the params of MethodStatus.
type StatusParams struct {
	// Kernel, true unless given, adds the kernel's view (Status.Kernel:
	// a few milliseconds of netlink and /proc on a busy host).
	Kernel *bool `json:"kernel,omitempty"`
}

// WithKernel reports whether the status asked for includes the kernel's
// view.
func (p StatusParams) WithKernel() bool { return p.Kernel == nil || *p.Kernel }

// WaitParams are the params of MethodStop, and part of ReloadParams.
type WaitParams struct {
	// Wait, true unless given, makes the reply wait for the outcome.
	Wait *bool `json:"wait"`
}

// Waits reports whether the reply waits for the outcome.
func (p WaitParams) Waits() bool { return p.Wait == nil || *p.Wait }

// ReloadParams are the params of MethodReload. The rollout fields, when
// given, override the configuration's (rolling, canary, canary_window)
// for this reload only; absent, the configuration the reload loads
// decides. A reload queued behind another runs with the params of the
// last request that asked for it.
type ReloadParams struct {
	WaitParams
	// Rolling replaces that many slots at a time; 0 replaces them all at
	// once.
	Rolling *int `json:"rolling,omitempty"`
	// Canary replaces that many slots first, beside their old workers,
	// and watches them for CanaryWindow before going on; 0: no canary.
	Canary *int `json:"canary,omitempty"`
	// CanaryWindow is how long the canaries are watched once ready.
	CanaryWindow *Duration `json:"canary_window,omitempty"`
}

// Check reports what is wrong with p's values, naming the param.
func (p ReloadParams) Check() error {
	switch {
	case p.Rolling != nil && *p.Rolling < 0:
		return fmt.Errorf("reload: rolling %d: want 0 (every slot at once) or the number of slots to replace at a time", *p.Rolling)
	case p.Canary != nil && *p.Canary < 0:
		return fmt.Errorf("reload: canary %d: want 0 (no canary) or the number of slots to try the new generation on first", *p.Canary)
	case p.CanaryWindow != nil && *p.CanaryWindow <= 0:
		return fmt.Errorf("reload: canary_window %s: want a positive duration, such as 30s", time.Duration(*p.CanaryWindow))
	}
	return nil
}

// ScaleParams are the params of MethodScale.
type ScaleParams struct {
	// Workers is the number of slots wanted, 1 or more.
	Workers int `json:"workers"`
}

// UpgradeParams are the params of MethodUpgrade.
type UpgradeParams struct {
	// Binary is the new baton binary, an absolute path; "" is the file
	// at the running baton's own path.
	Binary string `json:"binary"`
	// KeepWorkers swaps only baton: the running workers keep serving
	// instead of a new generation starting.
	KeepWorkers bool `json:"keep_workers"`
}

// TakeoverParams are the params of MethodTakeover.
type TakeoverParams struct {
	// CommitWithinMS is how long, in milliseconds, the new instance may
	// take from its request to its verdict: starting its workers and
	// waiting for them to be ready. The running instance aborts the
	// takeover when it has passed. 0 means DefaultCommitWithin.
	CommitWithinMS int64 `json:"commit_within_ms,omitempty"`
}

// Bounds of TakeoverParams.CommitWithinMS.
const (
	DefaultCommitWithin = 5 * time.Minute
	MaxCommitWithin     = time.Hour
)

// CommitWithin checks p and returns how long the running instance waits
// for the verdict.
func (p TakeoverParams) CommitWithin() (time.Duration, error) {
	d := time.Duration(p.CommitWithinMS) * time.Millisecond
	switch {
	case p.CommitWithinMS == 0:
		return DefaultCommitWithin, nil
	case p.CommitWithinMS < 0 || d > MaxCommitWithin:
		return 0, fmt.Errorf("takeover: commit_within_ms %d: want 1 to %d (an hour), or 0 for %s", p.CommitWithinMS, MaxCommitWithin.Milliseconds(), DefaultCommitWithin)
	}
	return d, nil
}

// ReloadResult describes a finished reload: the reply of MethodReload,
// and Status.Reloads.Last.
type ReloadResult struct {
	Generation int       `json:"generation"`
	Previous   int       `json:"previous"`
	Started    time.Time `json:"started"`
	Duration   Duration  `json:"duration"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	Reason     string    `json:"reason"`
	// Rollout is how a rolling or canary reload went, as it ended: the
	// slots it replaced, the canary's verdict, what it rolled back. Absent
	// for a reload that replaced every slot at once.
	Rollout *RolloutStatus `json:"rollout,omitempty"`
}

// ReloadQueued is the reply of MethodReload when the caller does not wait.
type ReloadQueued struct {
	Queued bool `json:"queued"`
}

// StopReply is the reply of MethodStop.
type StopReply struct {
	Stopping bool `json:"stopping"`
}

// ScaleResult describes a scale request once applied: the reply of
// MethodScale.
type ScaleResult struct {
	From    int   `json:"from"`
	To      int   `json:"to"`
	Started []int `json:"started,omitempty"` // slots added, whose workers are starting
	Stopped []int `json:"stopped,omitempty"` // slots removed, whose workers drain
}

// UpgradeReply is what `baton upgrade` hears once the new binary's
// pre-flight has passed, just before baton re-executes itself: the reply
// of MethodUpgrade. The client then watches status for Upgrades to grow.
type UpgradeReply struct {
	PID      int    `json:"pid"`
	Binary   string `json:"binary"`
	Upgrades int    `json:"upgrades"` // upgrades done before this one
	// ID is the upgrade's nonce: the re-executed baton has it in its
	// environment (upgrade.Upgraded), so the client can tell whether
	// the execve happened.
	ID string `json:"id"`
	// Preflight says what the new binary checked.
	Preflight string `json:"preflight"`
	// Generation is the generation serving when baton took the state:
	// without --keep-workers the new baton replaces it.
	Generation int `json:"generation"`
}
