package fdpass

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// oobSize holds one SCM_RIGHTS message of MaxFDsPerBatch descriptors, plus
// room for the SCM_CREDENTIALS, SCM_PIDFD and SCM_SECURITY messages the
// kernel adds when the caller turned on SO_PASSCRED, SO_PASSPIDFD or
// SO_PASSSEC.
var oobSize = unix.CmsgSpace(MaxFDsPerBatch*4) + unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4) + 512

// Send passes fds to the peer of conn, a connected SOCK_STREAM or
// SOCK_SEQPACKET unix socket, as one transfer, after checking the peer
// with CheckPeer.
//
// The descriptors go in batches of at most MaxFDsPerBatch, each with a
// frame describing them, and Send waits for the receiver to acknowledge
// each batch. It returns nil only once the receiver has acknowledged the
// last one: only then may the caller close its copies. On an error the
// receiver may or may not hold the descriptors, and the connection is in
// an unknown state: close it. Send never closes any of fds.
//
// Everything is checked before the first byte is sent: the peer, and
// each FD against MaxName, MaxKind and MetaHardMax (ErrTooLarge). A
// refusal from the receiver matches ErrRefused and the receiver's own
// reason (ErrTooLarge, ErrTruncated or ErrProtocol).
//
// ctx bounds Send. Its deadline, if it has one, becomes the conn's
// deadline. Once ctx is done Send makes no further sendmsg or recvmsg,
// stops waiting, and returns an error matching ctx's cause
// (context.Canceled, context.DeadlineExceeded): a ctx that is done before
// Send starts sends nothing. Send leaves no deadline on the conn that it set, and with a ctx
// that can be neither cancelled nor time out the conn's own deadlines
// apply. Send must not run at the same time as another read or write on
// conn, or as a change of its deadlines.
func Send(ctx context.Context, conn *net.UnixConn, fds []FD) error {
	return SendAllow(ctx, conn, fds, sameUser)
}

// SendAllow is Send with the caller's own check of the peer in place of
// CheckPeer's same-user-or-root rule: allow gets the peer's SO_PEERCRED
// credentials, and an error from it stops the transfer before anything is
// sent (the error returned matches ErrPeer). A nil allow means
// CheckPeer's rule. baton uses it to pass connections to a worker it
// started under another user, identified by its pid.
func SendAllow(ctx context.Context, conn *net.UnixConn, fds []FD, allow func(Cred) error) error {
	if allow == nil {
		allow = sameUser // never send unchecked by accident
	}
	if err := checkFDs(fds); err != nil {
		return err
	}
	c, err := newConn(conn)
	if err != nil {
		return err
	}
	cred, err := PeerCred(conn)
	if err != nil {
		return err
	}
	if err := allow(cred); err != nil {
		if !errors.Is(err, ErrPeer) {
			err = fmt.Errorf("%w: pid %d (uid %d): %w", ErrPeer, cred.PID, cred.UID, err)
		}
		return fmt.Errorf("fdpass: not sending: %w", err)
	}
	release := c.bind(ctx)
	defer release()

	var (
		frame []byte
		ints  []int
		seq   uint32
	)
	for i := 0; ; seq++ {
		// A batch takes descriptors while they fit in a message and
		// their entries in MaxBody; one entry always fits.
		j, body := i, 0
		for j < len(fds) && j-i < MaxFDsPerBatch && body+entrySize(&fds[j]) <= MaxBody {
			body += entrySize(&fds[j])
			j++
		}
		h := header{last: j == len(fds), nfds: j - i, seq: seq, total: len(fds), body: body}
		frame = h.appendTo(frame[:0])
		ints = ints[:0]
		for k := i; k < j; k++ {
			frame = appendEntry(frame, &fds[k])
			ints = append(ints, fds[k].Fd)
		}
		if err := c.sendBatch(frame, ints); err != nil {
			return fmt.Errorf("fdpass: sending batch %d of a %d-descriptor transfer: %w", seq, len(fds), c.explain(err, fds[i:j]))
		}
		if h.last {
			return nil
		}
		i = j
	}
}

