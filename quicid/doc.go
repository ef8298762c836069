// Package quicid gives a quic-go server under baton connection IDs that
// keep its QUIC connections on it when a client's address changes.
//
// With ?flows=quic on a UDP listener (docs/udp.md), baton tells each
// worker a cookie in BATON_QUIC_COOKIE: 4 bytes that name the socket the
// worker reads. baton's steering program reads the first bytes of the
// destination connection ID of every QUIC short-header packet, and sends
// a packet whose ID starts with a worker's cookie to that worker's
// socket, from whatever address it comes: a client behind a NAT that
// rebinds its port, or one that moves from Wi-Fi to cellular, keeps its
// connection, across reloads too. Packets with long headers (the
// handshake) follow the peer's address, as every datagram does.
//
// A Generator is a quic-go ConnectionIDGenerator that starts every
// connection ID with the cookie (the rest random):
//
//	gen, err := quicid.FromEnv("quic")
//	if err != nil {
//		return err
//	}
//	tr := &quic.Transport{Conn: pc}
//	if gen != nil { // under baton, with flows=quic
//		tr.ConnectionIDGenerator = gen
//	}
//
// A server in another language does the same: every connection ID it
// issues starts with the 4 bytes of its listener's cookie.
package quicid
