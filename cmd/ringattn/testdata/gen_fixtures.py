#!/usr/bin/python3
"""Fixtures for the CLI tests: inputs written by numpy, and the expected
outputs computed by numpy in float64 from the definitions (attention with a
bottom-right-aligned causal mask; torch.nn.MultiheadAttention's formula,
y = x·Wᵀ + b per projection, heads split evenly, scale 1/sqrt(head_dim)).
Run from this directory: /usr/bin/python3 gen_fixtures.py
"""
import numpy as np

rng = np.random.default_rng(42)

def attention(q, k, v, causal):
    # q [B,Hq,N,D], k,v [B,Hkv,Nk,D], float64
    b, hq, n, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    o = np.zeros((b, hq, n, d))
    lse = np.zeros((b, hq, n))
    for bi in range(b):
        for h in range(hq):
            s = q[bi, h] @ k[bi, h // g].T / np.sqrt(d)
            if causal:
                i = np.arange(n)[:, None]
                j = np.arange(nk)[None, :]
                s = np.where(j <= i + nk - n, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            e = np.exp(s - m)
            o[bi, h] = (e / e.sum(axis=1, keepdims=True)) @ v[bi, h // g]
            lse[bi, h] = (m + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
    return o, lse

# GQA cross-attention, ragged lengths, causal (bottom-right aligned).
q = rng.standard_normal((2, 4, 37, 16), dtype=np.float32)
k = rng.standard_normal((2, 2, 53, 16), dtype=np.float32)
v = rng.standard_normal((2, 2, 53, 16), dtype=np.float32)
o, lse = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), True)
np.save("attn_q.npy", q); np.save("attn_k.npy", k); np.save("attn_v.npy", v)
np.save("attn_o_ref.npy", o); np.save("attn_lse_ref.npy", lse)

# Rank-2 inputs in float64 (converted on read), no mask.
q2 = rng.standard_normal((29, 8)); k2 = rng.standard_normal((29, 8)); v2 = rng.standard_normal((29, 8))
o2, _ = attention(q2[None, None].astype(np.float32).astype(np.float64), k2[None, None].astype(np.float32).astype(np.float64),
                  v2[None, None].astype(np.float32).astype(np.float64), False)
np.save("small_q.npy", q2); np.save("small_k.npy", k2); np.save("small_v.npy", v2)
np.save("small_o_ref.npy", o2[0, 0])

# MHA layer, torch conventions, batch_first, with biases, causal.
B, N, E, H = 2, 45, 24, 3
x = rng.standard_normal((B, N, E), dtype=np.float32)
w = {n: (rng.standard_normal((E, E)) / np.sqrt(E)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
bias = {n: (0.1 * rng.standard_normal(E)).astype(np.float32) for n in ("bq", "bk", "bv", "bo")}
def split(t):  # [B,N,E] -> [B,H,N,E/H]
    return t.reshape(B, N, H, E // H).transpose(0, 2, 1, 3)
x64 = x.astype(np.float64)
qm = split(x64 @ w["wq"].T.astype(np.float64) + bias["bq"])
km = split(x64 @ w["wk"].T.astype(np.float64) + bias["bk"])
vm = split(x64 @ w["wv"].T.astype(np.float64) + bias["bv"])
om, _ = attention(qm, km, vm, True)
y = om.transpose(0, 2, 1, 3).reshape(B, N, E) @ w["wo"].T.astype(np.float64) + bias["bo"]
np.save("mha_x.npy", x)
for n, a in {**w, **bias}.items():
    np.save(f"mha_{n}.npy", a)
np.save("mha_y_ref.npy", y)

# A NaN input and a truncated file, for the error tests.
bad = q.copy(); bad[1, 2, 3, 4] = np.nan
np.save("nan_q.npy", bad)
with open("attn_q.npy", "rb") as f:
    data = f.read()
with open("truncated_q.npy", "wb") as f:
    f.write(data[: len(data) // 2])
