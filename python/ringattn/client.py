"""The HTTP client: Client and Job."""

import collections
import io
import json
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np

from . import errors

_STATES_FINISHED = ("succeeded", "failed", "canceled", "expired")

#: What Client.mha_backward returns: y and the gradients of sum(y·dy) with
#: respect to x and every parameter, float32, each shaped like its input
#: (y and dx like x); the bias gradients are None for a layer without biases.
MHAGrads = collections.namedtuple("MHAGrads", "y dx dwq dwk dwv dwo dbq dbk dbv dbo")
_MHA_GRADS = MHAGrads._fields[1:]


def _as_float32(a, name):
    """a (numpy array, torch tensor, or array-like) as a C-contiguous float32 array."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, without importing torch
        a = a.detach().cpu()
        if str(a.dtype) != "torch.float32":
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "fV" and a.dtype.name != "bfloat16":
        raise errors.InvalidArgument(400, "invalid_argument", name,
                                     "dtype %s: want a floating-point array (float32; float16, float64, bfloat16 are converted)" % a.dtype)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _to_bhnd(a, layout, name):
    if layout == "bhnd":
        return a
    if layout == "bnhd":
        if a.ndim != 4:
            raise errors.InvalidArgument(400, "invalid_argument", name,
                                         "shape %s: layout 'bnhd' wants [B,N,H,D]" % (list(a.shape),))
        return np.ascontiguousarray(a.transpose(0, 2, 1, 3))
    raise errors.InvalidArgument(400, "invalid_argument", "layout", "%r: want 'bhnd' or 'bnhd'" % (layout,))


def _multipart(spec, parts):
    """A multipart/form-data body: the JSON spec, then .npy parts."""
    boundary = "ringattn-" + uuid.uuid4().hex
    chunks = []
    b = boundary.encode()
    chunks.append(b"--" + b + b'\r\nContent-Disposition: form-data; name="spec"\r\nContent-Type: application/json\r\n\r\n')
    chunks.append(json.dumps(spec).encode())
    for name, data in parts:
        chunks.append(b"\r\n--" + b + ('\r\nContent-Disposition: form-data; name="%s"; filename="%s.npy"\r\n'
                                       "Content-Type: application/x-npy\r\n\r\n" % (name, name)).encode())
        chunks.append(data)
    chunks.append(b"\r\n--" + b + b"--\r\n")
    return "multipart/form-data; boundary=" + boundary, b"".join(chunks)


def _window(window):
    if window is None:
        return None
    if len(window) != 2:
        raise errors.InvalidArgument(400, "invalid_argument", "window", "%r: want (left, right), None or -1 unbounded" % (window,))
    return [-1 if w is None else int(w) for w in window]


class Client:
    """A client of a ringattn HTTP job API (``ringattn dev`` prints its address).

    ``token`` is the gateway's bearer token, if it has one. ``timeout`` bounds
    each HTTP request (seconds); waiting for a job is bounded by ``wait``'s own
    timeout.
    """

    def __init__(self, url="http://127.0.0.1:8080", token=None, timeout=300.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._info = None

    # -- HTTP ---------------------------------------------------------------

    def _request(self, method, path, body=None, content_type=None, headers=None, timeout=None, stream=False):
        """One request, retried while the server answers busy.

        A 429 or 503 that carries Retry-After was not processed (the gateway or
        the coordinator is busy, or the queue is full): it is sent again after
        jittered exponential backoff (50 ms doubling up to 2 s, never sooner
        than Retry-After) until the client's timeout has passed; then the
        error is raised.
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + (limit if limit else 60.0)
        backoff = 0.05
        while True:
            try:
                return self._request_once(method, path, body, content_type, headers, timeout, stream)
            except (errors.Busy, errors.Unavailable) as e:
                wait = getattr(e, "retry_after", None)
                if wait is None:
                    raise
                wait = max(wait, random.uniform(0, backoff))
                backoff = min(2 * backoff, 2.0)
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def _request_once(self, method, path, body, content_type, headers, timeout, stream):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except ValueError:
                parsed = {"error": {"message": raw.decode("utf-8", "replace").strip()[:500]}}
            err = errors.from_response(e.code, parsed)
            retry_after = e.headers.get("Retry-After") if e.headers else None
            if retry_after is not None:
                try:
                    err.retry_after = max(0.0, float(retry_after))
                except ValueError:
                    pass
            raise err from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise errors.Unavailable(0, "unreachable", "url", "cannot reach %s: %s" % (self.url, reason)) from None
        if stream:
            return resp
        with resp:
            return resp.read(), resp.headers.get("Content-Type", "")

    def _json(self, method, path, **kw):
        data, _ = self._request(method, path, **kw)
        return json.loads(data.decode("utf-8"))

    def info(self):
        """GET /v1/info: job kinds, outputs, limits, whether backward jobs exist."""
        if self._info is None:
            self._info = self._json("GET", "/v1/info")
        return self._info

    # -- jobs ---------------------------------------------------------------

    def submit(self, q=None, k=None, v=None, causal=False, window=None, seqlens=None, seqlens_k=None,
               scale=None, return_lse=False, layout="bhnd", block=None, strategy=None, wire=None,
               precision="fp32", priority=0, parallelism=0, allow_nonfinite=False, idempotency_key=None, **mha):
        """Upload the inputs and submit an attention job (or an mha job when
        called with kind="mha" and x=..., see mha()). Returns a Job at once."""
        kind = mha.pop("kind", "attention")
        spec = {"kind": kind, "causal": bool(causal)}
        if window is not None:
            spec["window"] = _window(window)
        if seqlens is not None:
            spec["seqlens"] = [int(s) for s in seqlens]
        if seqlens_k is not None:
            spec["seqlens_k"] = [int(s) for s in seqlens_k]
        if scale is not None:
            spec["scale"] = float(scale)
        if block:
            spec["block"] = int(block)
        if strategy:
            spec["strategy"] = strategy
        if wire:
            spec["wire"] = wire
        if precision and precision != "fp32":
            # "bf16": bf16 products, fp32 softmax and accumulation (the
            # cluster refuses anything but fp32 and bf16, naming spec.precision).
            spec["precision"] = precision
        if priority:
            spec["priority"] = int(priority)
        if parallelism:
            spec["parallelism"] = int(parallelism)
        if allow_nonfinite:
            spec["allow_nonfinite"] = True
        if idempotency_key:
            spec["idempotency_key"] = idempotency_key
        if kind == "mha":
            heads = mha.pop("heads")
            spec["heads"] = int(heads)
            names = ["x", "wq", "wk", "wv", "wo"]
            if mha.get("dy") is not None:  # a layer forward+backward job
                spec["backward"] = True
                names.insert(1, "dy")
            biases = ["bq", "bk", "bv", "bo"]
            if any(mha.get(b) is not None for b in biases):
                names += biases
            parts = []
            for n in names:
                if mha.get(n) is None:
                    raise errors.InvalidArgument(400, "invalid_argument", n, "missing: give %s (biases all or none)" % ", ".join(names))
                parts.append((n, _npy(_as_float32(mha.pop(n), n))))
            for n in list(mha):
                if mha[n] is None:
                    mha.pop(n)
            layout_out = None
        else:
            if return_lse:
                spec["return_lse"] = True
            parts = []
            for n, a in (("q", q), ("k", k), ("v", v)):
                if a is None:
                    raise errors.InvalidArgument(400, "invalid_argument", n, "missing")
                parts.append((n, _npy(_to_bhnd(_as_float32(a, n), layout, n))))
            layout_out = layout
        if mha:
            raise TypeError("submit() got unexpected keyword arguments %s" % ", ".join(sorted(mha)))
        ctype, body = _multipart(spec, parts)
        st = self._json("POST", "/v1/jobs", body=body, content_type=ctype)
        return Job(self, st, return_lse=return_lse, layout=layout_out)

    def attention(self, q, k, v, causal=False, window=None, seqlens=None, scale=None, return_lse=False,
                  layout="bhnd", progress=False, timeout=None, **kw):
        """Exact attention softmax(q·kᵀ·scale + mask)·v on the cluster.

        q [B,Hq,N,D], k and v [B,Hkv,Nk,D] (Hq % Hkv == 0; rank 3 [H,N,D] and
        rank 2 [N,D] mean B=1, H=1), or [B,N,H,D] with layout="bnhd". Returns
        o (float32, like q), or (o, lse [B,Hq,N]) with return_lse=True."""
        job = self.submit(q, k, v, causal=causal, window=window, seqlens=seqlens, scale=scale,
                          return_lse=return_lse, layout=layout, **kw)
        job.wait(progress=progress, timeout=timeout)
        return job.result()

    def attention_backward(self, q, k, v, do, causal=False, window=None, seqlens=None, scale=None,
                           layout="bhnd", o=None, lse=None, seqlens_k=None, progress=False, timeout=None, **kw):
        """Gradients (dq, dk, dv) of a loss L given do = dL/do, for
        o = attention(q, k, v, ...) with the same masking arguments, computed
        on the cluster (float32, like q, k, v; in ``layout``).

        With the forward's o (q's shape and layout) and lse ([B,Hq,N], as
        attention(..., return_lse=True) returns them) the cluster runs the
        backward pass only; without them it runs the forward first (one
        forward+backward job). Raises ringattn.Unimplemented when the cluster
        has no backward jobs (GET /v1/info says backward: false)."""
        if not self.info().get("backward"):
            raise errors.Unimplemented(
                501, "unimplemented", "backward",
                "the ringattn cluster at %s has no backward job kind yet (GET /v1/info: backward false); "
                "gradients cannot be computed on it" % self.url)
        if (o is None) != (lse is None):
            raise errors.InvalidArgument(400, "invalid_argument", "o" if o is None else "lse",
                                         "missing: give both o and lse of the forward (or neither, to compute them)")
        spec = {"kind": "attention", "backward": True, "causal": bool(causal)}
        if window is not None:
            spec["window"] = _window(window)
        if seqlens is not None:
            spec["seqlens"] = [int(s) for s in seqlens]
        if seqlens_k is not None:
            spec["seqlens_k"] = [int(s) for s in seqlens_k]
        if scale is not None:
            spec["scale"] = float(scale)
        for key in ("block", "strategy", "wire", "precision", "priority", "parallelism", "idempotency_key"):
            if kw.get(key):
                spec[key] = kw.pop(key)
            else:
                kw.pop(key, None)
        if kw:
            raise TypeError("attention_backward() got unexpected keyword arguments %s" % ", ".join(sorted(kw)))
        parts = []
        for n, a in (("q", q), ("k", k), ("v", v), ("do", do), ("o", o)):
            if a is not None:
                parts.append((n, _npy(_to_bhnd(_as_float32(a, n), layout, n))))
        if lse is not None:
            parts.append(("lse", _npy(_as_float32(lse, "lse"))))
        ctype, body = _multipart(spec, parts)
        job = Job(self, self._json("POST", "/v1/jobs", body=body, content_type=ctype), layout=layout)
        job.wait(progress=progress, timeout=timeout)
        grads = [job.fetch(n) for n in ("dq", "dk", "dv")]
        if layout == "bnhd":
            grads = [np.ascontiguousarray(g.transpose(0, 2, 1, 3)) for g in grads]
        return tuple(grads)

    def mha(self, x, wq, wk, wv, wo, heads, causal=False, bq=None, bk=None, bv=None, bo=None,
            progress=False, timeout=None, **kw):
        """A multi-head self-attention layer as torch.nn.MultiheadAttention
        computes it: x [B,N,d_model] (or [N,d_model]), wq, wk, wv [H·D,d_model],
        wo [d_model,H·D], biases all or none. Returns y [B,N,d_model]."""
        job = self.submit(kind="mha", x=x, wq=wq, wk=wk, wv=wv, wo=wo, bq=bq, bk=bk, bv=bv, bo=bo,
                          heads=heads, causal=causal, **kw)
        job.wait(progress=progress, timeout=timeout)
        return job.result()

    def mha_backward(self, x, wq, wk, wv, wo, dy, heads, causal=False, bq=None, bk=None, bv=None, bo=None,
                     progress=False, timeout=None, **kw):
        """The layer of mha() and its gradients on the cluster: one
        forward+backward job given dy = dL/dy (x's shape). Returns
        MHAGrads(y, dx, dwq, dwk, dwv, dwo, dbq, dbk, dbv, dbo): y and the
        gradients of sum(y·dy) with respect to x, the weights and the biases
        (None without biases), float32, shaped like x and the parameters —
        what torch autograd of torch.nn.MultiheadAttention gives (its
        in_proj_weight is wq, wk, wv stacked). Masking and job keywords as
        mha(). Raises ringattn.Unimplemented when the gateway has no mha
        gradients (GET /v1/info lists no outputs.mha_forward_backward)."""
        if not self.info().get("outputs", {}).get("mha_forward_backward"):
            raise errors.Unimplemented(
                501, "unimplemented", "backward",
                "the ringattn gateway at %s has no mha gradients (GET /v1/info lists no "
                "outputs.mha_forward_backward); they cannot be computed on it" % self.url)
        if dy is None:
            raise errors.InvalidArgument(400, "invalid_argument", "dy", "missing: give dL/dy, x's shape")
        x = _as_float32(x, "x")
        job = self.submit(kind="mha", x=x, dy=dy, wq=wq, wk=wk, wv=wv, wo=wo, bq=bq, bk=bk, bv=bv, bo=bo,
                          heads=heads, causal=causal, **kw)
        job.wait(progress=progress, timeout=timeout)
        return job.mha_grads(x_shape=x.shape)

    def job(self, job_id):
        """The Job of an id (its status read now)."""
        return Job(self, self._json("GET", "/v1/jobs/" + urllib.parse.quote(job_id, safe="")))

    def jobs(self, state=None, limit=100):
        """Jobs, newest first; state: a state name or a list of them."""
        q = {"limit": str(int(limit))}
        if state:
            q["state"] = state if isinstance(state, str) else ",".join(state)
        r = self._json("GET", "/v1/jobs?" + urllib.parse.urlencode(q))
        return [Job(self, j) for j in r.get("jobs", [])]


