//go:build !noasm && gc && !linux

package kernels

// amxPermit: only Linux is known here to grant the AMX tile state; other
// systems keep the bfloat16 forward pass on the float32 kernels.
func amxPermit() bool { return false }

func xgetbv0() uint64
