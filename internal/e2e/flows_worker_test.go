package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/baton-dev/baton"
)

// flowIdle is how long the udp-flows worker keeps a session that sends
// nothing, once it drains (a QUIC server's idle timeout). It is longer
// than a peer waits for an answer (peerWait) plus its pacing, so that
// only a peer that went quiet on purpose is ever idle that long: at 2 s,
// an answer that took nearly 2 s on a loaded machine let the draining
// worker end a live session, and the rest of it reached the next
// generation without its state.
const flowIdle = 3 * time.Second

// peerWait is how long a peer waits for an answer before it counts its
// datagram lost and sends the next.
const peerWait = 2 * time.Second

// udpFlowsWorker keeps per-peer state, as a QUIC, game or VPN server
// does: a peer opens a session with "0", then sends "1", "2", ... and
// "bye N"; each datagram is answered "ok PID N", or "nostate PID N" when
// this process has no session for the peer (it went to another worker).
// On the stop signal it serves its sessions until each has said bye or
// been idle for flowIdle, then releases its flows (baton.ReleaseFlows),
// answers what is still queued and exits.
func udpFlowsWorker() error {
	pc, err := baton.PacketConn("flows", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stop := baton.Stopping()
	baton.Ready()
	type session struct {
		last int
		seen time.Time
	}
	sessions := map[string]*session{}
	pid := strconv.Itoa(os.Getpid())
	stopping, released := false, false
	var lastRead time.Time
	buf := make([]byte, 512)
	for {
		if !stopping {
			select {
			case <-stop:
				stopping = true
			default:
			}
		}
		if stopping && !released {
			for k, s := range sessions {
				if time.Since(s.seen) > flowIdle {
					delete(sessions, k)
				}
			}
			if len(sessions) == 0 {
				if err := baton.ReleaseFlows(); err != nil {
					// A baton without kept flows (E2E_BATON_BINARY):
					// there is nothing to release.
					fmt.Fprintln(os.Stderr, "udp-flows:", err)
				}
				released, lastRead = true, time.Now()
			}
		}
		pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			if released && time.Since(lastRead) > 100*time.Millisecond {
				return pc.Close()
			}
			continue
		}
		lastRead = time.Now()
		msg := string(buf[:n])
		bye := strings.HasPrefix(msg, "bye ")
		seq, _ := strconv.Atoi(strings.TrimPrefix(msg, "bye "))
		key := from.String()
		s := sessions[key]
		reply := "ok "
		switch {
		case seq == 0 && !bye:
			sessions[key] = &session{seen: lastRead}
		case s == nil || s.last != seq-1:
			reply = "nostate "
		case bye:
			delete(sessions, key)
		default:
			s.last, s.seen = seq, lastRead
		}
		pc.WriteTo([]byte(reply+pid+" "+strconv.Itoa(seq)), from)
	}
}
