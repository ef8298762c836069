// Package pathtrust decides whether a path is safe for baton to act on:
// to read a configuration from, to execute, or to create a socket in.
//
// baton often runs as root. A file that another user can change, or that
// sits in a directory another user can write (and so replace the file, or
// a directory on the way to it, with a symlink), lets that user decide what
// root reads or runs. The rule is OpenSSH's StrictModes, applied from the
// file up to /: every directory on the way and the file itself must be
// owned by root or by baton's own user, and must not be writable by group
// or others. A directory writable by others with the sticky bit set (/tmp)
// is accepted on the way: there nobody but an entry's owner may replace
// it.
//
// The checks walk the path as the kernel would, one component at a time
// with lstat: a symlink counts where it sits (the directory that holds it
// decides who can replace it), and the way to its target is checked in
// turn. They read the tree as it is now; they make a later swap
// impossible rather than detect one, because after them only root and
// baton's user can change anything on the path.
package pathtrust
