package fdpass

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// frameBytes encodes a frame as Send would, with the body length filled in.
func frameBytes(h header, entries ...FD) []byte {
	var body []byte
	for i := range entries {
		body = appendEntry(body, &entries[i])
	}
	h.body = len(body)
	return append(h.appendTo(nil), body...)
}

// rawSend writes data with fds on a raw descriptor.
func rawSend(t *testing.T, fd int, data []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(fd, data, oob, nil, 0); err != nil {
		t.Fatalf("fake peer: sendmsg: %v", err)
	}
}

// sendEmpty sends a SOCK_SEQPACKET record of no bytes with fds, which
// unix.Sendmsg would pad with a byte.
func sendEmpty(t *testing.T, fd int, fds ...int) {
	t.Helper()
	oob := unix.UnixRights(fds...)
	msg := unix.Msghdr{Control: &oob[0]}
	msg.SetControllen(len(oob))
	if _, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0); errno != 0 {
		t.Fatalf("fake peer: sendmsg: %v", errno)
	}
}

// TestRecvFromFakePeer feeds Recv what a broken or hostile sender might
// write. Recv must return a clear error, close every descriptor it got
// and not panic.
func TestRecvFromFakePeer(t *testing.T) {
	one := func(name string) FD { return FD{Name: name, Kind: "conn", Meta: []byte("state")} }
	tests := []struct {
		name    string
		typ     int
		lim     Limits
		peer    func(t *testing.T, fd int, fds []int) // fds: 5 sockets the peer may pass
		hang    bool                                  // the peer stays connected: the context ends Recv
		wantErr error
	}{
		{name: "hangs up at once", peer: func(t *testing.T, fd int, fds []int) {}, wantErr: io.EOF},
		{name: "half a header", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))[:10], fds[0])
		}, wantErr: io.ErrUnexpectedEOF},
		{name: "HTTP request", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, []byte("GET / HTTP/1.1\r\nHost: baton\r\n\r\n"))
		}, wantErr: ErrProtocol},
		{name: "garbage with descriptors", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, bytes.Repeat([]byte{0xa5}, 64), fds...)
		}, wantErr: ErrProtocol},
		{name: "version 2", peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))
			b[4] = 2
			rawSend(t, fd, b, fds[0])
		}, wantErr: ErrProtocol},
		{name: "fewer descriptors than announced", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true, nfds: 3, total: 3}, one("a"), one("b"), one("c")), fds[:2]...)
		}, wantErr: ErrProtocol},
		{name: "more descriptors than announced", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true, nfds: 1, total: 1}, one("a")), fds[:4]...)
		}, wantErr: ErrProtocol},
		{name: "descriptors on an empty transfer", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true}), fds[:2]...)
		}, wantErr: ErrProtocol},
		{name: "descriptors with the body", peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))
			rawSend(t, fd, b[:HeaderSize], fds[0])
			rawSend(t, fd, b[HeaderSize:], fds[1:3]...)
		}, wantErr: ErrProtocol},
		{name: "a million descriptors promised", peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{nfds: 1, total: 1_000_000}, one("a")), fds[0])
		}, wantErr: ErrTooLarge},
		{name: "body over the limits", lim: Limits{MaxMeta: 100}, peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, rawHeader("BFDB", 1, flagLast, 1, 0, 1, 10_000), fds[0])
		}, wantErr: ErrTooLarge},
		{name: "meta over MaxMeta", lim: Limits{MaxMeta: 100}, peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true, nfds: 1, total: 1}, FD{Name: "a", Meta: make([]byte, 101)}), fds[0])
		}, wantErr: ErrTooLarge},
		{name: "bytes after the last entry", peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))
			b[HeaderSize-1] += 3 // body length
			rawSend(t, fd, append(b, "xyz"...), fds[0])
		}, wantErr: ErrProtocol},
		{name: "body cut short", peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 2, total: 2}, one("a"), FD{Name: "b", Meta: make([]byte, 1000)})
			rawSend(t, fd, b[:len(b)-100], fds[:2]...)
		}, wantErr: io.ErrUnexpectedEOF},
		{name: "batch out of order", hang: true, peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{nfds: 2, total: 4}, one("a"), one("b")), fds[:2]...)
			rawSend(t, fd, frameBytes(header{seq: 5, last: true, nfds: 2, total: 4}, one("c"), one("d")), fds[2:4]...)
		}, wantErr: ErrProtocol},
		{name: "stops after a batch", hang: true, peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{nfds: 2, total: 4}, one("a"), one("b")), fds[:2]...)
		}, wantErr: context.DeadlineExceeded},
		{name: "stops mid-header", hang: true, peer: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))[:7], fds[0])
		}, wantErr: context.DeadlineExceeded},
		{name: "silent", hang: true, peer: func(t *testing.T, fd int, fds []int) {}, wantErr: context.DeadlineExceeded},
		{name: "seqpacket record over MaxRecord", typ: unix.SOCK_SEQPACKET, peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, FD{Name: "a", Meta: make([]byte, MaxRecord)})
			rawSend(t, fd, b, fds[0])
		}, lim: Limits{MaxMeta: 2 * MaxRecord}, wantErr: ErrTruncated},
		{name: "seqpacket record spans frames", typ: unix.SOCK_SEQPACKET, peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))
			rawSend(t, fd, append(b, "next frame"...), fds[0])
		}, wantErr: ErrProtocol},
		{name: "seqpacket descriptors on the second record", typ: unix.SOCK_SEQPACKET, peer: func(t *testing.T, fd int, fds []int) {
			b := frameBytes(header{last: true, nfds: 1, total: 1}, one("a"))
			rawSend(t, fd, b[:HeaderSize], fds[0])
			rawSend(t, fd, b[HeaderSize:], fds[1:]...)
		}, wantErr: ErrProtocol},
		{name: "seqpacket empty record with descriptors", typ: unix.SOCK_SEQPACKET, peer: func(t *testing.T, fd int, fds []int) {
			sendEmpty(t, fd, fds...)
		}, wantErr: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			typ := tt.typ
			if typ == 0 {
				typ = unix.SOCK_STREAM
			}
			c, peer, hangup := rawPair(t, typ)
			tt.peer(t, peer, sockets(t, 5))
			if !tt.hang {
				hangup()
			}
			timeout := 5 * time.Second
			if tt.hang {
				timeout = 100 * time.Millisecond
			}
			got, err := Recv(ctxTimeout(t, timeout), c, tt.lim)
			closeFDs(got)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Recv: %v, want %v", err, tt.wantErr)
			}
			if len(got) != 0 {
				t.Errorf("Recv returned %d descriptors with an error", len(got))
			}
			if !strings.HasPrefix(err.Error(), "fdpass: ") {
				t.Errorf("error %q does not say where it comes from", err)
			}
		})
	}
}

