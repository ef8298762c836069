// Package watch tells when files change and have stayed unchanged for a
// settle time: baton run --watch reloads when its binary, its config or
// a `current` symlink changes (pm2 --watch, uWSGI's touch-reload).
//
// A Watcher watches the directory that holds each path with inotify(7),
// not the file itself: a file replaced by rename (mv, an atomic deploy)
// or a symlink swung (ln -sfn) is a new inode that a watch on the old
// file would never report. It also watches the directory of the file a
// symlink resolves to, so that editing the target in place is seen. An
// event is only a hint: once no event came for the settle time, the
// Watcher compares each path's stamp (device, inode, size, mtime, mode,
// symlink target, and the same of the file it resolves to) with the one
// it last reported, and reports the paths whose stamp changed, with what
// changed. Events for other names in those directories are ignored, so a
// busy log file beside the config neither delays nor causes a report.
//
// Reports are coalesced (a burst of writes is one report) and come at
// most once per settle time. A path that is gone (between an rm and a
// new file) is not reported until it is back.
//
// The paths are given by root, but their directories may be writable by
// others: whoever can write a watched directory can make baton reload
// (never more than once per settle time), and can keep changing a file
// so that it never settles. Watch paths in directories only root can
// write.
package watch
