package fdpass

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func defaultLimits(t testing.TB) Limits {
	t.Helper()
	lim, err := Limits{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return lim
}

// rawHeader builds a header byte by byte, so tests can write what
// appendTo never would.
func rawHeader(magic string, version, flags byte, nfds uint16, seq, total, body uint32) []byte {
	b := append([]byte(magic), version, flags)
	b = binary.BigEndian.AppendUint16(b, nfds)
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, total)
	return binary.BigEndian.AppendUint32(b, body)
}

func TestDecodeHeader(t *testing.T) {
	lim := defaultLimits(t)
	tests := []struct {
		name    string
		in      []byte
		want    header
		wantErr error
	}{
		{name: "one fd", in: rawHeader("BFDB", 1, flagLast, 1, 0, 1, 8), want: header{last: true, nfds: 1, total: 1, body: 8}},
		{name: "full batch", in: rawHeader("BFDB", 1, 0, 253, 3, 2000, 253*6), want: header{nfds: 253, seq: 3, total: 2000, body: 253 * 6}},
		{name: "empty transfer", in: rawHeader("BFDB", 1, flagLast, 0, 0, 0, 0), want: header{last: true}},
		{name: "short", in: rawHeader("BFDB", 1, 0, 1, 0, 1, 6)[:19], wantErr: ErrProtocol},
		{name: "bad magic", in: rawHeader("GET ", 1, 0, 1, 0, 1, 6), wantErr: ErrProtocol},
		{name: "version 2", in: rawHeader("BFDB", 2, 0, 1, 0, 1, 6), wantErr: ErrProtocol},
		{name: "unknown flag", in: rawHeader("BFDB", 1, 0x80|flagLast, 1, 0, 1, 6), wantErr: ErrProtocol},
		{name: "more than SCM_MAX_FD", in: rawHeader("BFDB", 1, 0, 254, 0, 1000, 254*6), wantErr: ErrProtocol},
		{name: "total over MaxFDs", in: rawHeader("BFDB", 1, 0, 1, 0, DefaultMaxFDs+1, 6), wantErr: ErrTooLarge},
		{name: "total 4G", in: rawHeader("BFDB", 1, 0, 1, 0, 0xffffffff, 6), wantErr: ErrTooLarge},
		{name: "batch over total", in: rawHeader("BFDB", 1, flagLast, 3, 0, 2, 18), wantErr: ErrProtocol},
		{name: "empty frame in a transfer", in: rawHeader("BFDB", 1, 0, 0, 0, 5, 0), wantErr: ErrProtocol},
		{name: "empty frame not last", in: rawHeader("BFDB", 1, 0, 0, 0, 0, 0), wantErr: ErrProtocol},
		{name: "empty frame with body", in: rawHeader("BFDB", 1, flagLast, 0, 0, 0, 1), wantErr: ErrTooLarge},
		{name: "body over MaxBody", in: rawHeader("BFDB", 1, 0, 253, 0, 253, MaxBody+1), wantErr: ErrTooLarge},
		{name: "body over MaxMeta", in: rawHeader("BFDB", 1, flagLast, 1, 0, 1, entryFixed+MaxName+MaxKind+DefaultMaxMeta+1), wantErr: ErrTooLarge},
		{name: "body 4G", in: rawHeader("BFDB", 1, flagLast, 1, 0, 1, 0xffffffff), wantErr: ErrTooLarge},
		{name: "body too small", in: rawHeader("BFDB", 1, flagLast, 2, 0, 2, 11), wantErr: ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeHeader(tt.in, lim)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("decodeHeader: error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got != tt.want {
				t.Errorf("decodeHeader = %+v, want %+v", got, tt.want)
			}
			if re := got.appendTo(nil); !bytes.Equal(re, tt.in) {
				t.Errorf("appendTo = %x, want %x", re, tt.in)
			}
		})
	}
}