// TestSendToFakeReceiver answers Send's first batch the way a broken or
// hostile receiver might.
func TestSendToFakeReceiver(t *testing.T) {
	ackBytes := func(a ack) []byte { return a.appendTo(nil) }
	tests := []struct {
		name    string
		typ     int
		reply   func(t *testing.T, fd int, fds []int)
		hang    bool
		wantErr []error
		wantMsg string
	}{
		{name: "acknowledges", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{}))
		}},
		{name: "acknowledges on seqpacket", typ: unix.SOCK_SEQPACKET, reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{}))
		}},
		{name: "another magic", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, []byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}, wantErr: []error{ErrProtocol}},
		{name: "another batch", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{seq: 9}))
		}, wantErr: []error{ErrProtocol}},
		{name: "descriptors with the ack", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{}), fds...)
		}, wantErr: []error{ErrProtocol}},
		{name: "a positive ack with a message", reply: func(t *testing.T, fd int, fds []int) {
			b := ackBytes(ack{status: ackRefused, msg: "hello"})
			b[5] = ackOK
			rawSend(t, fd, b)
		}, wantErr: []error{ErrProtocol}},
		{name: "refusal", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{status: ackTooLarge, msg: "too large: 3 is over Limits.MaxFDs 2"}))
		}, wantErr: []error{ErrRefused, ErrTooLarge}, wantMsg: "over Limits.MaxFDs 2"},
		{name: "seqpacket ack spans two messages", typ: unix.SOCK_SEQPACKET, reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, append(ackBytes(ack{}), ackBytes(ack{})...))
		}, wantErr: []error{ErrProtocol}},
		{name: "hangs up", reply: func(t *testing.T, fd int, fds []int) {}, wantErr: []error{io.ErrUnexpectedEOF}},
		{name: "half an ack", reply: func(t *testing.T, fd int, fds []int) {
			rawSend(t, fd, ackBytes(ack{})[:5])
		}, hang: true, wantErr: []error{context.DeadlineExceeded}},
		{name: "silent", reply: func(t *testing.T, fd int, fds []int) {}, hang: true, wantErr: []error{context.DeadlineExceeded}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			typ := tt.typ
			if typ == 0 {
				typ = unix.SOCK_STREAM
			}
			c, peer, hangup := rawPair(t, typ)
			sent, err := describe(sockets(t, 3), 8)
			if err != nil {
				t.Fatal(err)
			}
			extra := sockets(t, 3)
			done := make(chan struct{})
			go func() {
				// Read the first frame whole (it is small), close
				// what came with it, answer.
				defer close(done)
				b, oob := make([]byte, 4096), make([]byte, oobSize)
				_, oobn, _, _, err := recvmsgRetry(peer, b, oob, unix.MSG_CMSG_CLOEXEC)
				if err != nil {
					t.Errorf("fake receiver: %v", err)
					return
				}
				got, _ := parseRights(oob[:oobn])
				CloseAll(got)
				tt.reply(t, peer, extra)
				if !tt.hang {
					hangup()
				}
			}()
			timeout := 5 * time.Second
			if tt.hang {
				timeout = 100 * time.Millisecond
			}
			err = Send(ctxTimeout(t, timeout), c, sent)
			<-done
			if len(tt.wantErr) == 0 && err != nil {
				t.Fatalf("Send: %v", err)
			}
			for _, w := range tt.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("Send: %v, want %v", err, w)
				}
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Send: %q does not contain the receiver's reason %q", err, tt.wantMsg)
			}
		})
	}
}

