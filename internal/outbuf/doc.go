// Package outbuf writes baton's output (its own log and its workers'
// prefixed lines) without ever making the writer wait.
//
// baton's stdout and stderr are often pipes: a terminal, `| tee`, a
// container runtime's log driver, the journal. When whatever reads them
// stops reading (a stopped process, a full disk behind tee, a log driver in
// blocking mode), a plain write(2) blocks once the pipe is full, and
// with it the goroutine that logged: baton's state machine, a status
// request, a reload. A Writer instead takes each write into a buffer
// bounded in bytes (DefaultLimit, 1 MiB) and returns at once; one
// goroutine per Writer writes the buffer to the file. When the buffer is
// full, writes are dropped whole and counted, and once writing works again
// the Writer first writes one line (the notice) saying how many lines were
// lost and since when. Stats tells how much waits and how much was lost,
// for `baton status`.
//
// The goroutine that writes may block for as long as the reader sleeps;
// it holds nothing but the batch it writes: no lock, and no caller waits
// for it. Close flushes for a bounded time and then gives up, so that a
// stopped reader cannot keep baton from exiting.
package outbuf
