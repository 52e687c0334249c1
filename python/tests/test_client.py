"""The Python client against a real `ringattn dev` process.

Run: PYTHONPATH=python python3 -m unittest discover -s python/tests -v
(torch tests run when torch is installed; RINGATTN_REQUIRE_TORCH=1, as CI
sets, makes a missing torch a failure).
"""

import io
import os
import sys
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import devserver  # noqa: E402
import reference  # noqa: E402

import ringattn  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional, unless CI requires it
    torch = None
    if os.environ.get("RINGATTN_REQUIRE_TORCH") == "1":
        raise

DEV = None


def setUpModule():
    global DEV
    DEV = devserver.DevServer(workers=2)


def tearDownModule():
    if DEV is not None:
        DEV.stop()


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def tol(ref):
    return 1e-4 * max(1.0, float(np.max(np.abs(ref[np.isfinite(ref)]))) if np.isfinite(ref).any() else 1.0)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.c = ringattn.Client(DEV.url, token=DEV.token)

    def assertClose(self, got, ref, what):
        self.assertEqual(got.shape, ref.shape, what)
        self.assertEqual(got.dtype, np.float32, what)
        fin = np.isfinite(ref)
        self.assertTrue(np.array_equal(np.isfinite(got), fin), what + ": non-finite entries differ")
        err = float(np.max(np.abs(got[fin] - ref[fin]))) if fin.any() else 0.0
        self.assertLessEqual(err, tol(ref), "%s: max |err| %g against float64" % (what, err))

    def test_attention_causal_gqa_lse(self):
        q, k, v = rand(2, 4, 200, 32, seed=1), rand(2, 2, 200, 32, seed=2), rand(2, 2, 200, 32, seed=3)
        o, lse = self.c.attention(q, k, v, causal=True, return_lse=True, block=64)
        ro, rl = reference.attention(q, k, v, causal=True)
        self.assertClose(o, ro, "o")
        self.assertClose(lse, rl, "lse")
        self.assertClose(self.c.attention(q, k, v, causal=True), ro, "o without lse")

    def test_precision_bf16(self):
        # bf16 products, fp32 softmax and accumulation: within 2^-7·max|v|
        # of float64 (docs/BENCHMARKS.md "bf16 compute"), and not the fp32
        # result, so the keyword reached the kernels.
        q, k, v = rand(1, 2, 150, 32, seed=81), rand(1, 2, 150, 32, seed=82), rand(1, 2, 150, 32, seed=83)
        ro, _ = reference.attention(q, k, v, causal=True)
        o16 = self.c.attention(q, k, v, causal=True, block=64, precision="bf16")
        o32 = self.c.attention(q, k, v, causal=True, block=64)
        err = float(np.max(np.abs(o16 - ro)))
        self.assertLessEqual(err, 2.0 ** -7 * float(np.max(np.abs(v))), "bf16 max |err| %g against float64" % err)
        self.assertClose(o32, ro, "fp32 o")
        self.assertFalse(np.array_equal(o16, o32), "precision='bf16' gave the fp32 result")
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(q, k, v, precision="fp16")
        self.assertEqual(cm.exception.field, "spec.precision")
        self.assertIn("fp32 or bf16", cm.exception.message)

    def test_window_seqlens_scale_cross_lengths(self):
        q, k, v = rand(1, 2, 96, 16, seed=4), rand(1, 2, 160, 16, seed=5), rand(1, 2, 160, 16, seed=6)
        o = self.c.attention(q, k, v, causal=True, window=(40, None), scale=0.3, block=32)
        self.assertClose(o, reference.attention(q, k, v, causal=True, window=(40, -1), scale=0.3)[0], "window")
        q2, k2, v2 = rand(1, 2, 128, 16, seed=7), rand(1, 2, 128, 16, seed=8), rand(1, 2, 128, 16, seed=9)
        o2, lse2 = self.c.attention(q2, k2, v2, seqlens=[50, 30, 48], return_lse=True, block=32)
        ro2, rl2 = reference.attention(q2, k2, v2, seqlens=[50, 30, 48])
        self.assertClose(o2, ro2, "seqlens o")
        self.assertClose(lse2, rl2, "seqlens lse")

    def test_layout_bnhd_and_dtypes(self):
        q, k, v = rand(1, 64, 4, 16, seed=10), rand(1, 64, 4, 16, seed=11), rand(1, 64, 4, 16, seed=12)
        o = self.c.attention(q, k, v, causal=True, layout="bnhd")
        ro = reference.attention(*(a.transpose(0, 2, 1, 3) for a in (q, k, v)), causal=True)[0].transpose(0, 2, 1, 3)
        self.assertClose(o, ro, "bnhd")
        o64 = self.c.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal=True, layout="bnhd")
        self.assertClose(o64, ro, "float64 inputs")
        h = [a.astype(np.float16) for a in (q, k, v)]
        oh = self.c.attention(*h, causal=True, layout="bnhd")
        rh = reference.attention(*(a.astype(np.float64).transpose(0, 2, 1, 3) for a in h), causal=True)[0].transpose(0, 2, 1, 3)
        self.assertClose(oh, rh, "float16 inputs")
        # Rank 2 [N, D] means B = H = 1.
        q2, k2, v2 = rand(40, 8, seed=13), rand(40, 8, seed=14), rand(40, 8, seed=15)
        o2 = self.c.attention(q2, k2, v2)
        self.assertClose(o2, reference.attention(q2[None, None], k2[None, None], v2[None, None])[0], "rank 2")

    def test_mha(self):
        dm, h = 24, 4
        x = rand(2, 50, dm, seed=20)
        w = [rand(dm, dm, seed=21 + i) * 0.3 for i in range(4)]
        bias = [rand(dm, seed=31 + i) for i in range(4)]
        y = self.c.mha(x, *w, heads=h, causal=True, bq=bias[0], bk=bias[1], bv=bias[2], bo=bias[3], block=16)
        ref = reference.mha(x, *w, heads=h, causal=True, bq=bias[0], bk=bias[1], bv=bias[2], bo=bias[3])
        self.assertClose(y, ref, "y")
        y0 = self.c.mha(x, *w, heads=h)
        self.assertClose(y0, reference.mha(x, *w, heads=h), "y without biases")

    def test_submit_wait_result_jobs(self):
        q, k, v = rand(1, 2, 64, 16, seed=40), rand(1, 2, 64, 16, seed=41), rand(1, 2, 64, 16, seed=42)
        job = self.c.submit(q, k, v, causal=True, return_lse=True)
        self.assertIn(job.state, ("queued", "running", "succeeded"))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            job.wait(progress=True, timeout=60)
            shown = sys.stderr.getvalue()
        finally:
            sys.stderr = stderr
        self.assertEqual(job.state, "succeeded")
        try:
            import tqdm  # noqa: F401
        except ImportError:
            self.assertIn(job.id[:12], shown)
        o, lse = job.result()
        ro, rl = reference.attention(q, k, v, causal=True)
        self.assertClose(o, ro, "o")
        self.assertClose(lse, rl, "lse")
        ids = [j.id for j in self.c.jobs(state="succeeded", limit=1000)]
        self.assertIn(job.id, ids)
        self.assertEqual(self.c.job(job.id).state, "succeeded")

    def test_idempotency_key(self):
        q = rand(1, 1, 16, 8, seed=43)
        key = "py-idem-%d" % time.time_ns()
        a = self.c.submit(q, q, q, idempotency_key=key)
        b = self.c.submit(q, q, q, idempotency_key=key)
        self.assertEqual(a.id, b.id)

    def test_cancel(self):
        q, k, v = rand(1, 4, 8192, 64, seed=50), rand(1, 4, 8192, 64, seed=51), rand(1, 4, 8192, 64, seed=52)
        job = self.c.submit(q, k, v, block=512)
        job.cancel(reason="test cancel")
        with self.assertRaises(ringattn.JobCanceled) as cm:
            job.wait(timeout=60)
        self.assertIn("test cancel", str(cm.exception))
        with self.assertRaises(ringattn.Conflict) as cm:
            job.fetch("o")
        self.assertEqual(cm.exception.field, "id")
        self.assertEqual(self.c.job(job.id).state, "canceled")

    def test_bad_shapes(self):
        q, k = rand(1, 2, 32, 16, seed=60), rand(1, 2, 32, 8, seed=61)
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(q, k, k)
        self.assertEqual(cm.exception.field, "k")
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("head dim", cm.exception.message)
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(rand(1, 3, 32, 16), rand(1, 2, 32, 16), rand(1, 2, 32, 16))
        self.assertEqual(cm.exception.field, "k")
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(q, q, q, seqlens=[10, 10])
        self.assertTrue(cm.exception.field.startswith("spec.mask.seqlens"), cm.exception.field)
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(rand(1, 1, 4, 300), rand(1, 1, 4, 300), rand(1, 1, 4, 300))
        self.assertEqual(cm.exception.field, "spec.d")
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(q, q, q, layout="nhd")
        self.assertEqual(cm.exception.field, "layout")
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention(np.zeros((1, 1, 4, 4), dtype=np.int32), q, q)
        self.assertEqual(cm.exception.field, "q")

    def test_not_found(self):
        with self.assertRaises(ringattn.NotFound) as cm:
            self.c.job("j-nosuchjob")
        self.assertEqual(cm.exception.field, "id")
        self.assertIn("j-nosuchjob", str(cm.exception))

    def test_unreachable(self):
        c = ringattn.Client("http://127.0.0.1:%d" % devserver.free_port(), timeout=5)
        with self.assertRaises(ringattn.Unavailable) as cm:
            c.attention(rand(1, 1, 4, 4), rand(1, 1, 4, 4), rand(1, 1, 4, 4))
        self.assertEqual(cm.exception.code, "unreachable")
        self.assertIsInstance(cm.exception, ConnectionError)

    def test_token(self):
        for token in (None, "wrong"):
            with self.assertRaises(ringattn.Unauthenticated) as cm:
                ringattn.Client(DEV.url, token=token).jobs()
            self.assertEqual(cm.exception.field, "Authorization")

    def assertGrad(self, got, ref, what):
        # 2e-4·max(1, max|ref|): float32 accumulation over the keys
        self.assertEqual(got.shape, ref.shape, what)
        self.assertEqual(got.dtype, np.float32, what)
        err = float(np.max(np.abs(got - ref)))
        lim = 2e-4 * max(1.0, float(np.max(np.abs(ref))))
        print("%s: max |err| %.3g (tolerance %.3g)" % (what, err, lim), file=sys.stderr)
        self.assertLessEqual(err, lim, "%s: max |err| %g against float64" % (what, err))

    def test_backward_matches_float64(self):
        # causal GQA of three documents: one forward+backward job, then a
        # backward job given the forward's o and lse, then layout bnhd.
        self.assertTrue(self.c.info()["backward"])
        b, hq, hkv, n, d, seqlens = 1, 4, 2, 96, 16, [40, 25, 31]
        q, k, v = rand(b, hq, n, d, seed=11), rand(b, hkv, n, d, seed=12), rand(b, hkv, n, d, seed=13)
        do = rand(b, hq, n, d, seed=14)
        ref = reference.attention_backward(q, k, v, do, causal=True, seqlens=seqlens)
        got = self.c.attention_backward(q, k, v, do, causal=True, seqlens=seqlens, block=32)
        for name, g, r in zip(("dq", "dk", "dv"), got, ref):
            self.assertGrad(g, r, name + " (forward+backward)")
        o, lse = self.c.attention(q, k, v, causal=True, seqlens=seqlens, return_lse=True)
        got = self.c.attention_backward(q, k, v, do, causal=True, seqlens=seqlens, o=o, lse=lse)
        for name, g, r in zip(("dq", "dk", "dv"), got, ref):
            self.assertGrad(g, r, name + " (backward)")
        t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1, 3))
        got = self.c.attention_backward(t(q), t(k), t(v), t(do), causal=True, seqlens=seqlens, layout="bnhd")
        for name, g, r in zip(("dq", "dk", "dv"), got, ref):
            self.assertGrad(g, t(r), name + " (bnhd)")

    def test_backward_bad_do_names_it(self):
        q = rand(1, 2, 16, 8)
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention_backward(q, q, q, rand(1, 2, 15, 8), causal=True)
        self.assertEqual(cm.exception.field, "do")
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.attention_backward(q, q, q, q, o=q)
        self.assertEqual(cm.exception.field, "lse")

    def test_mha_backward_matches_float64(self):
        # one layer forward+backward job: causal, B=2, biases, H·D != d_model;
        # then x of rank 2 without biases under a sliding window
        dm, h, hd = 24, 4, 32
        x, dy = rand(2, 50, dm, seed=70), rand(2, 50, dm, seed=71)
        w = [rand(hd, dm, seed=72 + i) * 0.3 for i in range(3)] + [rand(dm, hd, seed=75) * 0.3]
        bias = [rand(hd, seed=76 + i) for i in range(3)] + [rand(dm, seed=79)]
        kw = dict(bq=bias[0], bk=bias[1], bv=bias[2], bo=bias[3])
        g = self.c.mha_backward(x, *w, dy, heads=h, causal=True, block=16, **kw)
        self.assertIsInstance(g, ringattn.MHAGrads)
        ref = reference.mha_backward(x, *w, dy, heads=h, causal=True, **kw)
        self.assertGrad(g.y, reference.mha(x, *w, heads=h, causal=True, **kw), "mha y")
        for name in ("dx", "dwq", "dwk", "dwv", "dwo", "dbq", "dbk", "dbv", "dbo"):
            self.assertGrad(getattr(g, name), ref[name], "mha " + name)
        x2, dy2 = rand(40, dm, seed=80), rand(40, dm, seed=81)
        g = self.c.mha_backward(x2, *w, dy2, heads=h, window=(10, 3), block=16)
        ref = reference.mha_backward(x2, *w, dy2, heads=h, window=(10, 3))
        self.assertEqual(g.y.shape, x2.shape)
        for name in ("dx", "dwq", "dwk", "dwv", "dwo"):
            self.assertGrad(getattr(g, name), ref[name], "mha rank 2 " + name)
        self.assertEqual((g.dbq, g.dbk, g.dbv, g.dbo), (None, None, None, None))

    def test_mha_backward_bad_inputs_name_them(self):
        dm = 8
        x, w = rand(1, 16, dm, seed=90), [rand(dm, dm, seed=91 + i) for i in range(4)]
        for args, field in (((x, *w, rand(1, 15, dm)), "dy"),
                            ((x, w[0], rand(4, dm), w[2], w[3], x), "wk"),
                            ((x, *w, None), "dy")):
            with self.assertRaises(ringattn.InvalidArgument) as cm:
                self.c.mha_backward(*args, heads=2)
            self.assertEqual(cm.exception.field, field, cm.exception)
        with self.assertRaises(ringattn.InvalidArgument) as cm:
            self.c.mha_backward(x, *w, x, heads=2, bq=rand(dm))
        self.assertEqual(cm.exception.field, "bk")
        # a forward job has no gradients
        job = self.c.submit(kind="mha", x=x, wq=w[0], wk=w[1], wv=w[2], wo=w[3], heads=2)
        with self.assertRaises(ringattn.InvalidArgument):
            job.wait(timeout=60).mha_grads()