// checkFDs checks what Send is asked to send against the protocol's hard
// limits.
func checkFDs(fds []FD) error {
	if len(fds) > FDsHardMax {
		return fmt.Errorf("fdpass: %w: %d descriptors in one transfer, over FDsHardMax %d: split the transfer", ErrTooLarge, len(fds), FDsHardMax)
	}
	bytes := 0
	for i := range fds {
		f := &fds[i]
		switch {
		case f.Fd < 0:
			return fmt.Errorf("fdpass: descriptor %d (entry %d, %q) is negative: pass open descriptors only", f.Fd, i, f.Name)
		case len(f.Name) > MaxName:
			return fmt.Errorf("fdpass: %w: entry %d: the name is %d bytes, over MaxName %d", ErrTooLarge, i, len(f.Name), MaxName)
		case len(f.Kind) > MaxKind:
			return fmt.Errorf("fdpass: %w: entry %d (%q): the kind is %d bytes, over MaxKind %d", ErrTooLarge, i, f.Name, len(f.Kind), MaxKind)
		case len(f.Meta) > MetaHardMax:
			return fmt.Errorf("fdpass: %w: entry %d (%q): meta is %d bytes, over MetaHardMax %d", ErrTooLarge, i, f.Name, len(f.Meta), MetaHardMax)
		}
		bytes += entrySize(f)
		if bytes > BytesHardMax {
			return fmt.Errorf("fdpass: %w: the descriptions pass BytesHardMax %d at entry %d: split the transfer", ErrTooLarge, BytesHardMax, i)
		}
	}
	return nil
}

// sendBatch writes one frame with its descriptors and waits for the
// receiver's acknowledgement.
func (c *conn) sendBatch(frame []byte, fds []int) error {
	if err := c.writeFrame(frame, fds); err != nil {
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			// The receiver hung up; it may have said why first.
			if r := c.pendingRefusal(); r != nil {
				return r
			}
		}
		return err
	}
	seq := binary.BigEndian.Uint32(frame[8:12])
	var b [AckSize]byte
	if err := c.readFull(b[:], false); err != nil {
		return fmt.Errorf("waiting for the acknowledgement: %w", err)
	}
	a, n, err := decodeAck(b[:])
	if err != nil {
		return err
	}
	if n > 0 {
		msg := make([]byte, n)
		if err := c.readFull(msg, false); err != nil {
			return fmt.Errorf("reading the receiver's refusal: %w", err)
		}
		a.msg = string(msg)
	}
	if err := c.endOfMessage(); err != nil {
		return err
	}
	if a.seq != seq {
		return fmt.Errorf("%w: the receiver acknowledged batch %d, not %d", ErrProtocol, a.seq, seq)
	}
	if a.status != ackOK {
		return &refusal{status: a.status, msg: a.msg}
	}
	return nil
}

// writeFrame writes frame with fds riding on its first byte. On a
// SOCK_SEQPACKET socket it goes in records of at most MaxRecord bytes.
func (c *conn) writeFrame(frame []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for off := 0; off < len(frame); {
		end := len(frame)
		if c.seqpacket && end-off > MaxRecord {
			end = off + MaxRecord
		}
		n, err := c.sendmsg(frame[off:end], oob)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		// A sendmsg that sent anything sent the descriptors with its
		// first byte; the rest of the frame goes without them.
		oob = nil
		off += n
	}
	return nil
}

