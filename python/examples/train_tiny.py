"""Train a tiny causal language model whose attention runs on a ringattn cluster.

    ringattn dev &                       # serves http://127.0.0.1:8080
    PYTHONPATH=python python3 python/examples/train_tiny.py [--url URL] [--token T]

Step 0 checks the cluster's forward and gradients against torch's own
attention (float32, same parameters, same batch); then it trains with the
cluster's gradients (each step: one forward job, one backward job given the
forward's o and lse) and checks that the loss falls. A cluster whose GET
/v1/info says backward: false has no backward jobs: it stops with exit code 3
after checking the forward pass.
"""

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import ringattn
from ringattn.torch import attention as ring_attention


def torch_attention(q, k, v, causal=True):
    """torch's own attention, float32: the reference."""
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


class TinyLM(nn.Module):
    def __init__(self, vocab=16, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 512, dim) * 0.5)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, attn):
        b, n = tokens.shape
        x = self.emb(tokens) + self.pos[:, :n]
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).unbind(2)   # [B,N,H,D] each
        o = attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B,H,N,D]
        x = x + self.out(o.transpose(1, 2).reshape(b, n, -1))
        return self.head(x)


def batch(gen, b=4, n=64, vocab=16, lag=3):
    """Random tokens; the target at i is the token at i - lag (0 before): only
    attention to an earlier position can predict it."""
    x = torch.randint(1, vocab, (b, n), generator=gen)
    y = torch.zeros_like(x)
    y[:, lag:] = x[:, :-lag]
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--token", default=None)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    c = ringattn.Client(args.url, token=args.token)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = TinyLM()
    on_cluster = lambda q, k, v: ring_attention(q, k, v, causal=True, client=c)  # noqa: E731

    # Step 0: the cluster's forward, then its gradients, against torch's attention.
    x, y = batch(gen)
    ref_logits = model(x, torch_attention)
    logits = model(x, on_cluster)
    fwd_err = (logits - ref_logits).abs().max().item()
    print("forward: max |logits - torch| = %.3g" % fwd_err)
    if fwd_err > 1e-4 * max(1.0, ref_logits.abs().max().item()):
        sys.exit("forward differs from torch's attention beyond float32 tolerance")
    if not c.info().get("backward"):
        print("this cluster has no backward job kind yet (GET /v1/info: backward false): "
              "gradients cannot run on it, so training stops here", file=sys.stderr)
        sys.exit(3)
    ref_loss = F.cross_entropy(ref_logits.flatten(0, 1), y.flatten())
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    worst = 0.0
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        err = (g - r).abs().max().item() / max(1e-6, r.abs().max().item())
        worst = max(worst, err)
        print("grad %-12s max relative |cluster - torch| = %.3g" % (name, err))
    if worst > 1e-3:
        sys.exit("gradients differ from torch's beyond float32 tolerance")

    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    first = None
    for step in range(args.steps):
        x, y = batch(gen)
        loss = F.cross_entropy(model(x, on_cluster).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        if step % 10 == 0 or step == args.steps - 1:
            print("step %3d  loss %.4f" % (step, loss.item()))
    if not loss.item() < 0.7 * first:
        sys.exit("loss did not fall: %.4f -> %.4f" % (first, loss.item()))
    print("loss %.4f -> %.4f" % (first, loss.item()))


if __name__ == "__main__":
    main()
