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
	c, err := dial(ctx, path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r, err := request(ctx, c, path, method, params, io.LimitReader(c, MaxReply))
	if err != nil {
		return nil, err
	}
	return r.Result, nil
}

// Open sends one request to the baton at path whose reply is a stream:
// once baton has answered {"ok":true}, what it sends next is the
// method's to define (api.MethodLogs: one entry a line). The stream ends
// when baton closes it, when the caller closes it, or when ctx is done.
// Its server is checked as Call's is.
func Open(ctx context.Context, path, method string, params any) (io.ReadCloser, error) {
	c, err := dial(ctx, path)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	br := bufio.NewReaderSize(c, 64<<10)
	if _, err := request(ctx, c, path, method, params, br); err != nil {
		stop()
		c.Close()
		return nil, err
	}
	return &stream{Reader: br, c: c, stop: stop}, nil
}

// stream is what Open returns: the reply's bytes after its first line.
type stream struct {
	io.Reader
	c    net.Conn
	stop func() bool
}

// Close ends the stream.
func (s *stream) Close() error {
	s.stop()
	return s.c.Close()
}

// dial connects to the control socket at path and checks who answers.
// Errors say how to reach a baton when none answers.
func dial(ctx context.Context, path string) (net.Conn, error) {
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
	if err := CheckServer(c.(*net.UnixConn), path); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// request sends method with params on c and reads the first line of the
// reply from r (c's bytes, through a buffer or a limit). A reply that
// is not OK is a *RemoteError.
func request(ctx context.Context, c net.Conn, path, method string, params any, r io.Reader) (Reply, error) {
	req := map[string]any{"method": method}
	if params != nil {
		req["params"] = params
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	_, werr := c.Write(append(b, '\n'))
	// A server that refuses a peer answers before it reads the request
	// and closes: the write then fails (EPIPE) while the refusal waits
	// to be read. Read it, so that the caller learns why.
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	line, err := br.ReadBytes('\n')
	if werr != nil && err != nil {
		return Reply{}, fmt.Errorf("sending %s to baton at %s: %w", method, path, werr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return Reply{}, fmt.Errorf("%s: no answer from baton at %s: %w", method, path, ctx.Err())
		}
		return Reply{}, fmt.Errorf("%s: reading the answer from baton at %s: %w", method, path, err)
	}
	var rep Reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return Reply{}, fmt.Errorf("%s: baton at %s answered something that is not JSON: %w", method, path, err)
	}
	if !rep.OK {
		return Reply{}, &RemoteError{Msg: rep.Error}
	}
	return rep, nil
}

// RemoteError is an error reported by the running baton.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return e.Msg }
