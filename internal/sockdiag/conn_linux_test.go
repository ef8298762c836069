package sockdiag

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// Every test here talks to the real kernel over loopback (STYLE.md §5).

func TestListenQueue(t *testing.T) {
	max := somaxconn(t)
	const k = 5 // connections left waiting in the accept queue
	for _, tc := range []struct {
		name    string
		ip      string
		backlog int
	}{
		{name: "tcp4", ip: "127.0.0.1", backlog: 8},
		{name: "tcp6", ip: "::1", backlog: 8},
		{name: "tcp4 above somaxconn", ip: "127.0.0.1", backlog: max + 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listenTCP(t, tc.ip, 0, tc.backlog, false)
			dialN(t, ln.addr, k)
			c := dial(t)

			var got map[uint64]Queue
			waitFor(t, fmt.Sprintf("%d connections in the accept queue", k), func() (bool, string) {
				var err error
				got, err = c.ListenQueues(ln.ino, ln.ino+1_000_000)
				if err != nil {
					t.Fatal(err)
				}
				return got[ln.ino].RecvQ == k, fmt.Sprint(got)
			})
			want := map[uint64]Queue{ln.ino: {State: Listen, RecvQ: k, SendQ: uint32(min(tc.backlog, max))}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ListenQueues (-want +got):\n%s", diff)
			}

			// Query sees the same socket, with its address and owner.
			socks, err := c.Query(Query{States: States(Listen), LocalPort: ln.addr.Port()})
			if err != nil {
				t.Fatal(err)
			}
			family := uint8(unix.AF_INET)
			if ln.addr.Addr().Is6() {
				family = unix.AF_INET6
			}
			if len(socks) != 1 {
				t.Fatalf("Query found %d listening sockets on port %d, want 1: %+v", len(socks), ln.addr.Port(), socks)
			}
			s := socks[0]
			s.Cookie = 0 // unknowable in advance
			wantSock := Socket{
				Family: family, Protocol: unix.IPPROTO_TCP, State: Listen,
				Local:  ln.addr,
				Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0),
				RecvQ:  k, SendQ: uint32(min(tc.backlog, max)),
				UID:   uint32(os.Getuid()),
				Inode: ln.ino,
			}
			if family == unix.AF_INET6 {
				wantSock.Remote = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
			}
			if diff := cmp.Diff(wantSock, s, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("Query (-want +got):\n%s", diff)
			}

			t.Run("matches ss", func(t *testing.T) {
				lines := runSS(t, "-ltne", fmt.Sprintf("( sport = :%d )", ln.addr.Port()))
				recvQ, sendQ := ssQueues(t, lines, ln.ino)
				if recvQ != got[ln.ino].RecvQ || sendQ != got[ln.ino].SendQ {
					t.Errorf("ss shows Recv-Q %d Send-Q %d, sockdiag %+v", recvQ, sendQ, got[ln.ino])
				}
			})
		})
	}
}

// Every socket of a SO_REUSEPORT group has its own accept queue; the
// kernel spreads connections over them by hash. Each inode's RecvQ must be
// exactly what accept(2) then takes from that socket.
func TestReusePortGroup(t *testing.T) {
	backlogs := []int{16, 17, 18}
	const k = 12 // at most 12 on one socket: below every backlog
	var group []rawListener
	port := uint16(0)
	for _, b := range backlogs {
		ln := listenTCP(t, "127.0.0.1", port, b, true)
		port = ln.addr.Port()
		group = append(group, ln)
	}
	dialN(t, group[0].addr, k)
	c := dial(t)
	inodes := []uint64{group[0].ino, group[1].ino, group[2].ino}

	var got map[uint64]Queue
	waitFor(t, "every connection queued", func() (bool, string) {
		var err error
		got, err = c.ListenQueues(inodes...)
		if err != nil {
			t.Fatal(err)
		}
		sum := uint32(0)
		for _, q := range got {
			sum += q.RecvQ
		}
		return sum == k, fmt.Sprint(got)
	})

	if ssPath != "" {
		lines := runSS(t, "-ltne", fmt.Sprintf("( sport = :%d )", port))
		for _, ln := range group {
			recvQ, sendQ := ssQueues(t, lines, ln.ino)
			if q := got[ln.ino]; q.RecvQ != recvQ || q.SendQ != sendQ {
				t.Errorf("inode %d: ss shows Recv-Q %d Send-Q %d, sockdiag %+v", ln.ino, recvQ, sendQ, q)
			}
		}
	} else {
		t.Log("ss (iproute2) is not installed: comparison with ss skipped")
	}

	for i, ln := range group {
		q := got[ln.ino]
		if q.State != Listen || q.SendQ != uint32(backlogs[i]) {
			t.Errorf("inode %d: got %+v, want state LISTEN and max %d", ln.ino, q, backlogs[i])
		}
		accepted := uint32(0)
		for {
			nfd, _, err := unix.Accept4(ln.fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				t.Fatal(os.NewSyscallError("accept4", err))
			}
			unix.Close(nfd)
			accepted++
		}
		if accepted != q.RecvQ {
			t.Errorf("inode %d: RecvQ %d, but accept(2) took %d", ln.ino, q.RecvQ, accepted)
		}
	}
}

