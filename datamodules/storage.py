"""Where manifest and shard bytes come from: the one place the data code opens a URL.

A URL is a local path, or anything webdataset's ``gopen`` opens (``pipe:cmd``, ``http(s)://``, ``gs://``). Every
reader (``Manifest.load``, ``ReadShards``, the start-up existence check) goes through these three functions.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from webdataset.gopen import gopen


def is_remote(url: str) -> bool:
    """A URL that is not a local path (a pipe command or a scheme)."""
    return url.startswith("pipe:") or "://" in url


def open_url(url: str) -> BinaryIO:
    """A binary read stream of ``url``; the caller closes it."""
    return gopen(url, "rb")


def read_text(url: str) -> str:
    """The whole of ``url`` as UTF-8 text."""
    if is_remote(url):
        with open_url(url) as stream:
            return stream.read().decode("utf-8")
    with open(url, encoding="utf-8") as f:
        return f.read()


def missing_local(urls: list[str]) -> list[str]:
    """The local paths among ``urls`` that are not files (remote URLs are not checked: that would cost a request)."""
    return [u for u in urls if not is_remote(u) and not os.path.isfile(u)]