// pendingRefusal reads, without waiting, a refusal the receiver sent
// before hanging up.
func (c *conn) pendingRefusal() error {
	if c.ctx.Err() != nil {
		return nil
	}
	buf := make([]byte, AckSize+MaxAckMessage)
	var n int
	var fds []int
	c.raw.Read(func(fd uintptr) bool {
		var oobn int
		var err error
		n, oobn, _, _, err = unix.Recvmsg(int(fd), buf, c.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if err == nil {
			fds, _ = parseRights(c.oob[:oobn])
		}
		return true
	})
	c.discard(fds) // an acknowledgement never carries descriptors
	if n < AckSize {
		return nil
	}
	a, m, err := decodeAck(buf[:AckSize])
	if err != nil || a.status == ackOK || AckSize+m > n {
		return nil
	}
	return &refusal{status: a.status, msg: string(buf[AckSize : AckSize+m])}
}

// explain turns an error from sendmsg into one that says what to do.
func (c *conn) explain(err error, batch []FD) error {
	err = c.ctxErr(err)
	switch {
	case errors.Is(err, unix.EBADF):
		for i := range batch {
			if _, ferr := unix.FcntlInt(uintptr(batch[i].Fd), unix.F_GETFD, 0); ferr != nil {
				return fmt.Errorf("descriptor %d (%q) is not open: %w", batch[i].Fd, batch[i].Name, err)
			}
		}
	case errors.Is(err, unix.ETOOMANYREFS):
		return fmt.Errorf("%w: the kernel allows a user no more descriptors in flight than the sender's RLIMIT_NOFILE: raise it, or have the receiver read sooner", err)
	case errors.Is(err, unix.EMSGSIZE) && c.seqpacket:
		return fmt.Errorf("%w: a %d-byte record does not fit the socket's send buffer: raise SO_SNDBUF", err, MaxRecord)
	}
	return err
}

// Recv receives one transfer from the peer of conn, a connected
// SOCK_STREAM or SOCK_SEQPACKET unix socket, acknowledging each batch, and
// returns the descriptors in the order they were sent. They have
// FD_CLOEXEC set and belong to the caller.
//
// lim bounds what the peer may send; a frame that promises more is
// refused before anything is allocated for it. On any error every
// descriptor received so far is closed. Errors match ErrTruncated when the
// kernel dropped descriptors (most often because this process's
// RLIMIT_NOFILE cannot hold them), ErrTooLarge for limits, ErrProtocol for
// a peer that breaks the protocol, and wrap io.EOF when the peer closed the
// connection before sending anything.
//
// An error before the first byte of the transfer arrived (the peer closed
// the connection, ctx ended, the conn's deadline passed) leaves the
// connection as it was: Recv has read and written nothing, and the
// connection may be used again. After that first byte, the connection is
// in an unknown state: close it. The sender is then told why (best
// effort), unless ctx ended Recv.
//
// Recv does not check the peer: baton receives connections from workers
// that may run as other users. Call CheckPeer first when the sender must
// be this user or root. ctx and deadlines work as for Send.
func Recv(ctx context.Context, conn *net.UnixConn, lim Limits) ([]FD, error) {
	return recv(ctx, conn, lim, oobSize)
}

// recv is Recv with a control buffer of oobLen bytes; tests make it short.
func recv(ctx context.Context, conn *net.UnixConn, lim Limits, oobLen int) (fds []FD, err error) {
	lim, err = lim.withDefaults()
	if err != nil {
		return nil, err
	}
	c, err := newConn(conn)
	if err != nil {
		return nil, err
	}
	if oobLen != len(c.oob) {
		c.oob = make([]byte, oobLen)
	}
	if lim.Discard != nil {
		c.discard = lim.Discard
	}
	release := c.bind(ctx)
	defer release()

	var out []FD
	defer func() {
		if err != nil {
			// Ours alone until we return them: let go of every
			// descriptor received so far so a failed transfer leaks
			// nothing.
			fds := make([]int, len(out))
			for i := range out {
				fds[i] = out[i].Fd
			}
			c.discard(fds)
		}
	}()
	t := transfer{lim: lim}
	for {
		seq, before := t.seq, len(out)
		if err := c.recvBatch(&t, &out); err != nil {
			err = c.ctxErr(err)
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("fdpass: the peer closed the connection without sending a transfer: %w", err)
			}
			if c.received > 0 && c.ctx.Err() == nil {
				// The sender has begun and waits for the answer.
				// Before its first byte it waits for none, and would
				// take one for the answer to a batch it has yet to send.
				c.refuse(seq, err)
			}
			return nil, fmt.Errorf("fdpass: receiving batch %d (after %d descriptors): %w", seq, before, err)
		}
		if err := c.writeAll(ack{status: ackOK, seq: seq}.appendTo(nil)); err != nil {
			return nil, fmt.Errorf("fdpass: acknowledging batch %d: %w", seq, c.ctxErr(err))
		}
		if t.done {
			return out, nil
		}
	}
}

