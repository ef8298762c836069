package steer

import (
	"encoding/binary"
	"encoding/hex"
)

// CookieLen is the length of a QUIC cookie: the first bytes of every
// connection ID a worker of a listener with flows=quic issues.
const CookieLen = 4

// A Cookie names one socket of a steered group to the program, from the
// first bytes of a QUIC short-header packet's destination connection ID:
// the socket's index in the socket array (big-endian 16 bits), then a
// check (big-endian 16 bits), the low 16 bits of the tag the socket got
// when it was put at that index. The program steers a datagram by its
// cookie only while the socket at that index has that check, so the
// cookie of a socket that has gone never reaches the socket that took
// its index later (Group.NewCheck picks a check the index's last socket
// did not have).
type Cookie [CookieLen]byte

// CookieOf is the cookie of the socket at index with check.
func CookieOf(index int, check uint16) Cookie {
	var c Cookie
	binary.BigEndian.PutUint16(c[0:], uint16(index))
	binary.BigEndian.PutUint16(c[2:], check)
	return c
}

// CheckOf is the check of a socket with tag: the tag's low 16 bits.
func CheckOf(tag uint32) uint16 { return uint16(tag) }

// Index is the socket index the cookie names.
func (c Cookie) Index() int { return int(binary.BigEndian.Uint16(c[0:])) }

// Check is the cookie's check.
func (c Cookie) Check() uint16 { return binary.BigEndian.Uint16(c[2:]) }

// String is the cookie in hexadecimal, as BATON_QUIC_COOKIE carries it.
func (c Cookie) String() string { return hex.EncodeToString(c[:]) }
