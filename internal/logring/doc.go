// Package logring keeps the recent output of baton's workers and baton's
// own log records in memory, for `baton logs`: so that what a worker
// printed before it crashed can still be read after its exit, without a
// journal or a log file.
//
// A Ring is bounded in bytes (DefaultLimit, 1 MiB): each line costs its
// text plus LineOverhead bytes of bookkeeping, and the oldest lines are
// evicted to make room for a new one. A line longer than MaxLine (4 KiB)
// is cut there and marked Truncated. Adding a line takes one short lock
// and never waits for a reader.
//
// A Follower gets every new line that matches its Filter through a queue
// of its own, bounded in bytes (FollowerLimit): a follower that reads
// slowly or not at all loses lines, counted and reported to it once it
// reads again, and never slows down whoever adds them (the supervisor's
// loop logs; its workers' output copiers add lines).
package logring
