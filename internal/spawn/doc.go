// Package spawn starts worker processes and reaps every child.
//
// Three Linux facts shape it:
//
//   - The parent-death signal (PR_SET_PDEATHSIG) fires when the thread that
//     forked the child exits, not when the process does. All forks therefore
//     happen on one goroutine locked to its OS thread for the life of the
//     process.
//   - Go cannot run code between fork and exec, and LISTEN_PID must equal
//     the worker's own pid. A worker is started as a re-exec of baton (the
//     shim) that sets LISTEN_PID to getpid() and then execve's the real
//     command, which keeps the pid. Call RunShim first thing in main.
//   - Descriptors are handed over by number (syscall.StartProcess), never as
//     *os.File: os.File.Fd would switch a shared socket to blocking mode for
//     every process holding it.
//
// One reaper collects every exited child with wait4(-1), including orphans
// re-parented to baton: it makes itself a child subreaper, so what a worker
// leaves running when it exits stays within baton's reach (and it is PID 1
// in a container). Processes are signalled through pidfds, so a signal
// never reaches a recycled pid; Processes and Open find and hold the ones
// baton did not start (a worker's leftovers), checked by start time.
package spawn
