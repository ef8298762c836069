package fdpass

import (
	"encoding/binary"
	"fmt"
)

// Sizes of the fixed parts of the wire format (docs/fdpass.md).
const (
	// HeaderSize is the size of a frame header.
	HeaderSize = 20
	// AckSize is the size of an acknowledgement without its message.
	AckSize = 12
	// Version is the protocol version this package speaks.
	Version = 1

	flagLast = 1 << 0

	// entryFixed is the size of an entry's length fields.
	entryFixed = 1 + 1 + 4
)

var (
	frameMagic = [4]byte{'B', 'F', 'D', 'B'}
	ackMagic   = [4]byte{'B', 'F', 'D', 'A'}
)

// Acknowledgement status codes. A refusal's code names the sentinel error
// the receiver hit; a sender treats codes it does not know as ackRefused.
const (
	ackOK        = 0
	ackRefused   = 1
	ackProtocol  = 2
	ackTooLarge  = 3
	ackTruncated = 4
)

// header is a decoded frame header.
type header struct {
	last  bool
	nfds  int    // descriptors that ride on this frame
	seq   uint32 // batch number in the transfer, from 0
	total int    // descriptors in the whole transfer
	body  int    // bytes of entries after the header
}

func (h header) appendTo(b []byte) []byte {
	var flags byte
	if h.last {
		flags |= flagLast
	}
	b = append(b, frameMagic[:]...)
	b = append(b, Version, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(h.nfds))
	b = binary.BigEndian.AppendUint32(b, h.seq)
	b = binary.BigEndian.AppendUint32(b, uint32(h.total))
	b = binary.BigEndian.AppendUint32(b, uint32(h.body))
	return b
}

// decodeHeader decodes and checks a frame header on its own; the
// transfer's state checks the rest. Nothing is allocated.
func decodeHeader(b []byte, lim Limits) (header, error) {
	var h header
	if len(b) != HeaderSize {
		return h, fmt.Errorf("%w: a frame header is %d bytes, not %d", ErrProtocol, HeaderSize, len(b))
	}
	if [4]byte(b[0:4]) != frameMagic {
		return h, fmt.Errorf("%w: the frame starts with %q, not %q: the peer does not speak fdpass", ErrProtocol, b[0:4], frameMagic[:])
	}
	if b[4] != Version {
		return h, fmt.Errorf("%w: the peer speaks fdpass version %d, this side version %d: run matching versions", ErrProtocol, b[4], Version)
	}
	flags := b[5]
	if flags&^flagLast != 0 {
		return h, fmt.Errorf("%w: unknown flags %#02x in the frame header", ErrProtocol, flags&^flagLast)
	}
	h.last = flags&flagLast != 0
	h.nfds = int(binary.BigEndian.Uint16(b[6:8]))
	h.seq = binary.BigEndian.Uint32(b[8:12])
	total := binary.BigEndian.Uint32(b[12:16])
	body := binary.BigEndian.Uint32(b[16:20])

	if h.nfds > MaxFDsPerBatch {
		return h, fmt.Errorf("%w: the frame claims %d descriptors; the kernel passes at most %d per message", ErrProtocol, h.nfds, MaxFDsPerBatch)
	}
	if uint64(total) > uint64(lim.MaxFDs) {
		return h, fmt.Errorf("%w: the transfer holds %d descriptors, over this receiver's Limits.MaxFDs %d: raise the limit or send fewer", ErrTooLarge, total, lim.MaxFDs)
	}
	h.total = int(total)
	if uint64(h.nfds) > uint64(total) {
		return h, fmt.Errorf("%w: the frame carries %d descriptors of a transfer of %d", ErrProtocol, h.nfds, total)
	}
	if h.nfds == 0 && (total != 0 || !h.last || h.seq != 0) {
		return h, fmt.Errorf("%w: a frame without descriptors is only allowed as the single, last frame of an empty transfer", ErrProtocol)
	}
	// The body of n entries is at least n*entryFixed bytes, and at most
	// n entries of the longest name, kind and meta, or MaxBody.
	maxBody := int64(h.nfds) * int64(entryFixed+MaxName+MaxKind+lim.MaxMeta)
	if maxBody > MaxBody {
		maxBody = MaxBody
	}
	if int64(body) > maxBody {
		return h, fmt.Errorf("%w: the frame body of %d descriptors is %d bytes, over the %d that this receiver's limits allow (Limits.MaxMeta %d): raise the limit or send less metadata", ErrTooLarge, h.nfds, body, maxBody, lim.MaxMeta)
	}
	if int64(body) < int64(h.nfds)*entryFixed {
		return h, fmt.Errorf("%w: a frame body of %d bytes cannot describe %d descriptors", ErrProtocol, body, h.nfds)
	}
	h.body = int(body)
	return h, nil
}

