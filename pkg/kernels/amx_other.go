//go:build noasm || !gc || !amd64

package kernels

import "context"

// amxImpl is nil where AMX is not built: the bfloat16 forward pass runs on
// the float32 kernels.
var amxImpl *impl

func (s *State) foldAMX(context.Context, *Params, []float32, int, int, []KV) error {
	panic("kernels: AMX is not built for this platform")
}