// A server that never closes accepted connections: after the clients
// close, its sockets sit in CLOSE_WAIT. They must be counted on its port
// and attributed to the child process, by inode.
func TestCloseWaitOwnedByChild(t *testing.T) {
	h, line := startHelper(t, "closewait", "")
	p, err := strconv.ParseUint(line, 10, 16)
	if err != nil {
		t.Fatalf("helper printed %q, want a port", line)
	}
	port := uint16(p)
	const k = 4
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	conns := dialN(t, local, k)
	peers := peerPorts(conns)
	for _, cn := range conns {
		cn.Close()
	}
	c := dial(t)

	var socks []Socket
	waitFor(t, "CLOSE-WAIT sockets accepted by the child", func() (bool, string) {
		socks, err = c.Query(Query{LocalPort: port})
		if err != nil {
			t.Fatal(err)
		}
		socks = ours(socks, local, peers)
		n := CountByState(socks)
		// Accepted: no socket left without an inode (in the queue).
		for _, s := range socks {
			if s.Inode == 0 || (s.State == Listen && s.RecvQ != 0) {
				return false, fmt.Sprint(n)
			}
		}
		return n[CloseWait] == k, fmt.Sprint(n)
	})
	if diff := cmp.Diff(map[State]int{Listen: 1, CloseWait: k}, CountByState(socks)); diff != "" {
		t.Errorf("states on port %d (-want +got):\n%s", port, diff)
	}

	owners, err := Owners(h.pid, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		o := owners[s.Inode]
		if len(o) != 1 || o[0].PID != h.pid || o[0].FD < 3 {
			t.Errorf("%v socket inode %d: owners %+v, want the child %d alone", s.State, s.Inode, o, h.pid)
		}
	}

	// The clients' ends went to FIN-WAIT-2 with no process (inode 0).
	waitFor(t, "the clients' ends in FIN-WAIT-2", func() (bool, string) {
		fw, err := c.Query(Query{Family: unix.AF_INET, States: States(FinWait2)})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range fw {
			if s.Remote.Port() == port && s.Inode == 0 {
				n++
			}
		}
		return n == k, fmt.Sprintf("%d of %d", n, k)
	})

	t.Run("matches ss", func(t *testing.T) {
		lines := ssOurs(runSS(t, "-tan", fmt.Sprintf("( sport = :%d )", port)), local, peers)
		if diff := cmp.Diff(ssStateCounts(lines), stateNameCounts(socks)); diff != "" {
			t.Errorf("states (-ss +sockdiag):\n%s", diff)
		}
	})
}

// The side that closes first keeps TIME-WAIT; here the server does, so
// the TIME-WAIT sockets are on the server's port, held by no process.
func TestTimeWait(t *testing.T) {
	for _, tc := range []struct{ name, network, ip string }{
		{"tcp4", "tcp4", "127.0.0.1"},
		{"tcp6", "tcp6", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen(tc.network, net.JoinHostPort(tc.ip, "0"))
			if err != nil {
				skipNoIPv6(t, netip.MustParseAddr(tc.ip), err)
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			addr := ln.Addr().(*net.TCPAddr).AddrPort()
			const k = 3
			peers := make(map[uint16]bool)
			for range k {
				cl := dialN(t, addr, 1)[0]
				peers[uint16(cl.LocalAddr().(*net.TCPAddr).Port)] = true
				sv, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				sv.Close()
				if _, err := io.ReadAll(cl); err != nil {
					t.Fatal(err)
				}
				cl.Close()
			}
			c := dial(t)
			var socks []Socket
			waitFor(t, "server ends in TIME-WAIT", func() (bool, string) {
				socks, err = c.Query(Query{LocalPort: addr.Port()})
				if err != nil {
					t.Fatal(err)
				}
				socks = ours(socks, addr, peers)
				n := CountByState(socks)
				return n[TimeWait] == k, fmt.Sprint(n)
			})
			if diff := cmp.Diff(map[State]int{Listen: 1, TimeWait: k}, CountByState(socks)); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}

			tw, err := c.Query(Query{States: States(TimeWait), LocalPort: addr.Port()})
			if err != nil {
				t.Fatal(err)
			}
			tw = ours(tw, addr, peers)
			if len(tw) != k {
				t.Errorf("Query with States(TimeWait): %d sockets, want %d", len(tw), k)
			}
			for _, s := range tw {
				if s.State != TimeWait || s.Inode != 0 || s.Remote.Addr() != addr.Addr() {
					t.Errorf("got %+v, want a TIME-WAIT socket from %v to %v without inode", s, addr, addr.Addr())
				}
			}

			t.Run("matches ss", func(t *testing.T) {
				lines := ssOurs(runSS(t, "-tan", fmt.Sprintf("( sport = :%d )", addr.Port())), addr, peers)
				if diff := cmp.Diff(ssStateCounts(lines), stateNameCounts(socks)); diff != "" {
					t.Errorf("states (-ss +sockdiag):\n%s", diff)
				}
			})
		})
	}
}

