// Command chat is a line-based TCP chat server whose clients stay
// connected across baton reloads: on the stop signal each connection
// stops at a line boundary and is handed to baton with its state (nick,
// room, bytes read but not processed); the next generation adopts it and
// carries on. No line a client sends is lost or processed twice.
//
// From the top of the repository, after make build:
//
//	bin/baton run -l chat=tcp://127.0.0.1:9000 -n 1 --ready notify -- bin/chat
//	nc 127.0.0.1 9000     (in two terminals; then bin/baton reload, keep chatting)
//
// A line is said to everyone in the sender's room. A line that starts
// with a number, "N text", is also answered to its sender with "ack N", so
// a program can check that every line was taken exactly once, in order.
// Commands: /nick NAME, /join ROOM, /who, /whoami, /quit. Lines starting
// with "* " are notices. Rooms are per worker process: run one worker
// (-n 1) for everybody to meet. Outside baton it listens on -addr itself.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-dev/baton"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "address to listen on when not run by baton")
	flag.Parse()
	ln, err := baton.Listener("chat", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &server{rooms: map[string]map[*session]bool{}, sessions: map[*session]bool{}}
	stop := baton.Stopping()
	adopted := baton.Adopted() // before Ready: the subscription must be open when the old generation stops

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed: draining
			}
			srv.start(c, newSession(srv, c), true)
		}
	}()
	go func() {
		defer wg.Done()
		for a := range adopted {
			s, err := resume(srv, a)
			if err != nil {
				log.Printf("cannot resume a connection from %s: %v", a.Conn.RemoteAddr(), err)
				a.Conn.Close()
				continue
			}
			srv.start(a.Conn, s, false)
		}
	}()
	if err := baton.Ready(); err != nil {
		log.Fatal(err)
	}
	baton.Status("chatting")
	<-stop
	// Stop accepting (close, never shutdown: the socket is shared), then
	// have every session stop at a line boundary and hand itself off.
	ln.Close()
	srv.drain()
	wg.Wait() // the adopted channel closes when baton ends the subscription
	srv.wait()
	log.Printf("handed off %d connections, closed %d", srv.handedOff.Load(), srv.closed.Load())
}

// server is the set of sessions of this process and its rooms.
type server struct {
	mu       sync.Mutex
	rooms    map[string]map[*session]bool
	sessions map[*session]bool
	draining bool
	wg       sync.WaitGroup
	guests   atomic.Int64

	handedOff, closed atomic.Int64
}

// state is what travels with a connection to the next generation.
type state struct {
	Nick    string `json:"nick"`
	Room    string `json:"room"`
	Pending []byte `json:"pending,omitempty"` // read, not yet processed
}

type session struct {
	srv  *server
	conn net.Conn
	r    *bufio.Reader
	st   state

	wmu sync.Mutex // one line at a time
}

func newSession(srv *server, c net.Conn) *session {
	nick := fmt.Sprintf("guest%d-%d", os.Getpid()%1000, srv.guests.Add(1))
	return &session{srv: srv, conn: c, r: bufio.NewReader(c), st: state{Nick: nick, Room: "lobby"}}
}

// resume rebuilds a session handed over by an earlier generation.
func resume(srv *server, a baton.AdoptedConn) (*session, error) {
	s := &session{srv: srv, conn: a.Conn}
	if err := json.Unmarshal(a.State, &s.st); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	// What the old worker had read and not processed comes first, then
	// what is still queued in the socket.
	s.r = bufio.NewReader(io.MultiReader(bytes.NewReader(s.st.Pending), a.Conn))
	s.st.Pending = nil
	return s, nil
}

// start runs s on its own goroutine; fresh sessions get a welcome,
// adopted ones a notice that they moved.
func (srv *server) start(c net.Conn, s *session, fresh bool) {
	srv.mu.Lock()
	if srv.draining {
		// Arrived after the stop signal: pass it straight on.
		c.SetReadDeadline(time.Now())
	}
	srv.sessions[s] = true
	srv.join(s, s.st.Room)
	srv.wg.Add(1)
	srv.mu.Unlock()
	if fresh {
		s.say("* welcome to baton chat, you are %s in %s (pid %d, generation %d); /nick NAME, /join ROOM, /who, /whoami, /quit",
			s.st.Nick, s.st.Room, os.Getpid(), baton.Generation())
	} else {
		s.say("* now served by pid %d (generation %d)", os.Getpid(), baton.Generation())
	}
	go s.run()
}