// TestSendRefusedMidFrame has the receiver refuse a batch and hang up
// while Send is still writing it: Send reports the receiver's reason,
// not just a broken pipe.
func TestSendRefusedMidFrame(t *testing.T) {
	batontest.CheckLeaks(t)
	c, peer, hangup := rawPair(t, unix.SOCK_STREAM)
	sent, err := describe(sockets(t, 3), MetaHardMax)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, oob := make([]byte, HeaderSize), make([]byte, oobSize)
		_, oobn, _, _, err := recvmsgRetry(peer, b, oob, unix.MSG_CMSG_CLOEXEC)
		got, _ := parseRights(oob[:oobn])
		CloseAll(got)
		if err != nil {
			t.Errorf("fake receiver: %v", err)
		}
		rawSend(t, peer, ack{status: ackTooLarge, msg: "too large: meta over Limits.MaxMeta 65536"}.appendTo(nil))
		hangup()
	}()
	err = Send(ctxTimeout(t, 5*time.Second), c, sent)
	<-done
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "Limits.MaxMeta") {
		t.Errorf("Send: %v, want the receiver's refusal", err)
	}
}

// TestSendChecksFirst checks that a transfer Send cannot describe is
// refused before anything reaches the peer.
func TestSendChecksFirst(t *testing.T) {
	closed := 19_999 // open nothing this high
	if _, err := unix.FcntlInt(uintptr(closed), unix.F_GETFD, 0); err == nil {
		t.Fatalf("descriptor %d is open", closed)
	}
	tests := []struct {
		name    string
		fd      FD
		wantErr error
		wantMsg string
	}{
		{name: "negative", fd: FD{Fd: -1, Name: "x"}, wantMsg: "negative"},
		{name: "long name", fd: FD{Name: strings.Repeat("n", MaxName+1)}, wantErr: ErrTooLarge},
		{name: "long kind", fd: FD{Kind: strings.Repeat("k", MaxKind+1)}, wantErr: ErrTooLarge},
		{name: "meta over MetaHardMax", fd: FD{Meta: make([]byte, MetaHardMax+1)}, wantErr: ErrTooLarge},
		{name: "closed descriptor", fd: FD{Fd: closed, Name: "gone"}, wantErr: unix.EBADF, wantMsg: `descriptor ` + strconv.Itoa(closed) + ` ("gone") is not open`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batontest.CheckLeaks(t)
			a, b := pair(t, unix.SOCK_STREAM)
			if tt.fd.Fd == 0 {
				tt.fd.Fd = sockets(t, 1)[0]
			}
			err := Send(ctxTimeout(t, 5*time.Second), a, []FD{tt.fd})
			if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Send: %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
			b.SetReadDeadline(time.Now())
			if n, err := b.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("the peer could read %d bytes (%v) after a refused Send", n, err)
			}
		})
	}
}

// FuzzRecv writes bytes from the fuzzer, with up to 5 descriptors on the
// first byte, to a stream socket and runs Recv on the other end. Recv
// must not panic, must return no descriptors with an error, and must
// leave the descriptor count as it found it.
func FuzzRecv(f *testing.F) {
	f.Add(uint8(1), frameBytes(header{last: true, nfds: 1, total: 1}, FD{Name: "http", Kind: "listener"}))
	f.Add(uint8(0), frameBytes(header{last: true}))
	f.Add(uint8(2), append(frameBytes(header{nfds: 2, total: 3}, FD{Name: "a"}, FD{Name: "b"}), frameBytes(header{seq: 1, last: true, nfds: 1, total: 3}, FD{Name: "c"})...))
	f.Add(uint8(3), rawHeader("BFDB", 1, flagLast, 3, 0, 3, 18))
	f.Fuzz(func(t *testing.T, nfds uint8, data []byte) {
		before := batontest.NumFDs(t)
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.SetNonblock(sp[0], true)
		c := fileConn(t, sp[0])
		fds, err := makeSockets(int(nfds % 6))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			// The bytes may be more than the socket buffer holds:
			// write them while Recv reads. Errors mean Recv gave up.
			defer close(done)
			defer unix.Close(sp[1])
			var oob []byte
			if len(fds) > 0 && len(data) > 0 {
				oob = unix.UnixRights(fds...)
			}
			for len(data) > 0 {
				n, err := unix.SendmsgN(sp[1], data, oob, nil, unix.MSG_NOSIGNAL)
				if err != nil {
					return
				}
				data, oob = data[n:], nil
			}
		}()
		got, err := Recv(ctxTimeout(t, 5*time.Second), c, Limits{MaxMeta: 4096, MaxFDs: 1000})
		if err != nil && len(got) != 0 {
			t.Errorf("Recv returned %d descriptors with an error", len(got))
		}
		closeFDs(got)
		c.Close()
		<-done
		CloseAll(fds)
		if after := batontest.NumFDs(t); after != before {
			t.Fatalf("%d descriptors open after Recv, %d before (Recv: %v)", after, before, err)
		}
	})
}
