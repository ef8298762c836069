//go:build linux && !amd64 && !arm64

package capture

// Bind capture is built and tested for amd64 and arm64 only: each
// architecture needs its audit arch and bind(2) number in the filter.
// auditArch 0 makes Supported, InstallAndSend and Serve refuse to start,
// so the filter below is never installed.
const (
	auditArch        = 0
	sysBind   uint32 = 0
)
