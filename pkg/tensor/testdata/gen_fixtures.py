#!/usr/bin/env python3
"""Writes the .npy fixtures of pkg/tensor's tests with numpy.

Run from this directory: /usr/bin/python3 gen_fixtures.py (numpy 1.24 wrote
the committed files). Values follow formulas the Go tests recompute:
  f(n)       = (arange(n) - 5) * 0.375           exact in float16/32/64
  f64(n)     = (arange(n) - 5) * 0.375 / 3       float64, rounded on read
"""
import numpy as np


def f(shape, dtype):
    n = int(np.prod(shape))
    return ((np.arange(n, dtype=np.float64) - 5) * 0.375).astype(dtype).reshape(shape)


def f64(shape, dtype="<f8"):
    n = int(np.prod(shape))
    return ((np.arange(n, dtype=np.float64) - 5) * 0.375 / 3).astype(dtype).reshape(shape)


def save(name, a):
    np.save(name, a, allow_pickle=False)


save("f32_scalar.npy", np.float32(-1.875).reshape(()))
save("f32_1d.npy", f((7,), "<f4"))
save("f32_2d.npy", f((3, 4), "<f4"))
save("f32_3d.npy", f((2, 3, 4), "<f4"))
save("f32_4d.npy", f((2, 2, 3, 4), "<f4"))
save("f32_empty.npy", f((0, 4), "<f4"))
save("f32be_2d.npy", f((3, 4), ">f4"))
save("f16_3d.npy", f((2, 3, 4), "<f2"))
save("f16be_2d.npy", f((2, 3), ">f2"))
save("f64_2d.npy", f64((3, 5)))
save("f64be_1d.npy", f64((5,), ">f8"))
# float16 specials: zeros, the smallest subnormal and normal, the largest
# finite, infinities, NaN.
save("f16_special.npy", np.array(
    [0.0, -0.0, 2.0**-24, -(2.0**-24), 2.0**-14, 65504.0, np.inf, -np.inf, np.nan, 1.0 / 3],
    dtype="<f2"))
for v in [(2, 0), (3, 0)]:
    with open("f32_v%d.npy" % v[0], "wb") as fp:
        np.lib.format.write_array(fp, f((2, 3), "<f4"), version=v)
# Rejected: Fortran order, integers, a structured dtype, complex.
save("f32_fortran.npy", np.asfortranarray(f((3, 4), "<f4")))
save("i32_2d.npy", np.arange(6, dtype="<i4").reshape(2, 3))
save("structured.npy", np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")]))
save("c64_1d.npy", np.zeros(3, dtype="<c8"))