// drain makes every session stop reading: each hands itself off at its
// next line boundary.
func (srv *server) drain() {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.draining = true
	for s := range srv.sessions {
		s.conn.SetReadDeadline(time.Now())
	}
}

func (srv *server) wait() { srv.wg.Wait() }

// join moves s to room; srv.mu is held.
func (srv *server) join(s *session, room string) {
	if m := srv.rooms[s.st.Room]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(srv.rooms, s.st.Room)
		}
	}
	s.st.Room = room
	if srv.rooms[room] == nil {
		srv.rooms[room] = map[*session]bool{}
	}
	srv.rooms[room][s] = true
}

func (srv *server) leave(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	delete(srv.sessions, s)
	if m := srv.rooms[s.st.Room]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(srv.rooms, s.st.Room)
		}
	}
}

// broadcast says line to everyone in room but from.
func (srv *server) broadcast(from *session, room, line string) {
	srv.mu.Lock()
	var to []*session
	for s := range srv.rooms[room] {
		if s != from {
			to = append(to, s)
		}
	}
	srv.mu.Unlock()
	for _, s := range to {
		s.say("%s", line)
	}
}

// say writes one line to the session's client.
func (s *session) say(format string, args ...any) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(s.conn, format+"\n", args...)
}

func (s *session) run() {
	defer s.srv.wg.Done()
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				s.handOff([]byte(line))
				return
			}
			s.srv.leave(s)
			s.conn.Close()
			return
		}
		if !s.handle(strings.TrimRight(line, "\r\n")) {
			s.srv.leave(s)
			s.conn.Close()
			return
		}
	}
}

// handle processes one line; false ends the session.
func (s *session) handle(line string) bool {
	cmd, arg, _ := strings.Cut(line, " ")
	switch cmd {
	case "/quit":
		s.say("* bye")
		return false
	case "/nick":
		if arg = strings.TrimSpace(arg); arg == "" || strings.ContainsAny(arg, " \t") {
			s.say("* usage: /nick NAME")
			return true
		}
		old := s.st.Nick
		s.st.Nick = arg
		s.srv.broadcast(s, s.st.Room, fmt.Sprintf("* %s is now %s", old, arg))
		s.say("* you are %s", arg)
		return true
	case "/join":
		if arg = strings.TrimSpace(arg); arg == "" {
			s.say("* usage: /join ROOM")
			return true
		}
		s.srv.broadcast(s, s.st.Room, fmt.Sprintf("* %s left", s.st.Nick))
		s.srv.mu.Lock()
		s.srv.join(s, arg)
		s.srv.mu.Unlock()
		s.srv.broadcast(s, arg, fmt.Sprintf("* %s joined", s.st.Nick))
		s.say("* joined %s", arg)
		return true
	case "/who":
		s.srv.mu.Lock()
		var names []string
		for m := range s.srv.rooms[s.st.Room] {
			names = append(names, m.st.Nick)
		}
		s.srv.mu.Unlock()
		sort.Strings(names)
		s.say("* in %s here: %s", s.st.Room, strings.Join(names, ", "))
		return true
	case "/whoami":
		s.say("* you are %s in %s, %s, served by pid %d (generation %d)", s.st.Nick, s.st.Room, s.conn.RemoteAddr(), os.Getpid(), baton.Generation())
		return true
	}
	if strings.HasPrefix(cmd, "/") {
		s.say("* unknown command %s; try /nick, /join, /who, /whoami, /quit", cmd)
		return true
	}
	if _, err := strconv.ParseUint(cmd, 10, 64); err == nil {
		s.say("ack %s", cmd)
	}
	if line != "" {
		s.srv.broadcast(s, s.st.Room, s.st.Nick+": "+line)
	}
	return true
}

// handOff passes the session to the next generation: partial is a line
// read in part when the read was interrupted.
func (s *session) handOff(partial []byte) {
	s.srv.leave(s)
	// Whatever the reader holds was read from the socket and is not in it
	// any more: it travels in the state.
	buffered, _ := s.r.Peek(s.r.Buffered())
	st := s.st
	st.Pending = append(partial, buffered...)
	b, _ := json.Marshal(st)
	s.conn.SetReadDeadline(time.Time{})
	if err := baton.Handoff(s.conn, b); err != nil {
		log.Printf("cannot hand off %s: %v", s.conn.RemoteAddr(), err)
		s.say("* the server is going away: bye")
		s.conn.Close()
		s.srv.closed.Add(1)
		return
	}
	s.srv.handedOff.Add(1)
}
