"""Start a real `ringattn dev` process for the tests.

The binary comes from $RINGATTN_BIN, else it is built once from the
checkout (go build ./cmd/ringattn) into a temporary directory.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "test-token-7f3a"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DevServer:
    def __init__(self, workers=2, token=TOKEN):
        self.tmp = tempfile.mkdtemp(prefix="ringattn-pytest-")
        binary = os.environ.get("RINGATTN_BIN")
        if not binary:
            binary = os.path.join(self.tmp, "ringattn")
            subprocess.run(["go", "build", "-o", binary, "./cmd/ringattn"], cwd=REPO, check=True)
        port = free_port()
        self.url = "http://127.0.0.1:%d" % port
        self.token = token
        self.log = open(os.path.join(self.tmp, "dev.log"), "w+")
        cmd = [binary, "dev", "--workers", str(workers), "--port", "0", "--http", "127.0.0.1:%d" % port,
               "--data", os.path.join(self.tmp, "data")]
        if token:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("ringattn dev exited %s:\n%s" % (self.proc.returncode, self.output()))
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("ringattn dev not ready within 60 s:\n%s" % self.output())
            time.sleep(0.1)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
