"""A folder served over plain HTTP by Python's own server (a web host: no S3 API, no ETag)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

_SERVER = """
import functools, http.server, os, re, sys

class H(http.server.SimpleHTTPRequestHandler):
    def send_header(self, k, v):
        if k.lower() != "last-modified" or sys.argv[3] == "1":
            super().send_header(k, v)

    def do_GET(self):
        m = re.fullmatch(r"bytes=(\\d+)-(\\d*)", self.headers.get("Range") or "")
        path = self.translate_path(self.path)
        if sys.argv[4] != "1" or not m or not os.path.isfile(path):
            return super().do_GET()
        with open(path, "rb") as f:
            data = f.read()
        a = int(m.group(1))
        b = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        self.send_header("Content-Length", str(b - a + 1))
        self.send_header("Last-Modified", self.date_time_string(int(os.stat(path).st_mtime)))
        self.end_headers()
        self.wfile.write(data[a : b + 1])

h = functools.partial(H, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), h).serve_forever()
"""


@contextlib.contextmanager
def serve_folder(root: Path, last_modified: bool = True, ranges: bool = False):
    """``root`` served by Python's own HTTP server, a separate process on 127.0.0.1 (a plain web host: no S3 API, no
    ETag; without ``last_modified``, no Last-Modified header either: a host that gives no version of its objects;
    with ``ranges``, it answers a ranged GET with those bytes, as most hosts do, where Python's server sends the
    whole file); yields its base URL."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = [str(int(last_modified)), str(int(ranges))]
    cmd = [sys.executable, "-c", _SERVER, str(port), str(root), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