func TestUDP(t *testing.T) {
	for _, tc := range []struct{ name, network, ip string }{
		{"udp4", "udp4", "127.0.0.1"},
		{"udp6", "udp6", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := net.ListenUDP(tc.network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.ip), 0)))
			if err != nil {
				skipNoIPv6(t, netip.MustParseAddr(tc.ip), err)
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			addr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			_, srvIno := connFD(t, srv)
			cl, err := net.DialUDP(tc.network, nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cl.Close() })
			_, clIno := connFD(t, cl)
			const datagrams = 3
			for range datagrams {
				if _, err := cl.Write([]byte("never read")); err != nil {
					t.Fatal(err)
				}
			}
			c := dial(t)
			var got []Socket
			waitFor(t, "datagrams queued", func() (bool, string) {
				got, err = c.Query(Query{Protocol: unix.IPPROTO_UDP, LocalPort: addr.Port()})
				if err != nil {
					t.Fatal(err)
				}
				return len(got) == 1 && got[0].RecvQ > 0, fmt.Sprintf("%+v", got)
			})
			s := got[0]
			if s.Inode != srvIno || s.State != Close || s.Protocol != unix.IPPROTO_UDP || s.Local != addr {
				t.Errorf("got %+v, want the unconnected socket %v with inode %d", s, addr, srvIno)
			}

			// The client called connect(2): ESTAB, with the server as peer.
			clPort := cl.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			csocks, err := c.Query(Query{Protocol: unix.IPPROTO_UDP, LocalPort: clPort})
			if err != nil {
				t.Fatal(err)
			}
			if len(csocks) != 1 || csocks[0].State != Established || csocks[0].Remote != addr || csocks[0].Inode != clIno {
				t.Errorf("client: got %+v, want one connected socket to %v with inode %d", csocks, addr, clIno)
			}

			t.Run("matches ss", func(t *testing.T) {
				lines := runSS(t, "-uane", fmt.Sprintf("( sport = :%d )", addr.Port()))
				recvQ, sendQ := ssQueues(t, lines, srvIno)
				if recvQ != s.RecvQ || sendQ != s.SendQ {
					t.Errorf("ss shows Recv-Q %d Send-Q %d, sockdiag %d %d", recvQ, sendQ, s.RecvQ, s.SendQ)
				}
			})
		})
	}
}

func TestUnixQueues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	const backlog, k = 7, 3
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	lnIno := fdInode(t, fd)
	var clients []net.Conn
	for range k {
		cl, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		clients = append(clients, cl)
	}
	c := dial(t)

	got, err := c.UnixQueues(lnIno, lnIno+1_000_000, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]Queue{lnIno: {State: Listen, RecvQ: k, SendQ: backlog}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("listening socket (-want +got):\n%s", diff)
	}

	t.Run("matches ss", func(t *testing.T) {
		for _, f := range runSS(t, "-xl") {
			// u_str LISTEN Recv-Q Send-Q PATH INODE * 0
			if len(f) >= 6 && f[4] == path && f[5] == strconv.FormatUint(lnIno, 10) {
				if q := got[lnIno]; atou32(t, f[2]) != q.RecvQ || atou32(t, f[3]) != q.SendQ {
					t.Errorf("ss shows %v, sockdiag %+v", f, q)
				}
				return
			}
		}
		t.Errorf("ss -xl does not list %s", path)
	})

	// Take one connection and send it 5 bytes: a connected socket's
	// queues count bytes.
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(nfd) })
	srvIno := fdInode(t, nfd)
	// Unix stream connections are accepted in the order they connected.
	sent := clients[0]
	_, sentIno := connFD(t, sent.(*net.UnixConn))
	if _, err := sent.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err = c.UnixQueues(srvIno, sentIno, lnIno)
	if err != nil {
		t.Fatal(err)
	}
	if q := got[srvIno]; q.State != Established || q.RecvQ != 5 {
		t.Errorf("accepted socket: got %+v, want ESTAB with 5 bytes to read", q)
	}
	if q := got[sentIno]; q.State != Established || q.SendQ == 0 {
		t.Errorf("client socket: got %+v, want ESTAB with its 5 bytes in flight", q)
	}
	if q := got[lnIno]; q.RecvQ != k-1 {
		t.Errorf("listening socket after one accept: got %+v, want RecvQ %d", q, k-1)
	}
}

