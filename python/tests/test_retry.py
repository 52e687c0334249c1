"""Busy replies are retried: a 429/503 with Retry-After was not processed.

Runs against a tiny local HTTP server that answers busy a few times; no
cluster needed.
"""

import http.server
import json
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ringattn  # noqa: E402
from ringattn import errors  # noqa: E402


class _Busy(http.server.BaseHTTPRequestHandler):
    busy_left = 0
    retry_after = "0"
    calls = 0

    def do_GET(self):
        cls = type(self)
        cls.calls += 1
        if cls.busy_left > 0:
            cls.busy_left -= 1
            body = json.dumps({"error": {"code": "busy", "message": "coordinator busy"}}).encode()
            self.send_response(503)
            if cls.retry_after is not None:
                self.send_header("Retry-After", cls.retry_after)
        else:
            body = json.dumps({"backward": False}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class RetryTest(unittest.TestCase):
    def setUp(self):
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.srv.server_address[1]
        _Busy.calls = 0

    def tearDown(self):
        self.srv.shutdown()
        self.srv.server_close()

    def test_busy_is_retried(self):
        _Busy.busy_left, _Busy.retry_after = 3, "0"
        info = ringattn.Client(self.url, timeout=10).info()
        self.assertEqual(info, {"backward": False})
        self.assertEqual(_Busy.calls, 4)

    def test_busy_until_timeout_raises(self):
        _Busy.busy_left, _Busy.retry_after = 10**6, "1"
        with self.assertRaises(errors.Unavailable) as cm:
            ringattn.Client(self.url, timeout=2.5).info()
        self.assertEqual(cm.exception.retry_after, 1.0)
        self.assertLessEqual(_Busy.calls, 3)

    def test_backward_on_an_older_server_is_unimplemented(self):
        # A gateway whose /v1/info says backward: false has no backward
        # jobs: the client says so rather than sending one.
        q = [[0.0] * 4] * 4
        with self.assertRaises(ringattn.Unimplemented) as cm:
            ringattn.Client(self.url, timeout=10).attention_backward(q, q, q, q)
        self.assertIsInstance(cm.exception, NotImplementedError)
        self.assertIn("no backward job kind", str(cm.exception))
        self.assertEqual(_Busy.calls, 1)

    def test_503_without_retry_after_is_not_retried(self):
        _Busy.busy_left, _Busy.retry_after = 1, None
        with self.assertRaises(errors.Unavailable):
            ringattn.Client(self.url, timeout=10).info()
        self.assertEqual(_Busy.calls, 1)


if __name__ == "__main__":
    unittest.main()
