// Package cli is baton's command line: run, check, reload, scale,
// upgrade, status, top, stop, demo, version and help. cmd/baton only
// calls Main.
//
// The command line parses, calls and prints: `baton run` reads and checks
// the configuration and hands it to internal/instance, which runs baton;
// the client commands talk to a running baton through internal/api's
// typed client, and print its replies. Nothing here decides what baton
// does.
//
// Exit codes: 0 success; 1 the operation failed (an address in use, a
// failed reload, no baton answering); 2 a usage error (a bad flag, an
// invalid listener address, a missing or unknown command), reported before
// anything starts. A usage error names what was wrong, why, and the fix:
// the near command or flag for one that does not exist, the form of the
// value for one that is not.
package cli
