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

    from ringattn.torch import MultiheadAttention, mha
    layer = MultiheadAttention(512, 8, batch_first=True, client=c)   # torch.nn.MultiheadAttention's
    layer.load_state_dict(torch_layer.state_dict())                  # parameters and state_dict keys
    y, _ = layer(x, x, x, attn_mask=causal_mask)                     # or is_causal=True
    y.sum().backward()                                               # exact grads from the cluster
    y = mha(x, wq, wk, wv, wo, heads=8, causal=True, client=c)       # the functional form

A layer's forward is one mha job; its backward one mha forward+backward job
(Client.mha_backward: the cluster runs the forward again, as no mha job
takes a saved forward), whose gradients of x, the weights and the biases
come back in their dtypes and devices.
"""

import numpy as np
import torch

from .client import Client

__all__ = ["attention", "AttentionFunction", "mha", "MHAFunction", "MultiheadAttention"]


def _like(g, t):
    """numpy g as a tensor of t's dtype and device."""
    return torch.from_numpy(np.ascontiguousarray(g)).to(device=t.device, dtype=t.dtype)


class AttentionFunction(torch.autograd.Function):
    """softmax(q·kᵀ·scale + mask)·v on a ringattn cluster."""

    @staticmethod
    def forward(ctx, q, k, v, causal, window, seqlens, scale, layout, client):
        o, lse = client.attention(q, k, v, causal=causal, window=window, seqlens=seqlens, scale=scale,
                                  layout=layout, return_lse=True)
        out = _like(o, q)
        ctx.save_for_backward(q, k, v)
        ctx.o, ctx.lse = o, lse  # float32 as the cluster returned them (not rounded to q's dtype)
        ctx.opts = dict(causal=causal, window=window, seqlens=seqlens, scale=scale, layout=layout)
        ctx.client = client
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = ctx.client.attention_backward(q, k, v, do, o=ctx.o, lse=ctx.lse, **ctx.opts)
        need = ctx.needs_input_grad
        return (_like(dq, q) if need[0] else None, _like(dk, k) if need[1] else None,
                _like(dv, v) if need[2] else None, None, None, None, None, None, None)


def attention(q, k, v, causal=False, window=None, seqlens=None, scale=None, layout="bhnd", client=None):
    """Exact attention of torch tensors on a ringattn cluster, differentiable.

    q [B,Hq,N,D], k and v [B,Hkv,Nk,D] (or [B,N,H,D] with layout="bnhd");
    client is a ringattn.Client (default: one for http://127.0.0.1:8080)."""
    if client is None:
        client = Client()
    return AttentionFunction.apply(q, k, v, causal, window, seqlens, scale, layout, client)


class MHAFunction(torch.autograd.Function):
    """torch.nn.MultiheadAttention's self-attention layer on a ringattn
    cluster: y = (softmax(q·kᵀ/sqrt(D) + mask)·v)·woᵀ + bo per head, with
    q = x·wqᵀ + bq and so for k, v."""

    @staticmethod
    def forward(ctx, x, wq, wk, wv, wo, bq, bk, bv, bo, heads, causal, opts, client):
        y = client.mha(x, wq, wk, wv, wo, heads=heads, causal=causal, bq=bq, bk=bk, bv=bv, bo=bo, **opts)
        ctx.save_for_backward(x, wq, wk, wv, wo, bq, bk, bv, bo)
        ctx.heads, ctx.causal, ctx.opts, ctx.client = heads, causal, opts, client
        return _like(y.reshape(x.shape), x)

    @staticmethod
    def backward(ctx, dy):
        inputs = ctx.saved_tensors
        x, wq, wk, wv, wo, bq, bk, bv, bo = inputs
        g = ctx.client.mha_backward(x, wq, wk, wv, wo, dy, heads=ctx.heads, causal=ctx.causal,
                                    bq=bq, bk=bk, bv=bv, bo=bo, **ctx.opts)
        grads = (g.dx, g.dwq, g.dwk, g.dwv, g.dwo, g.dbq, g.dbk, g.dbv, g.dbo)
        need = ctx.needs_input_grad
        out = tuple(_like(gr, t) if need[i] and t is not None and gr is not None else None
                    for i, (gr, t) in enumerate(zip(grads, inputs)))
        return out + (None, None, None, None)


def mha(x, wq, wk, wv, wo, heads, causal=False, bq=None, bk=None, bv=None, bo=None, client=None, **job):
    """A multi-head self-attention layer of torch tensors on a ringattn
    cluster, differentiable in x and every weight and bias.

    x [B,N,d_model] (or [N,d_model]); wq, wk, wv [H·D,d_model]; wo
    [d_model,H·D]; biases [H·D] ×3 and [d_model], all or none. job: the
    masking and job keywords of Client.mha (window, seqlens, scale, block,
    precision ...). Returns y of x's shape, dtype and device."""
    if client is None:
        client = Client()
    return MHAFunction.apply(x, wq, wk, wv, wo, bq, bk, bv, bo, int(heads), bool(causal), dict(job), client)


