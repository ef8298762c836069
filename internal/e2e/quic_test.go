package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/batontest"
)

// quicBin builds examples/quic once, for the tests that need it (not in
// TestMain: the other tests do not pay for it).
var quicBin = sync.OnceValues(func() (string, error) {
	out := filepath.Join(binDir, "quic")
	if b, err := exec.Command("go", "build", "-o", out, "../../examples/quic").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building examples/quic: %v\n%s", err, b)
	}
	return out, nil
})

// h3Client is one HTTP/3 client with a connection of its own.
type h3Client struct {
	tr   *http3.Transport
	c    *http.Client
	pids map[string]int // requests answered, by the process that did
}

// TestQUICConnectionsSurviveReloadsAndUpgrades: 50 quic-go clients, each
// on one HTTP/3 connection, make requests without pause to
// examples/quic while baton reloads 10 times and upgrades itself twice:
// no request fails, no connection breaks, and each connection is served
// by the worker that accepted it from start to end (its peers stay with
// it while it drains).
func TestQUICConnectionsSurviveReloadsAndUpgrades(t *testing.T) {
	requireE2EAlone(t)
	requireSteering(t)
	bin, err := quicBin()
	if err != nil {
		t.Fatal(err)
	}
	b := startBaton(t, nil, "-l", "quic=udp://127.0.0.1:0?balance=reuseport", "-n", "2", "--ready", "notify",
		"--drain-timeout", "2m", "--", bin, "-grace", "2m")
	b.waitReady(2)
	url := "https://" + b.addr("quic") + "/"

	const n = 50
	clients := make([]*h3Client, n)
	for i := range clients {
		tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, QUICConfig: &quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 5 * time.Second}}
		clients[i] = &h3Client{tr: tr, c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, pids: map[string]int{}}
		defer tr.Close()
	}
	var requests, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.c.Get(url)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %s", resp.Status)
					}
				}
				requests.Add(1)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				pid, _, _ := strings.Cut(strings.TrimPrefix(string(body), "pid "), " ")
				c.pids[pid]++
			}
		}()
	}
	waitRequests := func(more int64) {
		want := requests.Load() + more
		// Traffic between the commands; if it is slow, the checks
		// below say what the clients saw.
		batontest.Wait(30*time.Second, func() error {
			if n := requests.Load(); n < want {
				return fmt.Errorf("%d requests, want %d", n, want)
			}
			return nil
		})
	}
	waitRequests(500)
	for i := range 12 {
		cmd := "reload"
		if i == 5 || i == 11 {
			cmd = "upgrade"
		}
		b.cliUntilDone(cmd)
		waitRequests(200)
	}
	close(stop)
	wg.Wait()
	st := b.status()
	moved := 0
	for _, c := range clients {
		if len(c.pids) != 1 {
			moved++
		}
	}
	t.Logf("%d requests on %d HTTP/3 connections across 10 reloads and 2 upgrades: %d failed; %d connections served by more than one worker; %d workers alive; flows %s",
		requests.Load(), n, failed.Load(), moved, len(st.Workers), flowsText(st.Listeners[0].Flows))
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed: %v", failed.Load(), requests.Load(), failures[:min(5, len(failures))])
	}
	if moved != 0 {
		t.Errorf("%d of %d connections were served by more than one worker: their peers did not stay with their worker", moved, n)
	}
	// The clients close their connections: every old worker drains
	// (GOAWAY once idle), releases its flows and exits.
	for _, c := range clients {
		c.tr.Close()
	}
	b.waitStatus("the old QUIC workers to drain", func(st api.Status) bool { return len(st.Workers) == 2 })
}
