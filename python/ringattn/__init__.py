"""ringattn: exact attention over long sequences on a ringattn cluster.

A small client of the cluster's HTTP job API (docs/openapi.yaml), needing
only the standard library and numpy::

    import ringattn
    c = ringattn.Client("http://127.0.0.1:8080", token=None)
    o = c.attention(q, k, v, causal=True)            # numpy [B,H,N,D]
    o, lse = c.attention(q, k, v, return_lse=True)
    y = c.mha(x, wq, wk, wv, wo, heads=8, causal=True)
    g = c.mha_backward(x, wq, wk, wv, wo, dy, heads=8, causal=True)  # g.dx, g.dwq, ...
    job = c.submit(q, k, v, causal=True); job.wait(progress=True); job.result()

``ringattn.torch.attention`` and ``ringattn.torch.mha`` are
torch.autograd.Functions over the same client, and
``ringattn.torch.MultiheadAttention`` a drop-in for (self-attention)
torch.nn.MultiheadAttention (torch optional).
"""

from .errors import (
    RingattnError,
    APIError,
    InvalidArgument,
    NotFound,
    Conflict,
    TooLarge,
    Busy,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    JobFailed,
    JobCanceled,
)
from .client import Client, Job, MHAGrads

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Job",
    "MHAGrads",
    "RingattnError",
    "APIError",
    "InvalidArgument",
    "NotFound",
    "Conflict",
    "TooLarge",
    "Busy",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "JobFailed",
    "JobCanceled",
]
