// Package takeover hands a running instance's sockets to a new, separate
// instance (baton run --takeover) without closing anything.
//
// The new instance asks over the old one's control socket; the old one
// passes its listening sockets and its control socket with SCM_RIGHTS
// (internal/fdpass), each batch acknowledged, and keeps its copies. The
// new instance checks every socket against its own listeners (Listeners),
// starts its workers, and only when they are ready commits: the old
// instance then drains and exits. Until then either side may give up, and
// the old instance carries on unchanged. WindowFor decides how long each
// side waits, so that the new one always gives up before the old one
// stops waiting and both never serve.
//
// Re-executing baton in place (baton upgrade) is package upgrade's.
package takeover
