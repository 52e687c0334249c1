#!/usr/bin/python3
"""The numpy baseline for `ringattn bench kernel`: attention as most people write it.

For each head, the scores S = Q·Kᵀ·scale are materialised as an N×N matrix (with
-inf above the diagonal for --causal), softmaxed row by row and multiplied by V,
all in float32 through numpy's BLAS (OpenBLAS on Debian).

One line per sequence length: the median wall time of --runs runs and GFLOP/s,
counting 4·H·N·N·D FLOPs (half of that for --causal), the same convention as
ringattn's benchmarks, so the two can be compared in one run on one machine.

Setup (Debian): apt-get install -y python3-numpy libopenblas0-pthread
Run it with as many BLAS threads as the compared run has cores, and let OpenBLAS
pick its best kernel (some machines here set OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for
old builds; unset them for this one command only):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 \\
        /usr/bin/python3 scripts/bench/numpy_attention.py --heads 8 --dim 128 --seq 4096 16384
"""
import argparse
import time

import numpy as np


def naive_attention(q, k, v, causal):
    n, d = q.shape
    scores = (q @ k.T) * np.float32(1.0 / np.sqrt(d))
    if causal:
        scores[np.triu_indices(n, 1, m=k.shape[0])] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    for n in args.seq:
        q, k, v = (rng.standard_normal((args.heads, n, args.dim), dtype=np.float32) for _ in range(3))
        took = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            for h in range(args.heads):
                naive_attention(q[h], k[h], v[h], args.causal)
            took.append(time.perf_counter() - t0)
        median = sorted(took)[len(took) // 2]
        flops = 4.0 * args.heads * n * n * args.dim * (0.5 if args.causal else 1.0)
        print(f"numpy-naive heads={args.heads} seq={n} dim={args.dim} causal={args.causal} "
              f"time_s={median:.4f} gflops={flops / median / 1e9:.1f}")


if __name__ == "__main__":
    main()