class ReferenceTest(unittest.TestCase):
    def test_mha_backward_reference_matches_finite_differences(self):
        rng = np.random.default_rng(6)
        dm, h, hd = 4, 2, 6
        args = {"x": rng.standard_normal((1, 5, dm)), "wq": rng.standard_normal((hd, dm)),
                "wk": rng.standard_normal((hd, dm)), "wv": rng.standard_normal((hd, dm)),
                "wo": rng.standard_normal((dm, hd)), "bq": rng.standard_normal(hd), "bk": rng.standard_normal(hd),
                "bv": rng.standard_normal(hd), "bo": rng.standard_normal(dm)}
        dy = rng.standard_normal((1, 5, dm))
        kw = dict(heads=h, causal=True, seqlens=[3, 2])
        grads = reference.mha_backward(dy=dy, **args, **kw)
        loss = lambda a: float(np.sum(reference.mha(**a, **kw) * dy))
        eps = 1e-6
        for name in args:
            fd = np.zeros_like(args[name])
            for idx in np.ndindex(fd.shape):
                a = {k: v.copy() for k, v in args.items()}
                a[name][idx] += eps
                up = loss(a)
                a[name][idx] -= 2 * eps
                fd[idx] = (up - loss(a)) / (2 * eps)
            self.assertLessEqual(float(np.max(np.abs(fd - grads["d" + name]))), 1e-7, name)

    def test_backward_reference_matches_finite_differences(self):
        # central differences of L = sum(o·do) in float64, on a tiny causal
        # GQA problem with two documents and a scale of its own
        rng = np.random.default_rng(5)
        q, k, v = rng.standard_normal((1, 2, 5, 3)), rng.standard_normal((1, 1, 5, 3)), rng.standard_normal((1, 1, 5, 3))
        do = rng.standard_normal((1, 2, 5, 3))
        kw = dict(causal=True, seqlens=[3, 2], scale=0.7)
        grads = reference.attention_backward(q, k, v, do, **kw)
        loss = lambda q, k, v: float(np.sum(reference.attention(q, k, v, **kw)[0] * do))
        h = 1e-6
        for i, (x, g) in enumerate(zip((q, k, v), grads)):
            fd = np.zeros_like(x)
            for idx in np.ndindex(x.shape):
                args = [q.copy(), k.copy(), v.copy()]
                args[i][idx] += h
                up = loss(*args)
                args[i][idx] -= 2 * h
                fd[idx] = (up - loss(*args)) / (2 * h)
            self.assertLessEqual(float(np.max(np.abs(fd - g))), 1e-7, "input %d" % i)


