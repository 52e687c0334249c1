//go:build !noasm && gc

package kernels

import (
	"syscall"
	"unsafe"
)

// amxPermit asks Linux for the AMX tile data state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)), without which the
// first tile instruction raises SIGILL, and checks that it was granted
// (ARCH_GET_XCOMP_PERM has bit 18) and that XCR0 enables XTILECFG and
// XTILEDATA (bits 17, 18). Any failure: false, and the bfloat16 forward
// pass stays on the float32 kernels.
func amxPermit() bool {
	const (
		archGetXcompPerm  = 0x1022
		archReqXcompPerm  = 0x1023
		xfeatureXtiledata = 18
	)
	if _, _, e := syscall.RawSyscall(syscall.SYS_ARCH_PRCTL, archReqXcompPerm, xfeatureXtiledata, 0); e != 0 {
		return false
	}
	var perm uint64
	if _, _, e := syscall.RawSyscall(syscall.SYS_ARCH_PRCTL, archGetXcompPerm, uintptr(unsafe.Pointer(&perm)), 0); e != 0 {
		return false
	}
	const tile = 1<<17 | 1<<18
	return perm&tile == tile && xgetbv0()&tile == tile
}

// xgetbv0 returns XCR0 (XGETBV with ECX = 0).
func xgetbv0() uint64
