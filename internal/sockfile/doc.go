// Package sockfile acts on the file a unix socket is bound to (the
// "socket file" bind(2) creates at a path) without following anything
// another user could have put at that path.
//
// baton runs as root and binds unix sockets in directories that its
// worker user, or another local user, may be able to write. Such a user
// can replace the socket file with a symlink to a root-only file, or
// replace a directory on the way with a symlink, at any moment: a
// chmod(2), chown(2), connect(2) or unlink(2) by path would then act on
// their choice of file. So nothing here acts on a path:
//
//   - Verify opens the path with O_PATH|O_NOFOLLOW (which opens a symlink
//     itself, never its target) and checks, on that descriptor, that the
//     file is the one the kernel recorded when the socket was bound
//     (sock_diag with UDIAG_SHOW_VFS: its device and inode). Chmod and
//     Chown then change that very file, by descriptor (fchmodat2(2) and
//     fchownat(2) with AT_EMPTY_PATH).
//   - Remove unlinks a socket file only while the name in its directory
//     still leads to the file baton made: the directory is opened once,
//     and the check (fstatat(2) without following) and the unlinkat(2)
//     are made relative to that descriptor.
//   - OpenPath and Answers tell a stale socket file (one nothing answers
//     on) from a live one by connecting through the descriptor
//     (/proc/self/fd/N), so the file probed is the file later removed.
//
// When the kernel cannot say which file a socket is bound to (a kernel
// built without unix_diag), Verify accepts a socket file only in a
// directory no other user can change (pathtrust.Dir), and refuses
// otherwise, with the reason.
package sockfile
