package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
)

// Handle answers a request on the control socket.
func (s *Supervisor) Handle(ctx context.Context, peer control.Peer, req control.Request) (any, error) {
	switch req.Method {
	case api.MethodStatus:
		var p api.StatusParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		if !p.WithKernel() {
			st, ok := s.Status()
			if !ok {
				return nil, ErrStopping
			}
			return st, nil
		}
		st, ok := s.KernelStatus(ctx)
		if !ok {
			return nil, ErrStopping
		}
		return st, nil
	case api.MethodReload:
		var p api.ReloadParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		if err := p.Check(); err != nil {
			return nil, err
		}
		o := reloadOptions(p)
		reason := fmt.Sprintf("asked by pid %d", peer.PID)
		if !p.Waits() {
			// No channel: nobody waits for this outcome (an upgrade
			// tells the clients that wait for a held reload, and waits
			// until they have taken the news).
			if !s.post(func() { s.requestReloadWith(reason, o, nil) }) {
				return nil, ErrStopping
			}
			return api.ReloadQueued{Queued: true}, nil
		}
		ch := s.ReloadWith(reason, o)
		select {
		case o := <-ch:
			if o.Err != nil {
				return nil, o.Err
			}
			return o.Result, nil
		case <-ctx.Done():
			return nil, errors.New("stopped waiting for the reload; it goes on")
		}
	case api.MethodScale:
		var p api.ScaleParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		return s.Scale(p.Workers)
	case api.MethodUpgrade:
		if err := s.ownerOnly(peer, req.Method); err != nil {
			return nil, err
		}
		var p upgradeParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		r, err := s.upgrade(ctx, p)
		if err != nil {
			return nil, err
		}
		return r, nil
	case api.MethodTakeover:
		if err := s.ownerOnly(peer, req.Method); err != nil {
			return nil, err
		}
		var p api.TakeoverParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		within, err := p.CommitWithin()
		if err != nil {
			return nil, err
		}
		return s.giveAway(ctx, peer, within)
	case api.MethodLogs:
		return s.serveLogs(ctx, req) // logs.go
	case api.MethodStop:
		var p api.WaitParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		s.Stop(fmt.Sprintf("asked by pid %d", peer.PID))
		if p.Waits() {
			select {
			case <-s.done:
			case <-ctx.Done():
				return nil, errors.New("stopped waiting for baton to stop; it goes on")
			}
		}
		return api.StopReply{Stopping: true}, nil
	}
	return nil, fmt.Errorf("unknown method %q; methods are %v", req.Method, api.Methods)
}

// reloadOptions are the rollout overrides of a reload request.
func reloadOptions(p api.ReloadParams) ReloadOptions {
	o := ReloadOptions{Rolling: p.Rolling, Canary: p.Canary}
	if p.CanaryWindow != nil {
		d := time.Duration(*p.CanaryWindow)
		o.CanaryWindow = &d
	}
	return o
}

// ErrOwnerOnly is wrapped by the refusal of a method that only root and
// baton's own user may use.
var ErrOwnerOnly = errors.New("permission denied")

// ownerOnly admits root and baton's own user to the methods that decide
// what baton runs as itself (upgrade: baton executes a binary of the
// caller's choosing, as root when baton is root) or where its sockets go
// (takeover: every listener and the control socket go to the caller).
// The other users the control socket admits (control_group) may ask for
// status, reload, scale and stop. A refusal is logged.
func (s *Supervisor) ownerOnly(peer control.Peer, method string) error {
	uid := os.Geteuid()
	if peer.UID == 0 || peer.UID == uid {
		return nil
	}
	what := map[string]string{
		api.MethodUpgrade:  "it makes baton execute a binary as its own user",
		api.MethodTakeover: "it hands every listener and the control socket to the caller",
	}[method]
	s.log.Warn("control socket: refused a method to a peer that is neither root nor baton's user", "method", method, "pid", peer.PID, "uid", peer.UID)
	return fmt.Errorf("%w: %s is for root and baton's own user (uid %d) only, not uid %d (%s); ask one of them, or use status, reload, scale and stop", ErrOwnerOnly, method, uid, peer.UID, what)
}

// WorkerInfo is the answer to "hello" on the worker socket.
type WorkerInfo struct {
	Slot       int      `json:"slot"`
	Generation int      `json:"generation"`
	PID        int      `json:"pid"`
	Listeners  []string `json:"listeners"`
}

// MethodReleaseFlows is the worker socket's method that takes the
// worker's UDP sockets out of the steering program (flows.go): it is
// answered once they are out, so that the worker may read what is
// queued and exit without losing a datagram.
const MethodReleaseFlows = "release"

// ReleaseParams are the params of MethodReleaseFlows: the listeners to
// release, every steered one of the worker when empty.
type ReleaseParams struct {
	Listeners []string `json:"listeners,omitempty"`
}

// ReleaseReply says which listeners were released: their sockets get no
// datagram any more (unless another worker of the generation shares one,
// with balance=shared and several workers).
type ReleaseReply struct {
	Released []string `json:"released"`
}

// handleWorker answers requests on BATON_SOCKET, from workers only.
func (s *Supervisor) handleWorker(ctx context.Context, peer control.Peer, req control.Request) (any, error) {
	if req.Method == handoff.MethodHandoff || req.Method == handoff.MethodAdopt {
		return s.handleHandoff(ctx, peer, req) // handoff.go
	}
	var info *WorkerInfo
	child := s.lineage.child(peer.PID)
	s.call(func() {
		if w := s.workerOf(child); w != nil {
			info = &WorkerInfo{Slot: w.slot.index, Generation: w.gen.id, PID: w.pid}
			for _, l := range w.gen.listeners {
				info.Listeners = append(info.Listeners, l.Spec.Name)
			}
		}
	})
	if info == nil {
		return nil, fmt.Errorf("pid %d is not a worker of this baton", peer.PID)
	}
	switch req.Method {
	case "hello":
		return info, nil
	case MethodReleaseFlows:
		var p ReleaseParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		var r ReleaseReply
		s.call(func() {
			if w := s.workerOf(child); w != nil {
				r.Released = s.releaseFlows(w, p.Listeners)
			}
		})
		if r.Released == nil {
			r.Released = []string{}
		}
		return r, nil
	}
	return nil, fmt.Errorf("unknown method %q; the worker socket answers hello, release, handoff and adopt", req.Method)
}
