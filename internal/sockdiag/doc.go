// Package sockdiag is the kernel's view of the sockets baton manages: accept
// queues, connections by TCP state, which worker holds which connection,
// and the host counters that explain drops. `baton status`, `baton top` and
// the Prometheus collectors read it.
//
// # Sockets
//
// Conn speaks NETLINK_SOCK_DIAG, the interface ss(8) uses. Query asks for
// the TCP or UDP sockets of one local port in a set of states; the port is
// matched by an INET_DIAG_REQ_BYTECODE filter that the kernel runs, so a
// host with 100,000 sockets is not copied to user space to find a few
// hundred. For a listening socket the kernel reports the accept queue: Socket.RecvQ is
// the number of connections waiting to be accepted now and Socket.SendQ the
// most it holds (the listen(2) backlog after the net.core.somaxconn cap),
// the numbers `ss -lnt` shows as Recv-Q and Send-Q.
//
// ListenQueues and UnixQueues look sockets up by inode, the number fstat(2)
// gives for a socket fd and /proc/PID/fd shows as "socket:[INODE]". Every
// socket of a SO_REUSEPORT group has its own inode and its own queue.
// UnixFile tells which file on disk a unix socket is bound to (the
// kernel's record from bind(2)), so that a process acting as root on a
// socket file can make sure the file at the path is still its socket's.
//
// # Processes
//
// Owners reads /proc/PID/fd of the processes it is given (baton's
// workers), never of every process. FDUsage reports a process's open fds against its RLIMIT_NOFILE.
//
// # Host counters
//
// ReadNetstat returns the counters of /proc/net/netstat and /proc/net/snmp
// (TcpExt ListenOverflows, ListenDrops, SyncookiesSent, ...), ReadSockstat
// those of /proc/net/sockstat and /proc/net/sockstat6. Both describe the
// network namespace of the calling process, as does Conn.
//
// Everything here is Linux only; on other systems the functions return an
// error wrapping ErrNotSupported.
package sockdiag
