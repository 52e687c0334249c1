//go:build noasm || !gc || !amd64

package kernels

func registerArch() {}
