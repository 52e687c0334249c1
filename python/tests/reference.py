"""float64 numpy references, from the definitions (DESIGN §2)."""

import numpy as np


def visible(n, nk, causal=False, window=None, seqlens=None):
    """[n, nk] bool: query i sees key j (bottom-right aligned)."""
    i = np.arange(n)[:, None] + (nk - n)
    j = np.arange(nk)[None, :]
    m = np.ones((n, nk), dtype=bool)
    if causal:
        m &= j <= i
    if window is not None:
        left, right = window
        if left is not None and left >= 0:
            m &= j >= i - left
        if right is not None and right >= 0:
            m &= j <= i + right
    if seqlens is not None:
        dq = np.repeat(np.arange(len(seqlens)), seqlens)
        dk = dq
        m &= dq[:, None] == dk[None, :]
    return m


def attention(q, k, v, causal=False, window=None, seqlens=None, scale=None):
    """o [B,Hq,N,D], lse [B,Hq,N] in float64; rows seeing no key: 0 and -inf."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    b, hq, n, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    k = np.repeat(k, g, axis=1)
    v = np.repeat(v, g, axis=1)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = np.einsum("bhnd,bhmd->bhnm", q, k) * scale
    m = visible(n, nk, causal, window, seqlens)
    s = np.where(m, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    l = p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.where(l > 0, np.einsum("bhnm,bhmd->bhnd", p, v) / np.where(l > 0, l, 1), 0.0)
        lse = np.where(l[..., 0] > 0, np.log(np.where(l[..., 0] > 0, l[..., 0], 1)) + mx[..., 0], -np.inf)
    return o, lse


def attention_backward(q, k, v, do, causal=False, window=None, seqlens=None, scale=None):
    """dq [B,Hq,N,D], dk, dv [B,Hkv,Nk,D] of sum(o·do) in float64, from the
    definition: p = softmax(s), dp = do·vᵀ, ds = p·(dp - rowsum(do·o)),
    dq = scale·ds·k, dk = scale·dsᵀ·q, dv = pᵀ·do; a GQA group's heads sum
    into their shared k, v head. Rows seeing no key contribute nothing."""
    q, k, v, do = (np.asarray(a, dtype=np.float64) for a in (q, k, v, do))
    b, hq, n, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = np.einsum("bhnd,bhmd->bhnm", q, kr) * scale
    m = visible(n, nk, causal, window, seqlens)
    s = np.where(m, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.exp(s - mx)
    l = p.sum(-1, keepdims=True)
    p = p / np.where(l > 0, l, 1)
    o = np.einsum("bhnm,bhmd->bhnd", p, vr)
    dp = np.einsum("bhnd,bhmd->bhnm", do, vr)
    ds = p * (dp - np.sum(do * o, axis=-1, keepdims=True))
    dq = scale * np.einsum("bhnm,bhmd->bhnd", ds, kr)
    dk = scale * np.einsum("bhnm,bhnd->bhmd", ds, q)
    dv = np.einsum("bhnm,bhnd->bhmd", p, do)
    dk = dk.reshape(b, hkv, g, nk, d).sum(2)
    dv = dv.reshape(b, hkv, g, nk, d).sum(2)
    return dq, dk, dv


def _mha_parts(x, wq, wk, wv, heads, bq, bk, bv):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    b, n, dm = x.shape
    hd = np.asarray(wq).shape[0]
    d = hd // heads

    def proj(w, bias):
        y = x @ np.asarray(w, dtype=np.float64).T
        if bias is not None:
            y = y + np.asarray(bias, dtype=np.float64)
        return y.reshape(b, n, heads, d).transpose(0, 2, 1, 3)

    return x, proj(wq, bq), proj(wk, bk), proj(wv, bv)


def _cat(h):
    """[B,H,N,D] -> [B,N,H·D]"""
    b, hh, n, d = h.shape
    return h.transpose(0, 2, 1, 3).reshape(b, n, hh * d)


def mha(x, wq, wk, wv, wo, heads, causal=False, bq=None, bk=None, bv=None, bo=None, **mask):
    """torch.nn.MultiheadAttention's forward (self-attention), float64:
    y [B,N,d_model]; mask: window, seqlens, scale as attention()."""
    _, q, k, v = _mha_parts(x, wq, wk, wv, heads, bq, bk, bv)
    o, _ = attention(q, k, v, causal=causal, **mask)
    y = _cat(o) @ np.asarray(wo, dtype=np.float64).T
    return y if bo is None else y + np.asarray(bo, dtype=np.float64)


def mha_backward(x, wq, wk, wv, wo, dy, heads, causal=False, bq=None, bk=None, bv=None, bo=None, **mask):
    """Gradients of sum(y·dy) for y = mha(...), float64, from the chain
    rule: dwo = Σ dyᵀ·cat(o), dbo = Σ dy, do = split(dy·wo), (dq, dk, dv) =
    attention_backward(do), dwq = Σ cat(dq)ᵀ·x, dbq = Σ cat(dq) (so for k,
    v), dx = cat(dq)·wq + cat(dk)·wk + cat(dv)·wv. Returns a dict of dx
    (x's shape), dwq, dwk, dwv, dwo and, with biases, dbq, dbk, dbv, dbo."""
    xs = np.shape(x)
    x, q, k, v = _mha_parts(x, wq, wk, wv, heads, bq, bk, bv)
    dy = np.asarray(dy, dtype=np.float64).reshape(x.shape)
    wo = np.asarray(wo, dtype=np.float64)
    o, _ = attention(q, k, v, causal=causal, **mask)
    b, hh, n, d = q.shape
    g = {"dwo": np.einsum("bnm,bnh->mh", dy, _cat(o))}
    do = (dy @ wo).reshape(b, n, hh, d).transpose(0, 2, 1, 3)
    dq, dk, dv = (_cat(t) for t in attention_backward(q, k, v, do, causal=causal, **mask))
    dx = np.zeros_like(x)
    for name, dp, w in (("q", dq, wq), ("k", dk, wk), ("v", dv, wv)):
        g["dw" + name] = np.einsum("bnh,bnm->hm", dp, x)
        dx += dp @ np.asarray(w, dtype=np.float64)
        if bq is not None:
            g["db" + name] = dp.sum((0, 1))
    if bo is not None:
        g["dbo"] = dy.sum((0, 1))
    g["dx"] = dx.reshape(xs)
    return g
