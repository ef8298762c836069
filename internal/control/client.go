package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"syscall"
)

// Call sends one request to the baton at path and returns its result. The
// context bounds the whole exchange. Errors say how to reach a baton when
// none answers.
//
// Before sending anything, Call checks who answers (CheckServer): a
// process of another user than root or the caller is refused, and the
// error wraps ErrUntrustedServer. Its socket takes no descriptors
// (SO_PASSRIGHTS=0 where the kernel has it).
func Call(ctx context.Context, path, method string, params any) (json.RawMessage, error) {
	c, err := dialer().DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("no baton is running at %s (no such socket): start one with `baton run`, or pass the --name or --control it was started with", path)
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("nothing answers at %s: the baton that made it is gone; start one with `baton run`", path)
		case errors.Is(err, fs.ErrPermission):
			return nil, fmt.Errorf("%s: permission denied: the control socket belongs to another user; run as that user or root", path)
		}
		return nil, fmt.Errorf("connecting to baton at %s: %w", path, err)
	}
	defer c.Close()
	if err := CheckServer(c.(*net.UnixConn), path); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	req := map[string]any{"method": method}
	if params != nil {
		req["params"] = params
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	_, werr := c.Write(append(b, '\n'))
	// A server that refuses a peer answers before it reads the request
	// and closes: the write then fails (EPIPE) while the refusal waits
	// to be read. Read it, so that the caller learns why.
	line, err := bufio.NewReaderSize(io.LimitReader(c, MaxReply), 64<<10).ReadBytes('\n')
	if werr != nil && err != nil {
		return nil, fmt.Errorf("sending %s to baton at %s: %w", method, path, werr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: no answer from baton at %s: %w", method, path, ctx.Err())
		}
		return nil, fmt.Errorf("%s: reading the answer from baton at %s: %w", method, path, err)
	}
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("%s: baton at %s answered something that is not JSON: %w", method, path, err)
	}
	if !r.OK {
		return nil, &RemoteError{Msg: r.Error}
	}
	return r.Result, nil
}

// RemoteError is an error reported by the running baton.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return e.Msg }
