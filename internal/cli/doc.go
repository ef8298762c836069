// Package cli is baton's command line: run, reload, status, stop and demo.
// cmd/baton only calls Main.
//
// Exit codes: 0 success; 1 the operation failed (an address in use, a
// failed reload, no baton answering); 2 a usage error (a bad flag, an
// invalid listener address, a missing or unknown command), reported before
// anything starts.
package cli
