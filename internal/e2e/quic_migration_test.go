package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// rebindConn is a client's UDP socket behind a NAT that rebinds it: it
// sends from its current socket, and Rebind moves it to a new one (a new
// local port) while it still reads from every socket it had (answers
// already on their way to the old port arrive).
type rebindConn struct {
	mu       sync.Mutex
	cur      *net.UDPConn
	all      []*net.UDPConn
	deadline time.Time
	in       chan packet
	wake     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// packet is a datagram one of a rebindConn's sockets read.
type packet struct {
	b    []byte
	from net.Addr
}

var _ net.PacketConn = (*rebindConn)(nil)

func newRebindConn(t *testing.T) *rebindConn {
	t.Helper()
	c := &rebindConn{in: make(chan packet, 256), wake: make(chan struct{}, 1), done: make(chan struct{})}
	if err := c.Rebind(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Rebind sends from a new socket from now on.
func (c *rebindConn) Rebind() error {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.cur, c.all = u, append(c.all, u)
	c.mu.Unlock()
	go func() {
		for {
			b := make([]byte, 2048)
			n, from, err := u.ReadFrom(b)
			if err != nil {
				return // closed
			}
			select {
			case c.in <- packet{b[:n], from}:
			case <-c.done:
				return
			}
		}
	}()
	return nil
}

func (c *rebindConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		d := c.deadline
		c.mu.Unlock()
		var expire <-chan time.Time
		if !d.IsZero() {
			tm := time.NewTimer(time.Until(d))
			defer tm.Stop()
			expire = tm.C
		}
		select {
		case pk := <-c.in:
			return copy(p, pk.b), pk.from, nil
		case <-expire:
			return 0, nil, os.ErrDeadlineExceeded
		case <-c.done:
			return 0, nil, net.ErrClosed
		case <-c.wake: // a new deadline
		}
	}
}

func (c *rebindConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	u := c.cur
	c.mu.Unlock()
	return u.WriteTo(p, addr)
}

func (c *rebindConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		for _, u := range c.all {
			u.Close()
		}
		c.mu.Unlock()
	})
	return nil
}

func (c *rebindConn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur.LocalAddr()
}

func (c *rebindConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *rebindConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *rebindConn) SetWriteDeadline(time.Time) error { return nil }

// migratingClient is an HTTP/3 client on one QUIC connection whose local
// port changes when it is told.
type migratingClient struct {
	conn *rebindConn
	tr   *http3.Transport
	c    *http.Client
}

func newMigratingClient(t *testing.T, timeout time.Duration) *migratingClient {
	t.Helper()
	conn := newRebindConn(t)
	qtr := &quic.Transport{Conn: conn}
	t.Cleanup(func() { qtr.Close() })
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		QUICConfig:      &quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 5 * time.Second},
		Dial: func(ctx context.Context, addr string, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
			ua, err := net.ResolveUDPAddr("udp", addr)
			if err != nil {
				return nil, err
			}
			return qtr.DialEarly(ctx, ua, tlsConf, conf)
		},
	}
	t.Cleanup(func() { tr.Close() })
	return &migratingClient{conn: conn, tr: tr, c: &http.Client{Transport: tr, Timeout: timeout}}
}

// get makes a request and returns the pid that answered it.
func (m *migratingClient) get(url string) (string, error) {
	resp, err := m.c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	pid, _, _ := strings.Cut(strings.TrimPrefix(string(body), "pid "), " ")
	return pid, nil
}

// migrationRun is what the clients of runMigration saw.
type migrationRun struct {
	requests, failed, kept, clients int
	failures                        []string
}

// runMigration starts examples/quic under baton with the listener's
// flows option, opens n HTTP/3 connections, and then, reloads times,
// reloads baton, moves every client to a new local port and makes 3
// requests on its connection. A client is kept when every request
// succeeded, answered by the worker that accepted its connection.
func runMigration(t *testing.T, flows string, n, reloads int, timeout time.Duration) migrationRun {
	t.Helper()
	bin, err := quicBin()
	if err != nil {
		t.Fatal(err)
	}
	// A draining worker serves its connections for 15 s (a run takes a
	// few), and baton gives it 20. Where the clients' connections broke
	// (flows=on), their close never reaches the old workers, which hold
	// them until then (with 2 minutes, baton was still draining when the
	// test's stop killed it). The stop comes after the clients have
	// closed (cleanups run last first), and waits out the drain timeout.
	b := startBaton(t, nil, "-l", "quic=udp://127.0.0.1:0?balance=reuseport&flows="+flows, "-n", "2", "--ready", "notify",
		"--drain-timeout", "20s", "--", bin, "-grace", "15s")
	t.Cleanup(func() { b.stop(40 * time.Second) })
	b.waitReady(2)
	url := "https://" + b.addr("quic") + "/"
	clients := make([]*migratingClient, n)
	first := make([]string, n)
	for i := range clients {
		clients[i] = newMigratingClient(t, timeout)
		pid, err := clients[i].get(url)
		if err != nil {
			t.Fatalf("client %d, before any reload: %v", i, err)
		}
		first[i] = pid
	}
	run := migrationRun{clients: n}
	kept := make([]bool, n)
	for i := range kept {
		kept[i] = true
	}
	for range reloads {
		b.cliUntilDone("reload")
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i, c := range clients {
			if err := c.conn.Rebind(); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					pid, err := c.get(url)
					mu.Lock()
					run.requests++
					switch {
					case err != nil:
						run.failed++
						kept[i] = false
						run.failures = append(run.failures, err.Error())
					case pid != first[i]:
						kept[i] = false
						run.failures = append(run.failures, fmt.Sprintf("client %d: answered by pid %s, its connection was with %s", i, pid, first[i]))
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	for _, k := range kept {
		if k {
			run.kept++
		}
	}
	st := b.status()
	t.Logf("flows=%s: %d clients moved to a new port after each of %d reloads: %d requests, %d failed, %d clients kept their connection and worker; flows %s",
		flows, n, reloads, run.requests, run.failed, run.kept, flowsText(st.Listeners[0].Flows))
	return run
}

// TestQUICMigrationAcrossReloads: with flows=quic, HTTP/3 clients whose
// local port changes after each reload (a NAT rebinding) keep their
// connections with the worker that accepted them, and every request
// succeeds: their packets carry its cookie. The control, flows=on: the
// same clients are new peers to the flow table, steered to the serving
// generation, which does not know their connections.
func TestQUICMigrationAcrossReloads(t *testing.T) {
	requireE2EAlone(t)
	requireSteering(t)
	t.Run("quic", func(t *testing.T) {
		r := runMigration(t, "quic", 8, 3, 10*time.Second)
		if r.failed != 0 || r.kept != r.clients {
			t.Errorf("flows=quic: %d of %d requests failed, %d of %d clients kept their connection: %v", r.failed, r.requests, r.kept, r.clients, r.failures[:min(5, len(r.failures))])
		}
	})
	t.Run("on", func(t *testing.T) {
		r := runMigration(t, "on", 8, 1, 3*time.Second)
		if r.kept != 0 {
			t.Errorf("flows=on: %d of %d clients kept their connection across a new port; want none (the control)", r.kept, r.clients)
		}
	})
}
