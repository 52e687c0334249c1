package kernels_test

var benchLens = []int{4096}