def _causal_mask(attn_mask, n):
    """Whether attn_mask is torch's causal mask for n tokens: bool True
    above the diagonal (torch.nn.Transformer.generate_square_subsequent_mask
    as bool), or float -inf above it and 0 elsewhere."""
    if tuple(attn_mask.shape) != (n, n):
        return False
    upper = torch.ones(n, n, dtype=torch.bool, device=attn_mask.device).triu(1)
    if attn_mask.dtype == torch.bool:
        return bool(torch.equal(attn_mask, upper))
    return bool(torch.all(attn_mask[upper] == float("-inf")) and torch.all(attn_mask[~upper] == 0))


class MultiheadAttention(torch.nn.Module):
    """torch.nn.MultiheadAttention for self-attention, computed on a
    ringattn cluster with exact gradients.

    The same parameters and state_dict keys (in_proj_weight [3E,E],
    in_proj_bias [3E], out_proj.weight, out_proj.bias) and initialisation,
    so a torch layer's state_dict loads into it and back. forward(query,
    key, value, ...) takes query [N,B,E] ([B,N,E] with batch_first, or
    unbatched [N,E]) with key and value the same tensor (or equal); masks:
    none, is_causal=True, or attn_mask equal to the causal mask (bool True
    or float -inf above the diagonal). Returns (attn_output, None): the
    cluster does not return attention weights. Dropout, add_bias_kv,
    add_zero_attn, kdim/vdim, key_padding_mask, need_weights=True and other
    masks raise NotImplementedError. client is a ringattn.Client (default:
    one for http://127.0.0.1:8080); job: Client.mha keywords (block,
    precision ...)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, client=None, **job):
        super().__init__()
        if dropout:
            raise NotImplementedError("ringattn MultiheadAttention: dropout %r: only 0.0" % (dropout,))
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("ringattn MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if (kdim is not None and kdim != embed_dim) or (vdim is not None and vdim != embed_dim):
            raise NotImplementedError("ringattn MultiheadAttention: kdim and vdim must be embed_dim (self-attention)")
        if embed_dim % num_heads != 0:
            raise ValueError("embed_dim %d must be divisible by num_heads %d" % (embed_dim, num_heads))
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = self.vdim = embed_dim
        self.dropout, self.batch_first = 0.0, batch_first
        self.in_proj_weight = torch.nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        if bias:
            self.in_proj_bias = torch.nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.client = Client() if client is None else client
        self.job = job
        self._reset_parameters()

    def _reset_parameters(self):
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.constant_(self.in_proj_bias, 0.0)
            torch.nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        for name, t in (("key", key), ("value", value)):
            if t is not None and t is not query and not (t.shape == query.shape and torch.equal(t, query)):
                raise NotImplementedError("ringattn MultiheadAttention: %s differs from query; only self-attention "
                                          "(query, key and value one tensor) is supported" % name)
        if key_padding_mask is not None:
            raise NotImplementedError("ringattn MultiheadAttention: key_padding_mask is not supported "
                                      "(pack documents with Client.mha's seqlens instead)")
        if need_weights:
            raise NotImplementedError("ringattn MultiheadAttention: need_weights=True: the cluster does not "
                                      "return attention weights; pass need_weights=False")
        if query.dim() not in (2, 3):
            raise ValueError("query of shape %s: want [N,B,E], [B,N,E] with batch_first, or [N,E]" % (tuple(query.shape),))
        x = query.transpose(0, 1) if query.dim() == 3 and not self.batch_first else query
        causal = bool(is_causal)
        if attn_mask is not None:
            if not _causal_mask(attn_mask, x.shape[-2]):
                raise NotImplementedError("ringattn MultiheadAttention: attn_mask must be the causal mask "
                                          "(True or -inf above the diagonal) or None")
            causal = True
        e = self.embed_dim
        wq, wk, wv = self.in_proj_weight[:e], self.in_proj_weight[e:2 * e], self.in_proj_weight[2 * e:]
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias[:e], self.in_proj_bias[e:2 * e], self.in_proj_bias[2 * e:]
        y = mha(x, wq, wk, wv, self.out_proj.weight, self.num_heads, causal=causal, bq=bq, bk=bk, bv=bv,
                bo=self.out_proj.bias, client=self.client, **self.job)
        if query.dim() == 3 and not self.batch_first:
            y = y.transpose(0, 1)
        return y, None