// transfer follows the frames of one transfer and checks that they fit
// together and within the limits, before each body is read.
type transfer struct {
	lim   Limits
	seq   uint32 // the batch due next
	total int    // from the first header
	got   int    // descriptors so far
	bytes int    // body bytes so far
	done  bool
}

func (t *transfer) next(h header) error {
	switch {
	case t.done:
		return fmt.Errorf("%w: a frame arrived after the last one", ErrProtocol)
	case h.seq != t.seq:
		return fmt.Errorf("%w: batch %d arrived where batch %d was due", ErrProtocol, h.seq, t.seq)
	case t.seq > 0 && h.total != t.total:
		return fmt.Errorf("%w: batch %d says the transfer holds %d descriptors, batch 0 said %d", ErrProtocol, h.seq, h.total, t.total)
	case t.got+h.nfds > h.total:
		return fmt.Errorf("%w: batch %d brings the transfer to %d descriptors, over the %d announced", ErrProtocol, h.seq, t.got+h.nfds, h.total)
	case h.last && t.got+h.nfds != h.total:
		return fmt.Errorf("%w: the last batch ends the transfer at %d descriptors of the %d announced", ErrProtocol, t.got+h.nfds, h.total)
	case !h.last && t.got+h.nfds == h.total:
		return fmt.Errorf("%w: batch %d completes the %d descriptors announced but is not marked last", ErrProtocol, h.seq, h.total)
	case int64(t.bytes)+int64(h.body) > int64(t.lim.MaxBytes):
		return fmt.Errorf("%w: the transfer's descriptions pass %d bytes, this receiver's Limits.MaxBytes: raise the limit or send less metadata", ErrTooLarge, t.lim.MaxBytes)
	}
	t.total = h.total
	t.got += h.nfds
	t.bytes += h.body
	t.seq++
	t.done = h.last
	return nil
}

// entrySize is the encoded size of one entry.
func entrySize(f *FD) int {
	return entryFixed + len(f.Name) + len(f.Kind) + len(f.Meta)
}

func appendEntry(b []byte, f *FD) []byte {
	b = append(b, byte(len(f.Name)))
	b = append(b, f.Name...)
	b = append(b, byte(len(f.Kind)))
	b = append(b, f.Kind...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(f.Meta)))
	return append(b, f.Meta...)
}

