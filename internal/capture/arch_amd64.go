//go:build linux && amd64

package capture

import "golang.org/x/sys/unix"

// The filter traps native bind(2) calls only. On amd64 the kernel's
// seccomp_data.arch is AUDIT_ARCH_X86_64 for 64-bit and x32 calls, and
// AUDIT_ARCH_I386 for 32-bit (int 0x80) calls.
const (
	// auditArch is the architecture of native system calls.
	auditArch = unix.AUDIT_ARCH_X86_64
	// sysBind is bind(2) in arch/x86/entry/syscalls/syscall_64.tbl. An
	// x32 bind has __X32_SYSCALL_BIT (0x40000000) set and does not match.
	sysBind uint32 = 49
)
