"""PyTorch autograd over a ringattn cluster (torch is optional elsewhere).

    from ringattn.torch import attention
    o = attention(q, k, v, causal=True, client=c)   # q, k, v torch tensors
    o.sum().backward()                              # runs the backward on the cluster

The forward runs on the cluster (one attention job returning o and lse)
and returns a tensor of q's dtype and device. It saves q, k, v, o and lse,
so the backward is one backward job on the cluster (Client.attention_backward
given o and lse: no second forward). Gradients come back in the inputs'
dtypes and devices. A cluster without backward jobs (GET /v1/info says
backward: false) raises ringattn.Unimplemented: gradients are never
approximated locally.
"""

import numpy as np
import torch

from .client import Client

__all__ = ["attention", "AttentionFunction"]


class AttentionFunction(torch.autograd.Function):
    """softmax(q·kᵀ·scale + mask)·v on a ringattn cluster."""

    @staticmethod
    def forward(ctx, q, k, v, causal, window, seqlens, scale, layout, client):
        o, lse = client.attention(q, k, v, causal=causal, window=window, seqlens=seqlens, scale=scale,
                                  layout=layout, return_lse=True)
        out = torch.from_numpy(np.ascontiguousarray(o)).to(device=q.device, dtype=q.dtype)
        ctx.save_for_backward(q, k, v)
        ctx.o, ctx.lse = o, lse  # float32 as the cluster returned them (not rounded to q's dtype)
        ctx.opts = dict(causal=causal, window=window, seqlens=seqlens, scale=scale, layout=layout)
        ctx.client = client
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = ctx.client.attention_backward(q, k, v, do, o=ctx.o, lse=ctx.lse, **ctx.opts)

        def like(g, t):
            return torch.from_numpy(np.ascontiguousarray(g)).to(device=t.device, dtype=t.dtype)

        need = ctx.needs_input_grad
        return (like(dq, q) if need[0] else None, like(dk, k) if need[1] else None,
                like(dv, v) if need[2] else None, None, None, None, None, None, None)


def attention(q, k, v, causal=False, window=None, seqlens=None, scale=None, layout="bhnd", client=None):
    """Exact attention of torch tensors on a ringattn cluster, differentiable.

    q [B,Hq,N,D], k and v [B,Hkv,Nk,D] (or [B,N,H,D] with layout="bnhd");
    client is a ringattn.Client (default: one for http://127.0.0.1:8080)."""
    if client is None:
        client = Client()
    return AttentionFunction.apply(q, k, v, causal, window, seqlens, scale, layout, client)
