package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton"
	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/supervisor"
)

// socketCases: local users and workers that abuse baton's abstract
// notify and worker sockets, and what a worker hands off.
var socketCases = []reliabilityCase{
	{"Security", "a local user sends a lingering TCP socket to NOTIFY_SOCKET, then floods it", lingeringNotify},
	{"Security", "a local user keeps 4,000 connections open to BATON_SOCKET during handoffs", strangerHoldsWorkerSocket},
	{"Security", "a worker hands off a pipe, a root-only file, a UDP socket, its listener and an epoll fd", junkHandoff},
}

// strangerEnv carries a stranger's target: the abstract socket it abuses.
const strangerEnv = "E2E_STRANGER_TARGET"

// strangerBin is a copy of the test binary that another user can run
// (the go test binary's own directory is private).
func strangerBin(t *testing.T) string {
	t.Helper()
	return binCopy(t, testBin, "e2e.test")
}

// stranger runs the test binary in mode as u, with target, until the
// test ends or it exits; its output is read line by line into lines.
type stranger struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
}

func startStranger(t *testing.T, u testUser, mode, target string) *stranger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := u.command(ctx, strangerBin(t))
	cmd.Env = append(cmd.Env, workerEnv+"="+mode, strangerEnv+"="+target)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stranger{cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-s.done
		}
		cancel()
	})
	return s
}

// line waits for the stranger's next line of output.
func (s *stranger) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatal("the stranger exited without saying what it did")
		}
		return l
	case <-time.After(2 * time.Minute):
		t.Fatal("the stranger said nothing for 2 minutes")
	}
	return ""
}

// strangerNotify is the stranger of lingeringNotify: it sends one
// datagram to the notify socket carrying a lingering TCP socket (then
// closes its own copy, so that baton's would be the last), says what the
// kernel answered, floods the socket with READY=1 and STATUS datagrams,
// and holds the lingering connection's peer until stdin closes.
func strangerNotify() error {
	target := &unix.SockaddrUnix{Name: os.Getenv(strangerEnv)}
	fd, peer, err := batontest.NewLingeringTCP(300 * time.Second)
	if err != nil {
		return err
	}
	defer peer.Close()
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	// Datagrams first, so that the one with the descriptor waits behind
	// them in baton's queue while the stranger closes its own copy:
	// baton's close of it is then the last one, and would block.
	flood := func(n int) (sent int) {
		for i := range n {
			msg := "READY=1"
			if i%2 == 1 {
				msg = "STATUS=owned by a stranger\nX_BATON_ACCEPTED=-1"
			}
			if unix.Sendto(s, []byte(msg), unix.MSG_DONTWAIT, target) == nil {
				sent++
			}
		}
		return sent
	}
	sent := flood(2000)
	err = unix.Sendmsg(s, []byte("READY=1\nFDSTORE=1"), unix.UnixRights(fd), target, 0)
	switch {
	case errors.Is(err, unix.EPERM):
		// Still the stranger's: closed at the end, without waiting.
		fmt.Println("descriptor refused by the kernel (EPERM)")
		defer disarmAndClose(fd)
	case err != nil:
		fmt.Println("sendmsg:", err)
		defer disarmAndClose(fd)
	default:
		unix.Close(fd)
		fmt.Println("descriptor sent")
	}
	sent += flood(20000)
	fmt.Printf("flooded %d datagrams\n", sent)
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// disarmAndClose closes a lingering socket without waiting.
func disarmAndClose(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
	unix.Close(fd)
}

func lingeringNotify(t *testing.T) string {
	u := newTestUser(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--ready-timeout", "10s", "--", helloBin)
	st := b.waitReady(2)
	before := rest(b, 2)
	wait := startLoad(b.addr("http"), 8*time.Second)
	notifySock := workerEnvOf(t, st.Workers[0].PID, "NOTIFY_SOCKET")
	s := startStranger(t, u, "stranger-notify", notifySock)
	sent := s.line(t)
	flood := s.line(t)
	// Every reload needs READY=1 from new workers through the socket the
	// stranger tried to freeze; a crashed worker needs it to come back.
	start := time.Now()
	for i := range 3 {
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d after the stranger's datagram exited %d: %s\n%s", i+1, code, out, b.log)
		}
	}
	reloads := time.Since(start)
	victim := b.status().Workers[0].PID
	killPID(victim)
	b.waitReplaced(victim, 2)
	checkNeverRefused(t, wait(), 1) // only requests on the killed worker may fail
	for _, w := range b.status().Workers {
		if w.Status == "owned by a stranger" {
			t.Errorf("worker %d took a stranger's STATUS", w.PID)
		}
	}
	checkRest(t, before, rest(b, 2))
	return fmt.Sprintf("the stranger (uid %d): %s; %s; 3 reloads then took %.1fs and a killed worker was replaced; under load no connection was refused and no request failed but on the killed worker; %v at rest before and after",
		u.UID, sent, flood, reloads.Seconds(), before)
}

// strangerWorkerSocket is the stranger of strangerHoldsWorkerSocket: it
// keeps up to 4,000 connections open to the worker socket, opening a new
// one whenever baton closes one, and once tries to send a lingering
// socket over one of them; it reports when stdin closes.
func strangerWorkerSocket() error {
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	target := &net.UnixAddr{Name: os.Getenv(strangerEnv), Net: "unix"}
	const want = 4000
	fd, peer, err := batontest.NewLingeringTCP(300 * time.Second)
	if err != nil {
		return err
	}
	defer peer.Close()
	if c, err := net.DialUnix("unix", nil, target); err == nil {
		_, _, err := c.WriteMsgUnix([]byte(`{"method":"handoff"}`+"\n"), unix.UnixRights(fd), nil)
		switch {
		case errors.Is(err, unix.EPERM):
			fmt.Println("descriptor refused by the kernel (EPERM)")
		case err != nil:
			fmt.Println("sendmsg:", err)
		default:
			fmt.Println("descriptor sent")
		}
		c.Close()
	}
	defer disarmAndClose(fd)
	var mu sync.Mutex
	opened, refused, held := 0, 0, 0
	var answer string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialUnix("unix", nil, target)
				if err != nil {
					time.Sleep(10 * time.Millisecond) // pacing: the flood retries
					continue
				}
				mu.Lock()
				opened++
				held++
				full := held > want
				mu.Unlock()
				go func() {
					b, _ := io.ReadAll(c) // until baton closes it
					c.Close()
					mu.Lock()
					held--
					refused++
					if len(b) > 0 {
						answer = strings.TrimSpace(string(b))
					}
					mu.Unlock()
				}()
				if full {
					time.Sleep(5 * time.Millisecond) // pacing: the flood goes on, more slowly, once full
				}
			}
		}()
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("opened %d connections, %d closed by baton, last answer %s\n", opened, refused, answer)
	return nil
}