// recvBatch reads one frame and its descriptors into out.
func (c *conn) recvBatch(t *transfer, out *[]FD) error {
	var hb [HeaderSize]byte
	fds, err := c.readFrameStart(hb[:], t.seq == 0)
	if err != nil {
		return err
	}
	h, err := decodeHeader(hb[:], t.lim)
	if err == nil {
		err = t.next(h)
	}
	if err == nil && len(fds) != h.nfds {
		err = fmt.Errorf("%w: the frame announces %d descriptors and %d arrived with it", ErrProtocol, h.nfds, len(fds))
	}
	if err != nil {
		c.discard(fds) // not handed to out yet
		return err
	}
	if *out == nil {
		*out = make([]FD, 0, min(h.total, 4096))
	}
	start := len(*out)
	for _, fd := range fds {
		*out = append(*out, FD{Fd: fd})
	}
	if h.body > 0 {
		body := make([]byte, h.body)
		if err := c.readFull(body, false); err != nil {
			return fmt.Errorf("reading the frame body: %w", err)
		}
		if err := decodeBody(body, (*out)[start:], t.lim); err != nil {
			return err
		}
	}
	return c.endOfMessage()
}

// readFrameStart reads a frame header and the descriptors that arrived
// with its first byte. A clean end of stream before any byte wraps io.EOF
// when first is set.
func (c *conn) readFrameStart(b []byte, first bool) ([]int, error) {
	c.arrived = nil
	err := c.readFull(b, true)
	if err != nil {
		if first && c.nread == 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, io.EOF
		}
		return nil, err
	}
	fds := c.arrived
	c.arrived = nil
	return fds, nil
}

// refuse tells the sender why the transfer failed, trying once and never
// waiting: the caller is about to close the connection anyway.
func (c *conn) refuse(seq uint32, err error) {
	status := byte(ackRefused)
	switch {
	case errors.Is(err, ErrProtocol):
		status = ackProtocol
	case errors.Is(err, ErrTooLarge):
		status = ackTooLarge
	case errors.Is(err, ErrTruncated):
		status = ackTruncated
	}
	b := ack{status: status, seq: seq, msg: err.Error()}.appendTo(nil)
	c.raw.Write(func(fd uintptr) bool {
		unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		return true
	})
}

// PeerCred returns the credentials of conn's peer from SO_PEERCRED.
func PeerCred(conn *net.UnixConn) (Cred, error) {
	if conn == nil {
		return Cred{}, errors.New("fdpass: nil connection")
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("fdpass: %w", err)
	}
	var uc *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("fdpass: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("fdpass: identifying the peer: %w", os.NewSyscallError("getsockopt SO_PEERCRED", serr))
	}
	return Cred{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}, nil
}

// CheckPeer returns the credentials of conn's peer and an error matching
// ErrPeer unless the peer runs as this process's effective uid or as
// root. Send calls it before sending anything; a receiver that must trust
// its sender calls it before Recv.
func CheckPeer(conn *net.UnixConn) (Cred, error) {
	cred, err := PeerCred(conn)
	if err != nil {
		return cred, err
	}
	if err := sameUser(cred); err != nil {
		return cred, fmt.Errorf("fdpass: %w", err)
	}
	return cred, nil
}

func sameUser(c Cred) error {
	if uid := os.Geteuid(); c.UID != 0 && c.UID != uid {
		return fmt.Errorf("%w: pid %d runs as uid %d, and only root and this process's uid %d are trusted: run both sides as one user, or check the peer yourself with SendAllow", ErrPeer, c.PID, c.UID, uid)
	}
	return nil
}

