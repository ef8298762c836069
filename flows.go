package baton

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ReleaseFlows calls ReleaseFlows on the Default Worker.
func ReleaseFlows(listeners ...string) error { return Default().ReleaseFlows(listeners...) }

// ReleaseFlows tells baton that this worker, draining, takes no more
// datagrams on its UDP listeners whose flows baton keeps (docs/udp.md):
// those named, or all of them when none is named. It returns once baton
// has taken their sockets out of its steering program: from then on the
// peers that stayed with this worker go to the serving generation, and no
// new datagram is queued here. Read what is queued (until a read has
// waited a moment, say 50 ms, for nothing), then close the sockets and
// exit: no datagram is lost.
//
// Under baton's steering, a UDP worker drains like this: on the stop
// signal (Stopping), which comes once new peers go to the next
// generation, it goes on serving the peers it knows until its protocol
// says they are done (their sessions ended, or idle for long enough),
// then calls ReleaseFlows, reads what is left and exits; baton kills it
// at --drain-timeout in any case.
//
// Without baton (no BATON_SOCKET) there is nothing to release and it
// returns nil; a listener whose flows are not kept is not released and
// is no error.
func (w *Worker) ReleaseFlows(listeners ...string) error {
	if w.batonSocket == "" {
		return nil
	}
	path := w.batonSocket
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialTimeout("unix", path, releaseTimeout)
	if err != nil {
		return fmt.Errorf("baton.ReleaseFlows: connecting to baton's worker socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(releaseTimeout))
	req := map[string]any{"method": "release", "params": map[string][]string{"listeners": listeners}}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("baton.ReleaseFlows: %w", err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("baton.ReleaseFlows: no answer from baton: %w", err)
	}
	var reply struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(line, &reply); err != nil {
		return fmt.Errorf("baton.ReleaseFlows: baton's answer %q: %w", line, err)
	}
	if !reply.OK {
		return fmt.Errorf("baton.ReleaseFlows: %w", errors.New(reply.Error))
	}
	return nil
}

// releaseTimeout bounds ReleaseFlows: baton answers at once.
const releaseTimeout = 10 * time.Second