func strangerHoldsWorkerSocket(t *testing.T) string {
	u := newTestUser(t)
	const clients, reloads = 100, 2
	b := startBaton(t, nil, "-l", "chat=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", chatBin)
	st := b.waitReady(2)
	sock := workerEnvOf(t, st.Workers[0].PID, "BATON_SOCKET")
	s := startStranger(t, u, "stranger-worker-socket", sock)
	sent := s.line(t)
	if l := s.line(t); l != "holding" {
		t.Fatalf("the stranger said %q", l)
	}
	addr := b.addr("chat")
	cs := make([]*chatClient, clients)
	for i := range cs {
		c, err := dialChat(addr, i)
		if err != nil {
			t.Fatal(err)
		}
		defer c.conn.Close()
		cs[i] = c
	}
	stop := make(chan struct{})
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.talk(stop)
		}()
	}
	for i := 1; i <= reloads; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(500 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			close(stop)
			wg.Wait()
			t.Fatalf("reload %d exited %d: %s", i, code, out)
		}
		b.waitFor(fmt.Sprintf("reload %d: every connection moved to generation %d", i, i+1), time.Minute, func(st supervisor.Status) bool {
			if !settled(st, 2) || st.Generation != i+1 || st.Handoff.Held != 0 {
				return false
			}
			for _, c := range cs {
				if c.lastGen.Load() != int64(i+1) {
					return false
				}
			}
			return true
		})
	}
	close(stop)
	wg.Wait()
	lost := 0
	for i, c := range cs {
		err := errs[i]
		if err == nil {
			err = c.finish(reloads + 1)
		}
		if err != nil {
			if lost++; lost <= 5 {
				t.Error(err)
			}
		}
	}
	s.stdin.Close()
	report := s.line(t)
	h := b.status().Handoff
	if h.Stored != clients*reloads || h.Adopted != clients*reloads {
		t.Errorf("store counts %+v; want %d stored and adopted", h, clients*reloads)
	}
	return fmt.Sprintf("the stranger (uid %d): %s; %s; meanwhile %d chat clients kept talking through %d reloads, every one moved each time (%d lost)",
		u.UID, sent, report, clients, reloads, lost)
}