func TestTransferNext(t *testing.T) {
	lim := defaultLimits(t)
	lim.MaxBytes = 2000
	tests := []struct {
		name    string
		frames  []header
		wantErr error // from the last frame; all before it must pass
	}{
		{name: "two batches", frames: []header{{nfds: 253, total: 300, body: 253 * 6}, {seq: 1, nfds: 47, total: 300, last: true, body: 47 * 6}}},
		{name: "empty", frames: []header{{last: true}}},
		{name: "seq skipped", frames: []header{{nfds: 1, total: 2, body: 6}, {seq: 2, nfds: 1, total: 2, last: true, body: 6}}, wantErr: ErrProtocol},
		{name: "total changes", frames: []header{{nfds: 1, total: 2, body: 6}, {seq: 1, nfds: 1, total: 3, body: 6}}, wantErr: ErrProtocol},
		{name: "past the total", frames: []header{{nfds: 2, total: 3, body: 12}, {seq: 1, nfds: 2, total: 3, last: true, body: 12}}, wantErr: ErrProtocol},
		{name: "last too early", frames: []header{{nfds: 1, total: 3, last: true, body: 6}}, wantErr: ErrProtocol},
		{name: "complete but not last", frames: []header{{nfds: 3, total: 3, body: 18}}, wantErr: ErrProtocol},
		{name: "after the last", frames: []header{{nfds: 1, total: 1, last: true, body: 6}, {seq: 1, nfds: 1, total: 1, last: true, body: 6}}, wantErr: ErrProtocol},
		{name: "over MaxBytes", frames: []header{{nfds: 1, total: 2, body: 1200}, {seq: 1, nfds: 1, total: 2, last: true, body: 801}}, wantErr: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := transfer{lim: lim}
			for i, h := range tt.frames {
				err := tr.next(h)
				if i < len(tt.frames)-1 {
					if err != nil {
						t.Fatalf("frame %d: %v", i, err)
					}
					continue
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("last frame: error %v, want %v", err, tt.wantErr)
				}
			}
			if tt.wantErr == nil && !tr.done {
				t.Error("the transfer is not done after its last frame")
			}
		})
	}
}

func TestBodyRoundTrip(t *testing.T) {
	lim := defaultLimits(t)
	in := []FD{
		{Fd: 3, Name: "http", Kind: "listener", Meta: []byte("tcp://127.0.0.1:8080")},
		{Fd: 4, Name: "", Kind: "", Meta: nil},
		{Fd: 5, Name: strings.Repeat("n", MaxName), Kind: strings.Repeat("k", MaxKind), Meta: bytes.Repeat([]byte{0xff}, DefaultMaxMeta)},
	}
	var body []byte
	for i := range in {
		body = appendEntry(body, &in[i])
	}
	got := make([]FD, len(in))
	for i := range got {
		got[i].Fd = in[i].Fd
	}
	if err := decodeBody(body, got, lim); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("decodeBody(appendEntry(x)) != x:\n got %+v\nwant %+v", got[:2], in[:2])
	}
	// Meta aliases the body but must not let an append spill into the
	// next entry.
	before := string(body)
	_ = append(got[0].Meta, 'x')
	if string(body) != before {
		t.Error("appending to a received Meta wrote into the frame body")
	}
}