class Job:
    """A submitted job: .id, .state, .status (the last status read)."""

    def __init__(self, client, status, return_lse=None, layout=None):
        self.client = client
        self.status = status
        self.id = status["id"]
        self._return_lse = return_lse
        self._layout = layout

    def __repr__(self):
        return "<ringattn.Job %s %s>" % (self.id, self.state)

    @property
    def state(self):
        return self.status.get("state")

    def _path(self, suffix=""):
        return "/v1/jobs/" + urllib.parse.quote(self.id, safe="") + suffix

    def refresh(self):
        """Read the job's status now."""
        self.status = self.client._json("GET", self._path())
        return self.status

    def done(self):
        return self.state in _STATES_FINISHED

    def cancel(self, reason=None):
        """Cancel the job (ringattn.Conflict if it already finished)."""
        path = self._path()
        if reason:
            path += "?" + urllib.parse.urlencode({"reason": reason})
        self.status = self.client._json("DELETE", path)
        return self.status

    def wait(self, timeout=None, progress=False):
        """Wait until the job finishes; raise JobFailed or JobCanceled unless
        it succeeded. progress=True shows a bar (tqdm when installed, else a
        line on stderr), following the job's server-sent events."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            self._follow_events(deadline)
        while not self.done():
            left = 30.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("job %s is still %s after %ss" % (self.id, self.state, timeout))
            wait = max(1, min(30, int(left)))
            self.status = self.client._json("GET", self._path("?wait=%ds" % wait), timeout=wait + self.client.timeout)
        if self.state == "failed":
            raise errors.JobFailed(self.status)
        if self.state == "canceled":
            raise errors.JobCanceled(self.status)
        if self.state == "expired":
            raise errors.NotFound(404, "not_found", "id", "job %s expired: its outputs are deleted" % self.id)
        return self

    def _follow_events(self, deadline):
        bar = _Bar(self.id)
        try:
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
            resp = self.client._request("GET", self._path("/events"), stream=True,
                                        timeout=timeout if timeout is not None else self.client.timeout)
            event = None
            with resp:
                for raw in resp:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "progress":
                            bar.update(data)
                        elif event == "done":
                            self.status = data
                        elif event == "error":
                            e = data.get("error", {})
                            raise errors.from_response(e.get("status", 503), data)
                    if deadline is not None and time.monotonic() > deadline:
                        break
        except (socket.timeout, TimeoutError):
            pass  # the polling loop reports the timeout
        finally:
            bar.close()

    def result(self):
        """The outputs of the finished job as float32 numpy arrays: o, or
        (o, lse) for an attention job submitted with return_lse=True; y for mha."""
        if not self.done():
            self.wait()
        elif self.state != "succeeded":
            self.wait()  # raises
        outs = self.status.get("outputs", [])
        if "y" in outs:
            return self.fetch("y")
        o = self.fetch("o")
        if self._layout == "bnhd":
            o = np.ascontiguousarray(o.transpose(0, 2, 1, 3))
        want_lse = self._return_lse if self._return_lse is not None else "lse" in outs
        if want_lse:
            return o, self.fetch("lse")
        return o

    def mha_grads(self, x_shape=None):
        """MHAGrads of a succeeded mha backward job (see Client.mha_backward);
        y and dx are [B,N,d_model], or x_shape when given."""
        if self.state != "succeeded":
            self.wait()
        outs = self.status.get("outputs", [])
        if "dx" not in outs:
            raise errors.InvalidArgument(400, "invalid_argument", "id",
                                         "job %s has outputs %s: not an mha backward job" % (self.id, ", ".join(outs)))
        got = {n: (self.fetch(n) if n in outs else None) for n in ("y",) + _MHA_GRADS}
        if x_shape is not None:
            got["y"], got["dx"] = got["y"].reshape(x_shape), got["dx"].reshape(x_shape)
        return MHAGrads(**got)

    def fetch(self, name):
        """One output as stored: o, dq [B,Hq,N,D]; lse [B,Hq,N]; dk, dv
        [B,Hkv,Nk,D]; y, dx [B,N,d_model]; dwq, dwk, dwv [H·D,d_model], dwo
        [d_model,H·D], dbq, dbk, dbv [H·D], dbo [d_model] (float32, the
        [B,H,N,D] layout)."""
        data, _ = self.client._request("GET", self._path("/outputs/" + urllib.parse.quote(name, safe="")))
        return np.load(io.BytesIO(data), allow_pickle=False)


class _Bar:
    """tqdm when installed, else a carriage-return line on stderr."""

    def __init__(self, job_id):
        self.job_id = job_id
        self.tqdm = None
        self.last = None
        try:
            from tqdm import tqdm  # optional
            self.tqdm = tqdm(desc="ringattn " + job_id[:12], unit="step", total=None)
        except ImportError:
            pass

    def update(self, p):
        total, done, unit = p.get("total", 0), p.get("done", 0), p.get("unit", "")
        if self.tqdm is not None:
            if total and self.tqdm.total != total:
                self.tqdm.total = total
                self.tqdm.unit = unit
            self.tqdm.n = done
            self.tqdm.set_postfix_str(p.get("state", ""), refresh=False)
            self.tqdm.refresh()
            return
        import sys
        line = "ringattn %s: %s %d/%d %s (%.0f%%)" % (self.job_id[:12], p.get("state", ""), done, total, unit,
                                                     100.0 * p.get("fraction", 0.0))
        if line != self.last:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            self.last = line

    def close(self):
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.last is not None:
            import sys
            sys.stderr.write("\n")
