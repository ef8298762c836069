// Package statuspage serves baton's status page: the listeners with their
// accept queues against the maximum, connections by state, each worker,
// the history of reloads and upgrades, warnings with their fixes and the
// handoff counters, in a browser. It is served on the metrics listener
// (internal/metrics), with its access rules and connection bound, and it
// is read-only: every route is GET (HEAD), and none changes anything.
//
// The page is rendered on the server from a status snapshot, so that it
// shows the numbers without JavaScript; its script (embedded, like the
// style sheet: nothing comes from elsewhere) then polls /status.json,
// which serves exactly what `baton status --json` prints, from the same
// snapshot function the control socket answers with. Whatever workers
// put in the status (their command, STATUS= lines, warnings about them)
// is untrusted: the template escapes it, and the script only sets
// textContent. docs/status.md describes the page.
package statuspage