// conn is one Send or Recv on a socket.
type conn struct {
	uc        *net.UnixConn
	raw       syscall.RawConn
	seqpacket bool
	// ctx ends the call (see bind); deadline says that bind made its
	// deadline the conn's.
	ctx      context.Context
	deadline bool

	oob []byte
	// rec holds the last SOCK_SEQPACKET record and pend its unread part:
	// a record must be read whole or the kernel drops the rest.
	rec, pend []byte
	// arrived holds descriptors that came with the first read of a
	// readFull that allows them; nread counts bytes of that readFull.
	arrived []int
	nread   int
	// received counts the bytes the call has read.
	received int
	// discard takes the descriptors the call lets go of
	// (Limits.Discard, or CloseAll).
	discard func([]int)
}

func newConn(uc *net.UnixConn) (*conn, error) {
	if uc == nil {
		return nil, errors.New("fdpass: nil connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("fdpass: %w", err)
	}
	var typ int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil {
		return nil, fmt.Errorf("fdpass: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("fdpass: %w", os.NewSyscallError("getsockopt SO_TYPE", serr))
	}
	c := &conn{uc: uc, raw: raw, ctx: context.Background(), oob: make([]byte, oobSize), discard: CloseAll}
	switch typ {
	case unix.SOCK_STREAM:
	case unix.SOCK_SEQPACKET:
		c.seqpacket = true
		c.rec = make([]byte, MaxRecord)
	default:
		return nil, fmt.Errorf("fdpass: %w: the socket is a datagram socket (type %d), which does not keep one peer's frames together: use SOCK_STREAM or SOCK_SEQPACKET", ErrNotSupported, typ)
	}
	return c, nil
}

// aLongTimeAgo is a deadline that has passed: setting it wakes every
// blocked read and write.
var aLongTimeAgo = time.Unix(1, 0)

// reexpireEvery is how often bind sets the past deadline again while a
// call that its context ended has not returned.
const reexpireEvery = 100 * time.Millisecond

// testHookPastDeadline, if set, runs each time bind has set the past
// deadline.
var testHookPastDeadline func(*net.UnixConn)

// bind makes ctx govern the conn until release is called: ctx's deadline
// becomes the conn's, and once ctx is done the conn's deadline is in the
// past, which fails every read and write and wakes any that waits.
//
// Setting it once is not enough. When a deadline passes, the runtime
// readies the goroutine waiting on the conn; if the deadline is changed
// again before that goroutine runs, which on a loaded machine can be a
// long while, the runtime forgets the wake-up and parks it again for good
// (internal/poll's runtime_pollWait). Nothing here changes the deadline
// during a call and callers must not, but the price of a lost wake-up is
// a call that never returns: so until release, bind sets the past
// deadline again every reexpireEvery. recvmsg and sendmsg check ctx too,
// so a call that a done ctx woke makes no further syscall.
//
// release returns only when nothing bind started can touch the conn any
// more, and clears the deadline if bind set one.
func (c *conn) bind(ctx context.Context) (release func()) {
	c.ctx = ctx
	if ctx.Done() == nil {
		return func() {}
	}
	if d, ok := ctx.Deadline(); ok {
		c.uc.SetDeadline(d)
		c.deadline = true
	}
	if ctx.Err() != nil {
		// Done already: fail the first read or write now rather than
		// when a goroutine gets to it, so that nothing moves.
		c.expire()
		return func() { c.uc.SetDeadline(time.Time{}) }
	}
	finished := make(chan struct{})
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		tick := time.NewTicker(reexpireEvery)
		defer tick.Stop()
		for {
			c.expire()
			select {
			case <-finished:
				return
			case <-tick.C:
			}
		}
	})
	return func() {
		close(finished)
		touched := c.deadline
		if !stop() {
			<-fired // no past deadline can follow our clearing
			touched = true
		}
		if touched {
			c.uc.SetDeadline(time.Time{})
		}
	}
}

// expire sets a deadline in the past.
func (c *conn) expire() {
	c.uc.SetDeadline(aLongTimeAgo)
	if h := testHookPastDeadline; h != nil {
		h(c.uc)
	}
}