// decodeBody fills the Name, Kind and Meta of each of dst from body,
// which must hold exactly len(dst) entries. Meta slices alias body.
func decodeBody(body []byte, dst []FD, lim Limits) error {
	b := body
	var prevName, prevKind string // batches of one listener's conns repeat these
	for i := range dst {
		name, rest, ok := cut8(b)
		if !ok {
			return fmt.Errorf("%w: entry %d: the name runs past the end of the frame", ErrProtocol, i)
		}
		kind, rest, ok := cut8(rest)
		if !ok {
			return fmt.Errorf("%w: entry %d (%q): the kind runs past the end of the frame", ErrProtocol, i, name)
		}
		if len(rest) < 4 {
			return fmt.Errorf("%w: entry %d (%q): the meta length runs past the end of the frame", ErrProtocol, i, name)
		}
		n := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(n) > uint64(lim.MaxMeta) {
			return fmt.Errorf("%w: entry %d (%q) has %d bytes of meta, over this receiver's Limits.MaxMeta %d: raise the limit or send less", ErrTooLarge, i, name, n, lim.MaxMeta)
		}
		if uint64(n) > uint64(len(rest)) {
			return fmt.Errorf("%w: entry %d (%q): %d bytes of meta run past the end of the frame", ErrProtocol, i, name, n)
		}
		if string(name) != prevName {
			prevName = string(name)
		}
		if string(kind) != prevKind {
			prevKind = string(kind)
		}
		dst[i].Name, dst[i].Kind = prevName, prevKind
		dst[i].Meta = nil
		if n > 0 {
			dst[i].Meta = rest[:n:n]
		}
		b = rest[n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes follow the last entry of the frame", ErrProtocol, len(b))
	}
	return nil
}

// cut8 splits a string prefixed by its length in one byte off b.
func cut8(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 1 || int(b[0]) > len(b)-1 {
		return nil, nil, false
	}
	n := int(b[0])
	return b[1 : 1+n], b[1+n:], true
}

// ack is an acknowledgement of one batch.
type ack struct {
	status byte
	seq    uint32
	msg    string
}

func (a ack) appendTo(b []byte) []byte {
	msg := a.msg
	if len(msg) > MaxAckMessage {
		msg = msg[:MaxAckMessage]
	}
	b = append(b, ackMagic[:]...)
	b = append(b, Version, a.status)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = binary.BigEndian.AppendUint32(b, a.seq)
	return append(b, msg...)
}

// decodeAck decodes the fixed part of an acknowledgement and returns the
// length of the message that follows it.
func decodeAck(b []byte) (ack, int, error) {
	var a ack
	if len(b) != AckSize {
		return a, 0, fmt.Errorf("%w: an acknowledgement is %d bytes, not %d", ErrProtocol, AckSize, len(b))
	}
	if [4]byte(b[0:4]) != ackMagic {
		return a, 0, fmt.Errorf("%w: the acknowledgement starts with %q, not %q: the peer does not speak fdpass", ErrProtocol, b[0:4], ackMagic[:])
	}
	if b[4] != Version {
		return a, 0, fmt.Errorf("%w: the peer speaks fdpass version %d, this side version %d: run matching versions", ErrProtocol, b[4], Version)
	}
	a.status = b[5]
	n := int(binary.BigEndian.Uint16(b[6:8]))
	a.seq = binary.BigEndian.Uint32(b[8:12])
	if n > MaxAckMessage {
		return a, 0, fmt.Errorf("%w: the acknowledgement's message is %d bytes, over %d", ErrProtocol, n, MaxAckMessage)
	}
	if a.status == ackOK && n != 0 {
		return a, 0, fmt.Errorf("%w: a positive acknowledgement carries a %d-byte message", ErrProtocol, n)
	}
	return a, n, nil
}

// refusal is the error a sender returns for a receiver's refusal: it
// matches ErrRefused and the sentinel the receiver's status names.
type refusal struct {
	status byte
	msg    string
}

func (r *refusal) Error() string {
	if r.msg == "" {
		return ErrRefused.Error() + " (no reason given)"
	}
	return fmt.Sprintf("%s: %s", ErrRefused, r.msg)
}

func (r *refusal) Unwrap() []error {
	switch r.status {
	case ackProtocol:
		return []error{ErrRefused, ErrProtocol}
	case ackTooLarge:
		return []error{ErrRefused, ErrTooLarge}
	case ackTruncated:
		return []error{ErrRefused, ErrTruncated}
	}
	return []error{ErrRefused}
}
