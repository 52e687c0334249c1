//go:build !linux

package memtune

// EnableHugePages does nothing on this platform.
func EnableHugePages() string { return "unsupported on this platform" }