// ctxErr reports a deadline that bind set for the context as the
// context's error.
func (c *conn) ctxErr(err error) error {
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if c.deadline {
		// The conn's deadline is the context's (bind replaced any
		// other), and may pass a moment before the context notices.
		<-c.ctx.Done()
	}
	if c.ctx.Err() == nil {
		return err // the caller's own deadline on the conn
	}
	return c.doneErr()
}

// doneErr is the error of a call that its done context ended.
func (c *conn) doneErr() error {
	if cause := context.Cause(c.ctx); !errors.Is(cause, context.DeadlineExceeded) {
		return cause
	}
	return fmt.Errorf("%w: the peer did not answer in time", context.Cause(c.ctx))
}

// errDone stands for c.doneErr() inside the callbacks of recvmsg and
// sendmsg.
var errDone = errors.New("context done")

// readFull reads exactly len(b) bytes: never more, since what follows
// belongs to whoever reads the connection next. Descriptors may come
// only with the first byte and only when fdsOK is set; they are kept in
// c.arrived. Any other descriptors are closed and make an error.
func (c *conn) readFull(b []byte, fdsOK bool) error {
	c.nread = 0
	for c.nread < len(b) {
		first := c.nread == 0
		var (
			n     int
			fds   []int
			flags int
			err   error
		)
		if c.seqpacket && len(c.pend) > 0 {
			n = copy(b[c.nread:], c.pend)
			c.pend = c.pend[n:]
			c.nread += n
			continue
		}
		if c.seqpacket {
			n, fds, flags, err = c.recvmsg(c.rec)
			if n > 0 {
				c.pend = c.rec[:n]
			}
		} else {
			n, fds, flags, err = c.recvmsg(b[c.nread:])
			c.nread += n
		}
		c.received += n
		if len(fds) > 0 && (!fdsOK || !first || c.seqpacket && len(c.arrived) > 0) {
			c.discard(fds)
			c.discard(c.arrived)
			c.arrived = nil
			if !fdsOK {
				return fmt.Errorf("%w: %d descriptors arrived with bytes that carry none; descriptors ride only on the first byte of a frame", ErrProtocol, len(fds))
			}
			return fmt.Errorf("%w: %d descriptors arrived past the first byte of a frame; they must ride on the first byte of the frame they belong to", ErrProtocol, len(fds))
		}
		c.arrived = append(c.arrived, fds...)
		if err == nil {
			err = c.checkFlags(flags, len(fds))
		}
		if err == nil && n == 0 && len(c.pend) == 0 {
			err = fmt.Errorf("the peer closed the connection %d bytes into a %d-byte read: %w", c.nread, len(b), io.ErrUnexpectedEOF)
		}
		if err != nil {
			c.discard(c.arrived)
			c.arrived = nil
			return err
		}
	}
	return nil
}

// checkFlags turns MSG_CTRUNC and MSG_TRUNC into errors.
func (c *conn) checkFlags(flags, got int) error {
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		var lim unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		return fmt.Errorf("%w: %d descriptors arrived, now closed, and the kernel dropped the rest (MSG_CTRUNC): the receiving process (pid %d) has RLIMIT_NOFILE %d, too low for the transfer, or its control buffer is short: raise the limit (ulimit -n, LimitNOFILE=) or send fewer", ErrTruncated, got, os.Getpid(), lim.Cur)
	case flags&unix.MSG_TRUNC != 0:
		return fmt.Errorf("%w: a record was longer than %d bytes and the kernel dropped the rest (MSG_TRUNC): on SOCK_SEQPACKET write frames in records of at most MaxRecord bytes", ErrTruncated, MaxRecord)
	}
	return nil
}

// endOfMessage checks that a frame or acknowledgement ended where its
// SOCK_SEQPACKET record did.
func (c *conn) endOfMessage() error {
	if n := len(c.pend); n > 0 {
		c.pend = nil
		return fmt.Errorf("%w: a record runs %d bytes past the end of the message: records must not span messages", ErrProtocol, n)
	}
	return nil
}

