//go:build race

package kernels

import "runtime"

const raceEnabled = true

// raceTile tells the race detector about the accesses of an assembly
// kernel: it reads (or reads and writes) every element of the rows×cols
// tile of x with leading dimension ld, and nothing between the rows.
func raceTile(x []float32, rows, cols, ld int, write bool) {
	var sum float32
	for i := 0; i < rows; i++ {
		r := x[i*ld : i*ld+cols]
		for j := range r {
			sum += r[j]
			if write {
				r[j] = r[j]
			}
		}
	}
	runtime.KeepAlive(sum)
}
