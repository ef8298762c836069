package fdpass

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// callBound bounds every call in these tests. It is far beyond any wait
// they expect, however loaded the machine: only a call that ignores its
// context or deadline comes near it, and within then fails the test.
const callBound = 60 * time.Second

// TestDoneContextDoesNothing gives Send and Recv a context that is done
// before they start. Neither may move a byte: Send writes nothing, and
// Recv neither consumes the transfer waiting on the conn nor
// acknowledges it, so the next Recv gets it whole.
func TestDoneContextDoesNothing(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()

	t.Run("Send", func(t *testing.T) {
		batontest.CheckLeaks(t)
		a, b := pair(t, unix.SOCK_STREAM)
		sent, err := describe(sockets(t, 2), 8)
		if err != nil {
			t.Fatal(err)
		}
		within(t, callBound, "Send with a done context", func() { err = Send(done, a, sent) })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Send with a done context: %v, want context.Canceled", err)
		}
		b.SetReadDeadline(time.Now())
		if n, err := b.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the peer could read %d bytes (%v) after Send with a done context", n, err)
		}
	})

	t.Run("Recv", func(t *testing.T) {
		batontest.CheckLeaks(t)
		c, peer, _ := rawPair(t, unix.SOCK_STREAM)
		rawSend(t, peer, frameBytes(header{last: true, nfds: 1, total: 1}, FD{Name: "waiting"}), sockets(t, 1)...)
		var (
			got []FD
			err error
		)
		within(t, callBound, "Recv with a done context", func() { got, err = Recv(done, c, Limits{}) })
		closeFDs(got)
		if n, _, err := unix.Recvfrom(peer, make([]byte, 64), unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
			t.Errorf("the sender could read %d bytes (%v) after Recv with a done context", n, err)
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv with a done context: %d descriptors, %v; want context.Canceled", len(got), err)
		}
		ctx := ctxTimeout(t, callBound/2)
		within(t, callBound, "the next Recv", func() { got, err = Recv(ctx, c, Limits{}) })
		closeFDs(got)
		if err != nil || len(got) != 1 || got[0].Name != "waiting" {
			t.Errorf("the next Recv: %d descriptors, %v; want the one named \"waiting\"", len(got), err)
		}
	})
}

// TestRecvTimeoutWritesNothing ends a Recv before any byte of a transfer
// has arrived, in each way a wait can end, and then runs a transfer on
// the same conn. The failed Recv must leave nothing behind: a refusal
// written for the batch that was never sent would be read by the next
// Send as the answer to its own first batch.
func TestRecvTimeoutWritesNothing(t *testing.T) {
	tests := []struct {
		name string
		// end prepares b for a Recv that must fail with want; after
		// it, b's deadlines are cleared.
		end  func(t *testing.T, b *net.UnixConn) context.Context
		want error
	}{
		{name: "conn read deadline", want: os.ErrDeadlineExceeded, end: func(t *testing.T, b *net.UnixConn) context.Context {
			b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			return context.Background()
		}},
		{name: "conn deadline", want: os.ErrDeadlineExceeded, end: func(t *testing.T, b *net.UnixConn) context.Context {
			b.SetDeadline(time.Now().Add(20 * time.Millisecond))
			return context.Background()
		}},
		{name: "context deadline", want: context.DeadlineExceeded, end: func(t *testing.T, b *net.UnixConn) context.Context {
			return ctxTimeout(t, 20*time.Millisecond)
		}},
		{name: "context cancelled", want: context.Canceled, end: func(t *testing.T, b *net.UnixConn) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			a, b := pair(t, unix.SOCK_STREAM)
			ctx := tt.end(t, b)
			var err error
			within(t, callBound, "Recv from a silent peer", func() { _, err = Recv(ctx, b, Limits{}) })
			if !errors.Is(err, tt.want) {
				t.Fatalf("Recv from a silent peer: %v, want %v", err, tt.want)
			}
			b.SetDeadline(time.Time{})

			sent, err := describe(sockets(t, 2), 8)
			if err != nil {
				t.Fatal(err)
			}
			ctx = ctxTimeout(t, callBound/2)
			res := goRecv(ctx, b, Limits{})
			within(t, callBound, "Send after a failed Recv", func() { err = Send(ctx, a, sent) })
			r := <-res
			closeFDs(r.fds)
			if err != nil {
				t.Errorf("Send after a failed Recv: %v", err)
			}
			if r.err != nil {
				t.Errorf("Recv after a failed Recv: %v", r.err)
			}
		})
	}
}

// deadlineOnly has a deadline and no Done channel: odd, but allowed by
// the letter of context.Context.
type deadlineOnly struct{ context.Context }

func (deadlineOnly) Deadline() (time.Time, bool) { return time.Now().Add(time.Hour), true }

// TestDeadlineWithoutDone checks that a context with a deadline and no
// Done channel leaves the conn's own deadline in charge, and that the
// conn's deadline passing does not make Recv wait for the context.
func TestDeadlineWithoutDone(t *testing.T) {
	batontest.CheckLeaks(t)
	_, b := pair(t, unix.SOCK_STREAM)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var err error
	within(t, callBound, "Recv past the conn's deadline", func() {
		_, err = Recv(deadlineOnly{context.Background()}, b, Limits{})
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv past the conn's deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

// TestCancelOutlivesDeadlineReset cancels a Send that waits for an ack
// and has the conn's deadline cleared right after bind moved it into the
// past, before the waiting goroutine runs: the runtime then forgets the
// wake-up and parks it again. Send must still end. With one P the
// order is fixed: the goroutine that moves the deadline keeps running
// through the hook, and the woken one runs only after it.
func TestCancelOutlivesDeadlineReset(t *testing.T) {
	batontest.CheckLeaks(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var once sync.Once
	var calls atomic.Int32
	testHookPastDeadline = func(uc *net.UnixConn) {
		calls.Add(1)
		once.Do(func() { uc.SetDeadline(time.Time{}) })
	}
	defer func() { testHookPastDeadline = nil }()

	c, peer, _ := rawPair(t, unix.SOCK_STREAM)
	sent, err := describe(sockets(t, 1), 8)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	read := make(chan error, 1)
	go func() {
		// Take the frame and cancel instead of answering.
		b, oob := make([]byte, 4096), make([]byte, oobSize)
		_, oobn, _, _, err := recvmsgRetry(peer, b, oob, unix.MSG_CMSG_CLOEXEC)
		got, _ := parseRights(oob[:oobn])
		CloseAll(got)
		read <- err
		cancel()
	}()
	within(t, callBound, "Send cancelled while waiting for the ack", func() { err = Send(ctx, c, sent) })
	if rerr := <-read; rerr != nil {
		t.Fatalf("fake receiver: %v", rerr)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Send cancelled while waiting for the ack: %v, want context.Canceled", err)
	}
	if calls.Load() == 0 {
		t.Error("bind never set a past deadline: the reset was not tested")
	}
}