func TestDecodeBody(t *testing.T) {
	lim := defaultLimits(t)
	lim.MaxMeta = 16
	entry := func(name, kind string, metaLen uint32, meta string) []byte {
		b := append([]byte{byte(len(name))}, name...)
		b = append(b, byte(len(kind)))
		b = append(b, kind...)
		b = binary.BigEndian.AppendUint32(b, metaLen)
		return append(b, meta...)
	}
	tests := []struct {
		name    string
		body    []byte
		n       int
		wantErr error
	}{
		{name: "two", body: append(entry("a", "b", 1, "c"), entry("d", "e", 0, "")...), n: 2},
		{name: "name runs out", body: []byte{5, 'a', 'b'}, n: 1, wantErr: ErrProtocol},
		{name: "kind runs out", body: []byte{1, 'a', 9, 'k'}, n: 1, wantErr: ErrProtocol},
		{name: "no meta length", body: []byte{1, 'a', 1, 'k', 0, 0}, n: 1, wantErr: ErrProtocol},
		{name: "meta runs out", body: entry("a", "k", 10, "abc"), n: 1, wantErr: ErrProtocol},
		{name: "meta over MaxMeta", body: entry("a", "k", 17, strings.Repeat("m", 17)), n: 1, wantErr: ErrTooLarge},
		{name: "meta length 4G", body: entry("a", "k", 0xffffffff, ""), n: 1, wantErr: ErrTooLarge},
		{name: "trailing bytes", body: append(entry("a", "k", 0, ""), 0), n: 1, wantErr: ErrProtocol},
		{name: "one entry short", body: entry("a", "k", 0, ""), n: 2, wantErr: ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := decodeBody(tt.body, make([]FD, tt.n), lim)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("decodeBody: error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeAck(t *testing.T) {
	ackBytes := func(magic string, version, status byte, n uint16, seq uint32) []byte {
		b := append([]byte(magic), version, status)
		b = binary.BigEndian.AppendUint16(b, n)
		return binary.BigEndian.AppendUint32(b, seq)
	}
	tests := []struct {
		name    string
		in      []byte
		want    ack
		wantN   int
		wantErr error
	}{
		{name: "ok", in: ackBytes("BFDA", 1, ackOK, 0, 7), want: ack{seq: 7}},
		{name: "refusal", in: ackBytes("BFDA", 1, ackTooLarge, 12, 0), want: ack{status: ackTooLarge}, wantN: 12},
		{name: "unknown status", in: ackBytes("BFDA", 1, 99, 0, 0), want: ack{status: 99}},
		{name: "short", in: ackBytes("BFDA", 1, 0, 0, 0)[:11], wantErr: ErrProtocol},
		{name: "frame magic", in: ackBytes("BFDB", 1, 0, 0, 0), wantErr: ErrProtocol},
		{name: "version 0", in: ackBytes("BFDA", 0, 0, 0, 0), wantErr: ErrProtocol},
		{name: "message too long", in: ackBytes("BFDA", 1, ackRefused, MaxAckMessage+1, 0), wantErr: ErrProtocol},
		{name: "ok with a message", in: ackBytes("BFDA", 1, ackOK, 3, 0), wantErr: ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := decodeAck(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("decodeAck: error %v, want %v", err, tt.wantErr)
			}
			if err == nil && (got != tt.want || n != tt.wantN) {
				t.Errorf("decodeAck = %+v, %d; want %+v, %d", got, n, tt.want, tt.wantN)
			}
		})
	}
}

func TestRefusalMatches(t *testing.T) {
	tests := []struct {
		name   string
		status byte
		want   []error
		not    []error
	}{
		{name: "too large", status: ackTooLarge, want: []error{ErrRefused, ErrTooLarge}, not: []error{ErrProtocol, ErrTruncated}},
		{name: "truncated", status: ackTruncated, want: []error{ErrRefused, ErrTruncated}, not: []error{ErrTooLarge}},
		{name: "protocol", status: ackProtocol, want: []error{ErrRefused, ErrProtocol}, not: []error{ErrTooLarge}},
		{name: "unknown", status: 200, want: []error{ErrRefused}, not: []error{ErrProtocol, ErrTooLarge, ErrTruncated}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := error(&refusal{status: tt.status, msg: "why"})
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("%v does not match %v", err, w)
				}
			}
			for _, w := range tt.not {
				if errors.Is(err, w) {
					t.Errorf("%v matches %v", err, w)
				}
			}
		})
	}
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name    string
		in      Limits
		want    Limits
		wantErr bool
	}{
		{name: "zero is default", in: Limits{}, want: Limits{MaxFDs: DefaultMaxFDs, MaxMeta: DefaultMaxMeta, MaxBytes: DefaultMaxBytes}},
		{name: "kept", in: Limits{MaxFDs: 5, MaxMeta: MetaHardMax, MaxBytes: 7}, want: Limits{MaxFDs: 5, MaxMeta: MetaHardMax, MaxBytes: 7}},
		{name: "meta over the hard cap", in: Limits{MaxMeta: MetaHardMax + 1}, wantErr: true},
		{name: "negative", in: Limits{MaxFDs: -1}, wantErr: true},
		{name: "bytes over the hard cap", in: Limits{MaxBytes: BytesHardMax + 1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults: error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.MaxFDs != tt.want.MaxFDs || got.MaxMeta != tt.want.MaxMeta || got.MaxBytes != tt.want.MaxBytes) {
				t.Errorf("withDefaults = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzDecodeFrame feeds a frame header and body from outside to the
// decoder. It must never panic nor allocate more than the limits allow,
// and whatever it accepts must encode back to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	seed := func(h header, fds ...FD) []byte {
		var body []byte
		for i := range fds {
			body = appendEntry(body, &fds[i])
		}
		h.body = len(body)
		return append(h.appendTo(nil), body...)
	}
	f.Add(seed(header{last: true, nfds: 1, total: 1}, FD{Name: "http", Kind: "listener", Meta: []byte("tcp://:80")}))
	f.Add(seed(header{last: true}))
	f.Add(seed(header{nfds: 2, total: 300, seq: 4}, FD{Name: "a"}, FD{Kind: "conn", Meta: []byte{0, 1, 2}}))
	f.Add(rawHeader("BFDB", 1, flagLast, 1, 0, 1, 0xffffffff))
	f.Add(rawHeader("BFDB", 1, 0, 253, 0, 0xffffffff, 253*6))
	lim := defaultLimits(f)
	lim.MaxMeta = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < HeaderSize {
			if _, err := decodeHeader(data, lim); err == nil {
				t.Fatalf("decodeHeader accepted %d bytes", len(data))
			}
			return
		}
		h, err := decodeHeader(data[:HeaderSize], lim)
		if err != nil {
			return
		}
		if h.total > lim.MaxFDs || h.nfds > MaxFDsPerBatch || h.body > MaxBody {
			t.Fatalf("decodeHeader accepted a header over the limits: %+v", h)
		}
		tr := transfer{lim: lim, seq: h.seq}
		_ = tr.next(h)
		body := data[HeaderSize:]
		if len(body) < h.body {
			return
		}
		body = body[:h.body]
		dst := make([]FD, h.nfds)
		if err := decodeBody(body, dst, lim); err != nil {
			return
		}
		re := h.appendTo(nil)
		for i := range dst {
			if len(dst[i].Meta) > lim.MaxMeta {
				t.Fatalf("entry %d: %d bytes of meta, over MaxMeta %d", i, len(dst[i].Meta), lim.MaxMeta)
			}
			re = appendEntry(re, &dst[i])
		}
		if !bytes.Equal(re, data[:HeaderSize+h.body]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, data[:HeaderSize+h.body])
		}
	})
}

// FuzzDecodeAck feeds an acknowledgement from outside to the decoder.
func FuzzDecodeAck(f *testing.F) {
	f.Add(ack{seq: 3}.appendTo(nil))
	f.Add(ack{status: ackTooLarge, seq: 0, msg: "too large: the transfer holds 9 descriptors"}.appendTo(nil))
	f.Add([]byte("BFDA\x01\x01\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < AckSize {
			if _, _, err := decodeAck(data); err == nil {
				t.Fatalf("decodeAck accepted %d bytes", len(data))
			}
			return
		}
		a, n, err := decodeAck(data[:AckSize])
		if err != nil {
			return
		}
		if n > MaxAckMessage {
			t.Fatalf("decodeAck accepted a %d-byte message", n)
		}
		if len(data) < AckSize+n {
			return
		}
		a.msg = string(data[AckSize : AckSize+n])
		if re := a.appendTo(nil); !bytes.Equal(re, data[:AckSize+n]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", re, data[:AckSize+n])
		}
	})
}