// recvmsg wraps recvmsg(2) with MSG_CMSG_CLOEXEC and returns the
// descriptors that came with the bytes, waiting through the poller. Once
// c.ctx is done it reads nothing.
func (c *conn) recvmsg(b []byte) (n int, fds []int, flags int, err error) {
	var serr, perr error
	err = c.raw.Read(func(fd uintptr) bool {
		if c.ctx.Err() != nil {
			serr = errDone
			return true
		}
		var oobn int
		for {
			n, oobn, flags, _, serr = unix.Recvmsg(int(fd), b, c.oob, unix.MSG_CMSG_CLOEXEC)
			if serr != unix.EINTR {
				break
			}
		}
		if serr == unix.EAGAIN {
			return false
		}
		if serr == nil {
			fds, perr = parseRights(c.oob[:oobn])
		}
		return true
	})
	switch {
	case err != nil:
	case serr == errDone:
		err = c.doneErr()
	case serr != nil:
		err = os.NewSyscallError("recvmsg", serr)
	case perr != nil:
		err = perr
	}
	if err != nil {
		c.discard(fds)
		return 0, nil, 0, err
	}
	return n, fds, flags, nil
}

// sendmsg wraps sendmsg(2), waiting through the poller. Once c.ctx is
// done it writes nothing.
func (c *conn) sendmsg(b, oob []byte) (int, error) {
	var n int
	var serr error
	err := c.raw.Write(func(fd uintptr) bool {
		if c.ctx.Err() != nil {
			serr = errDone
			return true
		}
		for {
			n, serr = unix.SendmsgN(int(fd), b, oob, nil, unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				break
			}
		}
		return serr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if serr == errDone {
		return 0, c.doneErr()
	}
	if serr != nil {
		return 0, os.NewSyscallError("sendmsg", serr)
	}
	return n, nil
}

func (c *conn) writeAll(b []byte) error {
	for len(b) > 0 {
		n, err := c.sendmsg(b, nil)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		b = b[n:]
	}
	return nil
}

// parseRights returns the descriptors of every SCM_RIGHTS message in oob.
// It closes pidfds from SCM_PIDFD (SO_PASSPIDFD), which are not part of
// the transfer. It never drops a descriptor: on a malformed buffer it
// still returns those it found, with an error.
func parseRights(oob []byte) ([]int, error) {
	var fds []int
	hdr := unix.SizeofCmsghdr
	for len(oob) >= hdr {
		var l int
		if hdr == 16 {
			l = int(binary.NativeEndian.Uint64(oob))
		} else {
			l = int(binary.NativeEndian.Uint32(oob))
		}
		level := int32(binary.NativeEndian.Uint32(oob[hdr-8:]))
		typ := int32(binary.NativeEndian.Uint32(oob[hdr-4:]))
		if l < hdr || l > len(oob) {
			return fds, fmt.Errorf("%w: malformed control message", ErrProtocol)
		}
		if level == unix.SOL_SOCKET && (typ == unix.SCM_RIGHTS || typ == unix.SCM_PIDFD) {
			for d := oob[unix.CmsgLen(0):l]; len(d) >= 4; d = d[4:] {
				fd := int(int32(binary.NativeEndian.Uint32(d)))
				if typ == unix.SCM_PIDFD {
					unix.Close(fd)
					continue
				}
				fds = append(fds, fd)
			}
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return fds, nil
}

// CloseAll closes fds: each run of consecutive numbers with one
// close_range(2) (Linux 5.9+), the others with close(2). Received
// descriptors take the lowest free numbers, so a transfer's are mostly
// one run, and where system calls are dear a call per descriptor is most
// of what passing a descriptor on costs. fds itself is left as it was.
func CloseAll(fds []int) {
	fds = slices.Clone(fds)
	slices.Sort(fds)
	for i := 0; i < len(fds); {
		j := i
		for j+1 < len(fds) && fds[j+1] == fds[j]+1 {
			j++
		}
		if j > i && unix.CloseRange(uint(fds[i]), uint(fds[j]), 0) == nil {
			i = j + 1
			continue
		}
		for ; i <= j; i++ {
			unix.Close(fds[i])
		}
	}
}