// The kernel must accept both encodings of the port filter and return
// exactly the sockets on the port.
func TestPortFilterEncodings(t *testing.T) {
	ln := listenTCP(t, "127.0.0.1", 0, 8, false)
	other := listenTCP(t, "127.0.0.1", 0, 8, false)
	peers := peerPorts(dialN(t, ln.addr, 2))
	c := dial(t)
	for _, eq := range []bool{true, false} {
		t.Run(fmt.Sprintf("eq=%v", eq), func(t *testing.T) {
			var socks []Socket
			waitFor(t, "both connections established", func() (bool, string) {
				var err error
				socks, err = c.dumpInet(nil, unix.AF_INET, unix.IPPROTO_TCP, AllStates, sourcePortFilter(ln.addr.Port(), eq))
				if err != nil {
					t.Fatal(err)
				}
				return CountByState(ours(socks, ln.addr, peers))[Established] == 2, fmt.Sprint(CountByState(socks))
			})
			if diff := cmp.Diff(map[State]int{Listen: 1, Established: 2}, CountByState(ours(socks, ln.addr, peers))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			for _, s := range socks {
				if s.Local.Port() != ln.addr.Port() {
					t.Errorf("filter for port %d let through %+v", ln.addr.Port(), s)
				}
				if s.Inode == other.ino {
					t.Errorf("filter for port %d let through the listener on %d", ln.addr.Port(), other.addr.Port())
				}
			}
		})
	}
}

func TestQueryBadFamily(t *testing.T) {
	c := dial(t)
	if _, err := c.Query(Query{Family: unix.AF_UNIX}); err == nil {
		t.Error("Query with AF_UNIX: no error")
	}
}

// Dial, query and close leak neither fds nor goroutines.
func TestConnNoLeak(t *testing.T) {
	batontest.CheckLeaks(t) // goroutines, once the test has returned
	ln := listenTCP(t, "127.0.0.1", 0, 8, false)
	before := batontest.NumFDs(t)
	for range 20 {
		c, err := Dial()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Query(Query{LocalPort: ln.addr.Port()}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ListenQueues(ln.ino); err != nil {
			t.Fatal(err)
		}
		if _, err := c.UnixQueues(ln.ino); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := batontest.NumFDs(t); after != before {
		t.Errorf("open fds: %d before, %d after 20 Dial/Close", before, after)
	}
}

func TestUnixFile(t *testing.T) {
	c := dial(t)
	socket := func(t *testing.T) int {
		t.Helper()
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}

	t.Run("bound to a path", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.sock")
		fd := socket(t)
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		// The file is replaced: the kernel still names the one bound.
		if err := os.Rename(path, path+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		f, ok, err := c.UnixFile(fdInode(t, fd))
		if err != nil || !ok {
			t.Fatalf("UnixFile = %+v, %v, %v; want the bound file", f, ok, err)
		}
		want := UnixFile{Dev: st.Dev, Ino: st.Ino & math.MaxUint32}
		if f != want {
			t.Errorf("UnixFile = %+v, stat of the socket file says %+v", f, want)
		}
	})
	t.Run("abstract, unbound, or no such socket", func(t *testing.T) {
		abstract := socket(t)
		if err := unix.Bind(abstract, &unix.SockaddrUnix{Name: fmt.Sprintf("@sockdiag-test-%d", os.Getpid())}); err != nil {
			t.Fatal(err)
		}
		unbound := socket(t)
		for name, ino := range map[string]uint64{"abstract": fdInode(t, abstract), "unbound": fdInode(t, unbound), "none": fdInode(t, unbound) + 1_000_000} {
			if f, ok, err := c.UnixFile(ino); ok || err != nil {
				t.Errorf("%s: UnixFile = %+v, %v, %v; want no file and no error", name, f, ok, err)
			}
		}
	})
}
