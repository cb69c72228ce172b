"""A folder served over plain HTTP by Python's own server (a web host: no S3 API, no ETag, ranged GETs only)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


@contextlib.contextmanager
def serve_folder(root: Path, last_modified: bool = True):
    """``root`` served by Python's own HTTP server, a separate process on 127.0.0.1 (a plain web host: no S3 API, no
    ETag, ranged GETs only; without ``last_modified``, no Last-Modified header either: a host that gives no version of
    its objects); yields its base URL."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if last_modified:
        cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    else:
        script = (
            "import functools, http.server, sys\n"
            "class H(http.server.SimpleHTTPRequestHandler):\n"
            "    def send_header(self, k, v):\n"
            "        if k.lower() != 'last-modified':\n"
            "            super().send_header(k, v)\n"
            "h = functools.partial(H, directory=sys.argv[2])\n"
            "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), h).serve_forever()\n"
        )
        cmd = [sys.executable, "-c", script, str(port), str(root)]
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