@unittest.skipIf(torch is None, "torch is not installed")
class TorchTest(unittest.TestCase):
    def setUp(self):
        self.c = ringattn.Client(DEV.url, token=DEV.token)

    def test_forward_matches_float64_torch(self):
        from ringattn.torch import attention
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, 4, 96, 32, generator=g)
        k = torch.randn(1, 4, 96, 32, generator=g)
        v = torch.randn(1, 4, 96, 32, generator=g)
        o = attention(q, k, v, causal=True, client=self.c)
        self.assertEqual(o.dtype, torch.float32)
        q64, k64, v64 = q.double(), k.double(), v.double()
        s = q64 @ k64.transpose(-1, -2) / 32 ** 0.5
        s = s.masked_fill(torch.ones(96, 96, dtype=torch.bool).triu(1), float("-inf"))
        ref = torch.softmax(s, -1) @ v64
        self.assertLessEqual(float((o.double() - ref).abs().max()), 1e-4)
        # bnhd, torch's common layout
        ob = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, layout="bnhd", client=self.c)
        self.assertLessEqual(float((ob.transpose(1, 2).double() - ref).abs().max()), 1e-4)

    def test_bfloat16_tensors_are_converted(self):
        from ringattn.torch import attention
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 2, 64, 16, generator=g).bfloat16() for _ in range(3))
        o = attention(q, k, v, causal=True, client=self.c)
        self.assertEqual(o.dtype, torch.bfloat16)
        ref, _ = reference.attention(*(t.float().numpy() for t in (q, k, v)), causal=True)
        # float32 on the cluster; the error is bf16's rounding of the output.
        self.assertLessEqual(float(np.max(np.abs(o.float().numpy() - ref))), 2 ** -8 * max(1.0, float(np.max(np.abs(ref)))))

    def test_autograd_matches_float64_torch(self):
        # gradients through ringattn.torch.attention (a forward job, then a
        # backward job) against torch float64 autograd of plain softmax
        # attention, causal GQA, in both layouts
        from ringattn.torch import attention
        g = torch.Generator().manual_seed(3)
        b, hq, hkv, n, d = 2, 4, 2, 80, 16
        q0 = torch.randn(b, hq, n, d, generator=g)
        k0, v0 = torch.randn(b, hkv, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g)
        w = torch.randn(b, hq, n, d, generator=g)
        q64, k64, v64 = (t.double().requires_grad_() for t in (q0, k0, v0))
        s = q64 @ k64.repeat_interleave(hq // hkv, 1).transpose(-1, -2) / d ** 0.5
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        ((torch.softmax(s, -1) @ v64.repeat_interleave(hq // hkv, 1)) * w.double()).sum().backward()
        refs = (q64.grad, k64.grad, v64.grad)
        for layout in ("bhnd", "bnhd"):
            tr = (lambda t: t.transpose(1, 2).contiguous()) if layout == "bnhd" else (lambda t: t)
            q, k, v = (tr(t).clone().requires_grad_() for t in (q0, k0, v0))
            o = attention(q, k, v, causal=True, layout=layout, client=self.c)
            (o * tr(w)).sum().backward()
            for name, x, ref in zip(("dq", "dk", "dv"), (q, k, v), refs):
                self.assertEqual(x.grad.dtype, torch.float32)
                err = float((tr(x.grad).double() - ref).abs().max())
                lim = 2e-4 * max(1.0, float(ref.abs().max()))
                print("torch %s %s: max |err| %.3g (tolerance %.3g)" % (layout, name, err, lim), file=sys.stderr)
                self.assertLessEqual(err, lim, "%s %s" % (layout, name))

    def test_autograd_only_needed_grads(self):
        from ringattn.torch import attention
        q = torch.randn(1, 2, 32, 16, requires_grad=True)
        k, v = torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16)
        attention(q, k, v, causal=True, client=self.c).sum().backward()
        self.assertIsNotNone(q.grad)
        self.assertIsNone(k.grad)

    def _layers(self, seed, bias=True, batch_first=True):
        """A torch.nn.MultiheadAttention in float64 (the reference) and a
        ringattn.torch.MultiheadAttention with its parameters (float32),
        biases random rather than torch's zeros."""
        from ringattn.torch import MultiheadAttention
        torch.manual_seed(seed)
        ref = torch.nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first)
        if bias:
            with torch.no_grad():
                ref.in_proj_bias.normal_()
                ref.out_proj.bias.normal_()
        ring = MultiheadAttention(32, 4, bias=bias, batch_first=batch_first, client=self.c, block=16)
        ring.load_state_dict(ref.state_dict())
        return ref.double(), ring

    def assertGrads(self, ref, ring, x64, x, what):
        pairs = [("y", None, None), ("x", x64.grad, x.grad)]
        for (name, p64), (name2, p) in zip(ref.named_parameters(), ring.named_parameters()):
            self.assertEqual(name, name2)
            pairs.append((name, p64.grad, p.grad))
        for name, want, got in pairs[1:]:
            self.assertIsNotNone(got, "%s: no gradient of %s" % (what, name))
            self.assertEqual(got.dtype, torch.float32)
            self.assertEqual(got.shape, want.shape, name)
            err = float((got.double() - want).abs().max())
            lim = 2e-4 * max(1.0, float(want.abs().max()))
            print("torch mha %s %s: max |err| %.3g (tolerance %.3g)" % (what, name, err, lim), file=sys.stderr)
            self.assertLessEqual(err, lim, "%s %s" % (what, name))

    def test_mha_layer_matches_torch_autograd(self):
        # y and every gradient of a causal layer with biases, batch_first,
        # against torch's own autograd of nn.MultiheadAttention in float64
        ref, ring = self._layers(5)
        n = 60
        g = torch.Generator().manual_seed(6)
        x0, w = torch.randn(2, n, 32, generator=g), torch.randn(2, n, 32, generator=g)
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        x64 = x0.double().requires_grad_()
        y64, _ = ref(x64, x64, x64, attn_mask=mask, need_weights=False)
        (y64 * w.double()).sum().backward()
        x = x0.clone().requires_grad_()
        y, weights = ring(x, x, x, attn_mask=mask)
        self.assertIsNone(weights)
        self.assertEqual(y.dtype, torch.float32)
        err = float((y.double() - y64).abs().max())
        self.assertLessEqual(err, 2e-4 * max(1.0, float(y64.abs().max())), "y")
        (y * w).sum().backward()
        self.assertGrads(ref, ring, x64, x, "causal batch_first")

    def test_mha_layer_sequence_first_and_unbatched(self):
        # torch's default [N,B,E] layout with is_causal (torch: a float -inf
        # mask), then unbatched [N,E] without biases or mask
        ref, ring = self._layers(7, batch_first=False)
        n = 40
        g = torch.Generator().manual_seed(8)
        x0, w = torch.randn(n, 3, 32, generator=g), torch.randn(n, 3, 32, generator=g)
        fmask = torch.zeros(n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        x64 = x0.double().requires_grad_()
        (ref(x64, x64, x64, attn_mask=fmask.double(), need_weights=False)[0] * w.double()).sum().backward()
        x = x0.clone().requires_grad_()
        (ring(x, x, x, is_causal=True)[0] * w).sum().backward()
        self.assertGrads(ref, ring, x64, x, "sequence-first")
        ref, ring = self._layers(9, bias=False)
        x0, w = torch.randn(n, 32, generator=g), torch.randn(n, 32, generator=g)
        x64 = x0.double().requires_grad_()
        (ref(x64, x64, x64, need_weights=False)[0] * w.double()).sum().backward()
        x = x0.clone().requires_grad_()
        y, _ = ring(x, x, x, attn_mask=None)
        self.assertEqual(y.shape, x.shape)
        (y * w).sum().backward()
        self.assertGrads(ref, ring, x64, x, "unbatched")

    def test_mha_layer_trains_like_torch(self):
        # three SGD steps through the cluster track the same steps of torch's
        # layer in float64: the parameters stay within float32 tolerance
        ref, ring = self._layers(10)
        opt64 = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt = torch.optim.SGD(ring.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(11)
        n = 32
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)
        for step in range(3):
            x0, target = torch.randn(2, n, 32, generator=g), torch.randn(2, n, 32, generator=g)
            x64 = x0.double()
            loss64 = ((ref(x64, x64, x64, attn_mask=mask, need_weights=False)[0] - target.double()) ** 2).mean()
            loss = ((ring(x0, x0, x0, attn_mask=mask)[0] - target) ** 2).mean()
            self.assertLessEqual(abs(loss.item() - loss64.item()), 2e-4 * max(1.0, loss64.item()), "step %d loss" % step)
            for o, l in ((opt64, loss64), (opt, loss)):
                o.zero_grad()
                l.backward()
                o.step()
        for (name, p64), (_, p) in zip(ref.named_parameters(), ring.named_parameters()):
            err = float((p.double() - p64).abs().max())
            self.assertLessEqual(err, 2e-4 * max(1.0, float(p64.abs().max())), name)

    def test_mha_functional_and_refusals(self):
        from ringattn.torch import MultiheadAttention, mha
        dm = 16
        x = torch.randn(1, 24, dm, requires_grad=True)
        ws = [torch.randn(dm, dm) * 0.3 for _ in range(4)]
        y = mha(x, *ws, heads=2, causal=True, client=self.c)
        ref = reference.mha(x.detach().numpy(), *(t.numpy() for t in ws), heads=2, causal=True)
        self.assertLessEqual(float(np.max(np.abs(y.detach().numpy() - ref))), 2e-4 * max(1.0, float(np.max(np.abs(ref)))))
        y.sum().backward()  # only x needs a gradient
        dref = reference.mha_backward(x.detach().numpy(), *(t.numpy() for t in ws), np.ones((1, 24, dm)), heads=2, causal=True)
        self.assertLessEqual(float(np.max(np.abs(x.grad.numpy() - dref["dx"]))), 2e-4 * max(1.0, float(np.max(np.abs(dref["dx"])))))
        self.assertTrue(all(w.grad is None for w in ws))
        layer = MultiheadAttention(dm, 2, batch_first=True, client=self.c)
        for call in (lambda: layer(x, x, x, need_weights=True), lambda: layer(x, x.detach() + 1, x),
                     lambda: layer(x, x, x, key_padding_mask=torch.zeros(1, 24, dtype=torch.bool)),
                     lambda: layer(x, x, x, attn_mask=torch.ones(24, 24, dtype=torch.bool).tril(-1)),
                     lambda: MultiheadAttention(dm, 2, dropout=0.1), lambda: MultiheadAttention(dm, 2, kdim=8)):
            with self.assertRaises(NotImplementedError):
                call()
        with self.assertRaises(ValueError):
            MultiheadAttention(dm, 3)


if __name__ == "__main__":
    unittest.main()
