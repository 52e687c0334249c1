//go:build !noasm && gc

package kernels

// registerArch registers the SIMD implementations this CPU supports.
func registerArch() {}
