"""Mining inputs on local disk or an object store (``s3://``, ``gs://``, any fsspec URL), through ``storage``.

A source path is a local path or a URL; either may hold a brace range (``{00000..00099}.tar``, webdataset's and
img2dataset's notation, expanded with ``braceexpand``) or a glob. Credentials and endpoints come from the usual
environment, as everywhere in ``storage`` (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``
for MinIO / Ceph / R2, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS); every Ray node needs them in its environment.

A task reads a remote tar from a local copy (``local_copies``): one whole-object download per task, retried on
transient errors until ``STORAGE_RETRY_DEADLINE_S`` (``storage.retry``), into a temporary folder of the node's own
disk (``$TMPDIR``) that the task removes when it ends. The map pass streams a tar member by member and the write
pass reads every kept image back at its byte offset: thousands of small ranged reads per tar would each pay a round
trip to the store, one download pays it once (a tar is ~0.3-1 GB; the disk of one tar per worker is the price).
A storage error that lasts past its deadline fails the task (``storage.StorageError``, naming the URL; a rerun
redoes the task), never a counted skip: the input is not known to be bad.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import storage
from storage.cache import version_tag

__all__ = [
    "exists",
    "expand",
    "glob",
    "has_glob",
    "is_remote",
    "isdir",
    "isfile",
    "local_copies",
    "read_range",
    "versions",
]

is_remote = storage.is_remote


def expand(path: str) -> list[str]:
    """``path`` with its brace ranges expanded (``a/{0..2}.tar`` -> three paths); ``[path]`` without braces, or when
    a local path of that exact name exists."""
    if "{" not in path or (not is_remote(path) and os.path.exists(path)):
        return [path]
    from braceexpand import braceexpand

    return list(braceexpand(path))


def has_glob(path: str) -> bool:
    """Whether ``path`` is a glob pattern (``*``, ``?`` or ``[``)."""
    return any(ch in path for ch in "*?[")


def exists(path: str) -> bool:
    return storage.exists(path)


def isdir(path: str) -> bool:
    return storage.isdir(path)


def isfile(path: str) -> bool:
    return storage.isfile(path)


def glob(pattern: str) -> list[str]:
    """Paths matching ``pattern`` (a local path or a URL), sorted; URLs keep their protocol."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(pattern))
    fs, path = storage.url_to_fs(pattern)
    fs.invalidate_cache()
    found = storage.retry_call(lambda: fs.glob(path), url=pattern, what="list")
    return sorted(fs.unstrip_protocol(p) for p in found)


def versions(paths: Iterable[str]) -> dict[str, str]:
    """What tells each input's current content from a rewrite of it: ``size:mtime_ns`` of a local file, ``size:tag``
    of an object (its ETag, else its modification time: ``storage.cache.version_tag``); ``missing`` for a path that
    names nothing. Several objects of one folder are read from its listing (a page per 1,000 objects), a single
    object from its own metadata (one request).

    The work files of a run are keyed by these (labels.pipeline), and a task checks its inputs against them before
    and after reading, so that an input replaced between two passes or two runs is never read half old, half new."""
    paths = list(paths)
    out: dict[str, str] = {}
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        if is_remote(path):
            by_folder.setdefault(path.rstrip("/").rsplit("/", 1)[0], []).append(path)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out[path] = "missing"
            continue
        out[path] = f"{st.st_size}:{st.st_mtime_ns}"
    for folder, urls in by_folder.items():
        for url, e in _object_infos(folder, urls).items():
            out[url] = "missing" if e is None else f"{e.get('size')}:{version_tag(e)}"
    return {path: out[path] for path in paths}


def _object_infos(folder: str, urls: list[str]) -> dict[str, dict | None]:
    """URL -> ``fs.info`` of each of the objects ``urls`` of one folder (None: absent): the folder's listing for
    several, the object's own metadata for one, or for an object the listing gives without a size or version. A web
    host (``http(s)://``) is asked object by object: its listing, an HTML page when there is one, has neither, so the
    listing and an object's own metadata would never agree."""
    fs, inner = storage.url_to_fs(folder)
    fs.invalidate_cache(inner)
    listed: dict[str, dict] = {}
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if len(urls) > 1 and not protocols & {"http", "https"}:
        entries = storage.retry_call(lambda: fs.ls(inner, detail=True), url=folder, what="list")
        listed = {e["name"].rstrip("/"): e for e in entries}
    found: dict[str, dict | None] = {}
    for url in urls:
        path = storage.url_to_fs(url)[1].rstrip("/")
        entry = listed.get(path)
        if entry is None or entry.get("size") is None or version_tag(entry) is None:

            def info(path=path) -> dict | None:
                try:
                    return fs.info(path)
                except FileNotFoundError:
                    return None

            entry = storage.retry_call(info, url=url, what="stat")
        found[url] = entry
    return found


def read_range(path: str, offset: int = 0, size: int = -1) -> bytes:
    """``size`` bytes at ``offset`` of ``path`` (the whole file when size < 0); a remote path is one ranged read,
    retried on transient errors."""
    if not is_remote(path):
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read() if size < 0 else f.read(size)
    fs, inner = storage.url_to_fs(path)
    end = None if size < 0 else offset + size
    return storage.retry_call(lambda: fs.cat_file(inner, start=offset, end=end), url=path, what="read")


@contextlib.contextmanager
def local_copies(paths: Iterable[str]) -> Iterator[dict[str, str]]:
    """``{url: local path}`` for every remote path in ``paths`` (local paths are left out: read them in place),
    downloaded once each into a temporary folder removed when the block ends.

    Raises:
        FileNotFoundError: a remote path names no object.
        storage.StorageError: a download kept failing transiently (the URL is in the message).
    """
    remote = list(dict.fromkeys(p for p in paths if is_remote(p)))
    if not remote:
        yield {}
        return
    folder = tempfile.mkdtemp(prefix="mine_labels-inputs-")
    try:
        copies = {}
        for i, url in enumerate(remote):
            dst = os.path.join(folder, str(i), url.rstrip("/").rsplit("/", 1)[-1])
            os.makedirs(os.path.dirname(dst))
            fs, inner = storage.url_to_fs(url)
            storage.retry_call(lambda fs=fs, inner=inner, dst=dst: fs.get_file(inner, dst), url=url, what="download")
            copies[url] = dst
        yield copies
    finally:
        shutil.rmtree(folder, ignore_errors=True)
