//go:build linux && arm64

package capture

import "golang.org/x/sys/unix"

// The filter traps native bind(2) calls only. On arm64 a 32-bit (AArch32)
// program's calls carry AUDIT_ARCH_ARM instead.
const (
	// auditArch is the architecture of native system calls.
	auditArch = unix.AUDIT_ARCH_AARCH64
	// sysBind is __NR_bind in include/uapi/asm-generic/unistd.h.
	sysBind uint32 = 200
)
