// Package notify speaks the sd_notify protocol: a datagram of
// newline-separated KEY=VALUE assignments ("READY=1", "STATUS=...") sent to
// the unix socket named in NOTIFY_SOCKET.
//
// Server is the receiving side baton runs for its workers. It enables
// SO_PASSCRED, so the kernel attaches the sender's pid to every datagram and
// a worker cannot claim to be another. Notify is the sending side, used by
// the worker library and by baton itself when systemd supervises it.
//
// Notifier is baton's own client to its service manager: notifications
// go out in order from a goroutine of its own, and NotifyFds sends
// descriptors with one (SCM_RIGHTS), which is how baton puts its
// listeners in systemd's file descriptor store ("FDSTORE=1").
package notify
