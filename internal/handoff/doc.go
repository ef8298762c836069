// Package handoff moves established connections from a draining worker,
// through baton, to a worker of the next generation: baton's fd store
// and both sides of the protocol.
//
// Both sides speak on baton's worker socket (BATON_SOCKET), which answers
// one JSON request line per connection (internal/control); the two
// methods here keep the connection afterwards and move descriptors on it
// with internal/fdpass, each connection a descriptor whose fdpass name is
// its listener, kind "conn" and meta its state.
//
//   - handoff: baton answers with a Grant (how many connections and bytes
//     the next transfer may carry); the worker sends a transfer, baton
//     acknowledges it (from then on baton holds those connections and the
//     worker closes its copies) and answers with the next Grant, or a
//     refusal. Store.Receive is baton's side, Sender the worker's.
//   - adopt: baton answers with a Subscription, then pushes transfers
//     whenever connections wait and the worker may adopt; the worker
//     acknowledges each. Store.Adopt is baton's side, Adopter the
//     worker's.
//
// The Store keeps each connection with its listener name, state, source
// pid and deadline; it spreads them over the subscribed workers the
// supervisor allows (SetWorkers), never back to their source; it closes
// what nobody adopted by the deadline; it counts stored, adopted,
// expired, refused and unconfirmed connections. Nothing is closed before
// the receiving worker acknowledged it, except at the deadline. The store
// grants room from baton's RLIMIT_NOFILE (RaiseNOFILE, CountFDs), keeping
// Reserve descriptors free, so a full store refuses with a clear error
// instead of failing its process.
//
// docs/handoff.md has the byte-level protocol and a Python peer.
package handoff
