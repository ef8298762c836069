package api

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/baton-dev/baton/internal/control"
)

// Client calls the methods of a running baton's control socket, one
// connection per call (control.Call: the server is checked before
// anything is sent, and errors say how to reach a baton when none
// answers). Each call is bounded by its context. A failure the running
// baton reports (a reload that failed, a refused scale) is a
// *control.RemoteError carrying its message.
type Client struct {
	// Path is the control socket's path.
	Path string
}

// call sends one request and decodes its result into result, unless nil;
// what names the result in an error.
func (c *Client) call(ctx context.Context, method string, params, result any, what string) error {
	raw, err := control.Call(ctx, c.Path, method, params)
	if err != nil {
		return err
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(raw, result); err != nil {
		return fmt.Errorf("reading %s: %w", what, err)
	}
	return nil
}

// Status returns the running baton's status, with the kernel's view.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, MethodStatus, nil, &st, "the status")
	return st, err
}

// StatusWithoutKernel returns the running baton's status without the
// kernel's view (Status.Kernel is nil), which costs the server nothing
// beyond its own state: for clients that poll.
func (c *Client) StatusWithoutKernel(ctx context.Context) (Status, error) {
	var st Status
	no := false
	err := c.call(ctx, MethodStatus, StatusParams{Kernel: &no}, &st, "the status")
	return st, err
}

// StatusJSON returns the running baton's status, with the kernel's view,
// as the JSON it sent: fields this client does not know are kept (for
// printing it).
func (c *Client) StatusJSON(ctx context.Context) (json.RawMessage, error) {
	return control.Call(ctx, c.Path, MethodStatus, nil)
}

// Reload starts a reload. With wait it returns once the reload has
// finished: its result, or the reason it failed (the old generation then
// serves on). Without wait it returns once the reload is asked for, with
// the zero ReloadResult.
func (c *Client) Reload(ctx context.Context, wait bool) (ReloadResult, error) {
	return c.ReloadWith(ctx, ReloadParams{WaitParams: WaitParams{Wait: &wait}})
}

// ReloadWith is Reload with params: whether to wait (Wait, true unless
// given) and this reload's rollout (rolling, canary).
func (c *Client) ReloadWith(ctx context.Context, p ReloadParams) (ReloadResult, error) {
	var r ReloadResult
	if !p.Waits() {
		return r, c.call(ctx, MethodReload, p, nil, "")
	}
	err := c.call(ctx, MethodReload, p, &r, "the reload result")
	return r, err
}

// Scale changes the number of worker slots to n.
func (c *Client) Scale(ctx context.Context, n int) (ScaleResult, error) {
	var r ScaleResult
	err := c.call(ctx, MethodScale, ScaleParams{Workers: n}, &r, "the scale result")
	return r, err
}

// Upgrade asks baton to re-execute itself as p.Binary. It returns once
// the new binary's pre-flight has passed, just before the execve: the
// caller then watches the status for Upgrades to grow
// (StatusWithoutKernel).
func (c *Client) Upgrade(ctx context.Context, p UpgradeParams) (UpgradeReply, error) {
	var r UpgradeReply
	err := c.call(ctx, MethodUpgrade, p, &r, "the upgrade reply")
	return r, err
}

// Stop stops baton: every worker drains. With wait it returns once baton
// has stopped, without once the stop has begun.
func (c *Client) Stop(ctx context.Context, wait bool) error {
	return c.call(ctx, MethodStop, WaitParams{Wait: &wait}, nil, "")
}