// junkReport is what the junk-handoff worker of generation 1 writes.
type junkReport struct {
	Sent     []string       `json:"sent"`     // what each descriptor was
	Refused  map[int]string `json:"refused"`  // by index: baton's reason
	Accepted int            `json:"accepted"` // handed off and kept by baton
}

// junkHandoffWorker serves the chat listener: generation 1 accepts one
// client and, asked to stop, hands off a pipe, a root-only file, a UDP
// socket, its own listener, an epoll descriptor and the client as
// "connections", and reports what baton answered. Later generations
// adopt what they are given and write to each a line naming their
// generation.
func junkHandoffWorker() error {
	if baton.Generation() > 1 {
		go func() {
			for a := range baton.Adopted() {
				fmt.Fprintf(a.Conn, "adopted by generation %d: %s\n", baton.Generation(), a.State)
				a.Conn.Close()
			}
		}()
		baton.Ready()
		<-baton.Stopping()
		return nil
	}
	ln, err := baton.Listener("chat", "")
	if err != nil {
		return err
	}
	baton.Ready()
	client, err := ln.Accept()
	if err != nil {
		return err
	}
	fmt.Fprintln(client, "welcome")
	<-baton.Stopping()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	secret, err := unix.Open(os.Getenv("E2E_SECRET"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	var conn, lfd int
	raw, _ := client.(*net.TCPConn).SyscallConn()
	raw.Control(func(f uintptr) { conn = int(f) })
	if raw, err = ln.(syscall.Conn).SyscallConn(); err != nil {
		return err
	}
	raw.Control(func(f uintptr) { lfd = int(f) })
	cs := []handoff.Conn{
		{Fd: p[0], Listener: "chat", State: []byte("pipe")},
		{Fd: secret, Listener: "chat", State: []byte("file")},
		{Fd: udp, Listener: "chat", State: []byte("udp")},
		{Fd: lfd, Listener: "chat", State: []byte("listener")},
		{Fd: epfd, Listener: "chat", State: []byte("epoll")},
		{Fd: conn, Listener: "chat", State: []byte("client")},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := handoff.DialSender(ctx, os.Getenv("BATON_SOCKET"))
	if err != nil {
		return err
	}
	defer s.Close()
	r := junkReport{Refused: map[int]string{}}
	for _, c := range cs {
		r.Sent = append(r.Sent, string(c.State))
	}
	err = s.Send(ctx, cs)
	var rej *handoff.RejectedError
	switch {
	case errors.As(err, &rej):
		r.Refused = rej.Reasons
	case err != nil:
		return err
	}
	r.Accepted = len(cs) - len(r.Refused)
	return writeReport(r)
}

func junkHandoff(t *testing.T) string {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("the root-only secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startBaton(t, []string{workerEnv + "=junk-handoff", reportDir + "=" + dir, "E2E_SECRET=" + secret},
		"-l", "chat=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", testBin)
	b.waitReady(1)
	c, err := net.Dial("tcp", b.addr("chat"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || l != "welcome\n" {
		t.Fatalf("the worker greeted %q, %v", l, err)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload exited %d: %s", code, out)
	}
	l, err := r.ReadString('\n')
	if err != nil || l != "adopted by generation 2: client\n" {
		t.Errorf("the client read %q, %v after the reload; want it adopted by generation 2", l, err)
	}
	reps := readReports[junkReport](t, dir, 1)
	rep := reps[0]
	refusedAll := len(rep.Refused) == 5
	for i := range 5 {
		if _, ok := rep.Refused[i]; !ok {
			refusedAll = false
		}
	}
	if !refusedAll || rep.Accepted != 1 {
		t.Errorf("baton refused %v and kept %d; want the first 5 (%v) refused and the client kept", rep.Refused, rep.Accepted, rep.Sent[:5])
	}
	h := b.waitFor("the client adopted", 30*time.Second, func(st supervisor.Status) bool { return st.Handoff.Adopted >= 1 }).Handoff
	if h.Rejected != 5 || h.Stored != 1 || h.Adopted != 1 || h.Held != 0 {
		t.Errorf("store counts %+v; want 5 rejected, 1 stored and adopted", h)
	}
	reasons := make([]string, 0, 5)
	for i := range 5 {
		reasons = append(reasons, rep.Sent[i]+": "+strings.ReplaceAll(rep.Refused[i], dir+"/", ""))
	}
	js, _ := json.Marshal(reasons)
	return fmt.Sprintf("baton refused each, by index, and told the worker why: %s; it kept the one real connection, which generation 2 adopted; status counts %d rejected", js, h.Rejected)
}
