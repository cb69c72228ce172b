"""Where manifest and shard bytes come from: the one place the data code opens a URL.

A URL is a local path, an fsspec URL (``s3://``, ``gs://``, ``https://``, ``file://``, ...: read through the repo's
``storage`` layer, credentials and endpoint from the usual environment, e.g. ``AWS_ENDPOINT_URL`` for MinIO, Ceph or
R2) or a webdataset ``pipe:cmd``. Every reader (``Manifest.load``, ``ReadShards``, the start-up existence check)
goes through ``read_text`` / ``ShardOpener`` / ``missing_local``.

Remote reads survive transient errors (a refused connection, a server restart, HTTP 5xx): opening a shard is retried
with backoff until ``STORAGE_RETRY_DEADLINE_S`` (``storage.retry``), and a read that breaks mid-shard reopens the
object at the byte it had reached, under the same deadline. What still fails (a missing object, the deadline passed:
``storage.StorageError`` naming the URL) reaches ``ReadShards`` as an ``OSError``, a counted ``shard_read_error``.

``data.cache_dir`` turns on a local shard cache: a remote shard is downloaded whole into it once (retried whole) and
read from local disk afterwards, so later epochs cost one metadata request per shard (the ETag check that keeps a
rewritten shard from being served stale) instead of its bytes. ``data.cache_limit_gb`` bounds the folder: least
recently used shards are deleted first (webdataset's ``LRUCleanup``). A host that gives no version of an object (no
ETag nor Last-Modified) is read uncached: a copy could not be told stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from webdataset.cache import LRUCleanup
from webdataset.gopen import gopen

import storage
from storage.cache import version_tag

BLOCK_SIZE = 8 * 2**20  # bytes one remote range request fetches ahead (s3fs's default is 5 MiB)


def is_remote(url: str) -> bool:
    """A URL that is not a local path (a pipe command or a scheme)."""
    return url.startswith("pipe:") or "://" in url


def _fsspec(url: str) -> bool:
    """A URL read through fsspec (everything with a scheme except webdataset's ``pipe:``)."""
    return "://" in url and not url.startswith("pipe:")


class ObjectChanged(OSError):
    """A remote object was replaced while a stream read it (``RemoteStream``)."""


class RemoteStream(io.RawIOBase):
    """A seekable read stream of one remote object that reopens it at the current byte after a transient error.

    fsspec's file objects retry a single request a few times at most; a server away for longer (a restart) breaks the
    read. Here each ``readinto`` is one ``storage.retry_call``: on a transient error the broken file is dropped and
    the next attempt reopens the object and seeks back, so the caller sees a continuous stream or ``StorageError``.
    A reopened object whose version (ETag, else modification time: ``storage.cache.version_tag``, from the open file's
    details, else from ``fs.info``: a web host's) is not the one first opened was replaced meanwhile: its bytes past
    the break belong to another file, so the stream ends with ``ObjectChanged`` (a counted ``shard_read_error``)
    rather than splice two versions into one tar.
    Hand-written because fsspec has no resume-on-error reader.
    """

    def __init__(self, url: str, block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        self.url = url
        self.fs, self.path = storage.url_to_fs(url)
        self.block_size = block_size
        self.pos = 0
        self.file: Any = None
        self.opened = False
        self.version: str | None = None  # of the object first opened; None: the host gives none
        storage.retry_call(self._ensure, url=url, what="open")

    def _ensure(self) -> Any:
        if self.file is None:
            if self.opened:
                self.fs.invalidate_cache(self.path)  # the version of the object as it is now, not a listing's
            f = self.fs.open(self.path, "rb", block_size=self.block_size, cache_type="readahead")
            version = version_tag(getattr(f, "details", None) or {})
            if version is None:  # fsspec's HTTP file keeps only name and size: its HEAD has the ETag / Last-Modified
                version = version_tag(self.fs.info(self.path))
            if not self.opened:
                self.opened, self.version = True, version
            elif version != self.version and None not in (version, self.version):
                with contextlib.suppress(Exception):
                    f.close()
                raise ObjectChanged(
                    f"{self.url} was replaced while it was read (version {self.version} -> {version}, at byte "
                    f"{self.pos}): the rest of it is not read, so that no sample mixes two versions"
                )
            if self.pos:
                f.seek(self.pos)
            self.file = f
        return self.file

    def _drop(self) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
        self.file = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence == 2:
            offset += storage.retry_call(lambda: self._ensure().size, url=self.url, what="stat")
        self.pos = max(0, offset)
        if self.file is not None:
            self.file.seek(self.pos)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")

        def once() -> int:
            try:
                data = self._ensure().read(len(view))
            except Exception:
                self._drop()  # reopen at self.pos on the next attempt
                raise
            view[: len(data)] = data
            return len(data)

        n = storage.retry_call(once, url=self.url, what="read")
        self.pos += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


DOWNLOAD_TRIES = 3  # downloads of one shard cut short by a replacement of the object, before it is skipped (counted)


@dataclass(frozen=True)
class ShardOpener:
    """Opens shards for ``ReadShards`` (picklable: DataLoader workers get a copy).

    Args:
        cache_dir: local folder of the shard cache (``data.cache_dir``); None reads remote shards as streams.
        cache_limit_bytes: bound of the cache folder (``data.cache_limit_gb``); 0 means no bound.
    """

    cache_dir: str | None = None
    cache_limit_bytes: int = 0

    @classmethod
    def from_config(cls, data: Any) -> ShardOpener:
        cache = getattr(data, "cache_dir", None)
        limit = getattr(data, "cache_limit_gb", None)
        if limit is not None and limit < 0:
            raise ValueError(f"data.cache_limit_gb={limit} must be >= 0 (0: no bound)")
        return cls(str(Path(cache).expanduser()) if cache else None, int((limit or 0) * 2**30))

    def __call__(self, url: str) -> BinaryIO:
        """A binary read stream of ``url``; the caller closes it."""
        if not _fsspec(url):
            return gopen(url, "rb")
        if not storage.is_remote(url):
            return storage.local_path(url).open("rb")
        if self.cache_dir is None:
            return io.BufferedReader(RemoteStream(url), buffer_size=1 << 20)
        return self.cached(url)

    def cached(self, url: str) -> BinaryIO:
        """The local cache copy of the remote shard ``url``, open for reading (downloaded whole when absent or out of
        date; opened before the cache is trimmed, so even a shard larger than the bound is read once).

        A download is kept only when the object's version after it is the one before: s3fs resumes a broken download
        with a Range GET and fetches a large object in concurrent ranged parts, none tied to a version, so a shard
        replaced meanwhile would come down as two versions spliced. Such a download is made again (the new version
        whole), and after ``DOWNLOAD_TRIES`` replacements in a row the shard is a counted ``ObjectChanged``."""
        fs, path = storage.url_to_fs(url)
        root = Path(self.cache_dir)
        for _ in range(DOWNLOAD_TRIES):
            info = self._info(fs, path, url)
            tag = version_tag(info)
            if tag is None:  # no ETag nor modification time: a cached copy could be stale, read the object instead
                return io.BufferedReader(RemoteStream(url), buffer_size=1 << 20)
            version = hashlib.sha256(f"{url}\0{info.get('size')}\0{tag}".encode()).hexdigest()[:20]
            dest = root / "shards" / f"{version}-{path.rsplit('/', 1)[-1]}"
            with contextlib.suppress(FileNotFoundError):  # absent, or evicted by another process just now
                stream = dest.open("rb")
                os.utime(dest)  # most recently used: evicted last
                return stream
            partial = root / "partial"  # outside shards/: the cleanup never deletes a download in progress
            partial.mkdir(parents=True, exist_ok=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=partial, prefix=dest.name + ".")
            os.close(fd)
            try:
                storage.retry_call(lambda t=tmp: fs.get_file(path, t), url=url, what="download")
                after = self._info(fs, path, url)
                if version_tag(after) != tag or after.get("size") != info.get("size"):
                    continue  # replaced during the download: the copy may hold both versions
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            stream = dest.open("rb")
            if self.cache_limit_bytes:
                self._trim(dest)
            return stream
        raise ObjectChanged(f"{url} was replaced during each of {DOWNLOAD_TRIES} downloads: not read")

    @staticmethod
    def _info(fs: Any, path: str, url: str) -> dict:
        fs.invalidate_cache(path)
        return storage.retry_call(lambda: fs.info(path), url=url, what="stat")

    def _trim(self, keep: Path) -> None:
        """Delete least recently used shards until the cache holds at most ``cache_limit_bytes`` (the shard just
        downloaded is touched first, so it goes last; a reader that already opened a deleted shard keeps reading)."""
        os.utime(keep, (time.time(), time.time()))
        LRUCleanup(
            str(Path(self.cache_dir) / "shards"), self.cache_limit_bytes, keyfn=os.path.getmtime, interval=None
        ).cleanup()


def open_url(url: str) -> BinaryIO:
    """A binary read stream of ``url`` (no shard cache); the caller closes it."""
    return ShardOpener()(url)


def read_text(url: str) -> str:
    """The whole of ``url`` as UTF-8 text (remote reads retried on transient errors)."""
    if url.startswith("pipe:"):
        with gopen(url, "rb") as stream:
            return stream.read().decode("utf-8")
    if _fsspec(url):
        return storage.read_text(url)
    with open(url, encoding="utf-8") as f:
        return f.read()


def missing_local(urls: list[str]) -> list[str]:
    """The local paths among ``urls`` that are not files (remote URLs are not checked: that would cost a request)."""
    return [u for u in urls if not is_remote(u) and not os.path.isfile(u)]
