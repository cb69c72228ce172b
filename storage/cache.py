"""Local copies of remote files and folders a process loads whole (checkpoints, sharded FSDP folders).

A remote checkpoint is downloaded once per version into ``$STORAGE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/billion-scale-vit/remote``, i.e. ``~/.cache/billion-scale-vit/remote``), then read from local
disk: ``torch.load`` can memory-map it, Lightning's FSDP loader (which takes only local folders) can read a sharded
folder, and evaluating or resuming the same checkpoint again downloads nothing. The version is the object's ETag
(or hash, or modification time: ``version_tag``; with none, a fresh copy every time) and size (every object of a
folder), so a new ``last.ckpt`` is fetched again and replaces the older copy of the
same URL; copies of other URLs stay until the cache folder is cleared. A download goes to a temporary folder first
and is renamed into place, so concurrent processes (several ranks on one node) never read a partial copy.

fsspec's own ``filecache::`` / ``simplecache::`` protocols cache single files by URL but do not version a folder of
objects as one unit nor evict the older version of the same URL, hence this small module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from storage.fs import PathLike, _fresh, is_remote, local_path
from storage.retry import retry_call

__all__ = ["CACHE_ENV", "VERSION_FIELDS", "cache_dir", "local_copy", "version_tag"]

CACHE_ENV = "STORAGE_CACHE_DIR"
UNVERSIONED_KEEP_S = 3600  # how long a per-call copy of an unversioned object is left for its reader


def cache_dir() -> Path:
    """Where remote files are copied: ``$STORAGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/billion-scale-vit/remote``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "billion-scale-vit" / "remote"


# The fields fsspec backends give an object's version in (s3fs, gcsfs, local/sftp, http: Last-Modified when the server
# sends no ETag). The size alone is no version: a rewritten shard or checkpoint usually keeps its size (tar pads to
# 10 KiB records, torch.save aligns tensor records).
VERSION_FIELDS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "Last-Modified")


def version_tag(info: dict) -> str | None:
    """What tells this version of an object from a rewrite of it (``fs.info``'s ETag, hash or modification time);
    None when the backend gives none, and a cached copy cannot be told current."""
    tag = next((info[k] for k in VERSION_FIELDS if info.get(k)), None)
    return None if tag is None else str(tag)


def _version(entries: list[tuple[str, dict]]) -> str:
    digest = hashlib.sha256()
    for name, info in sorted(entries):
        tag = version_tag(info)
        if tag is None:  # nothing to compare: a fresh copy each time rather than a stale one
            tag = os.urandom(8).hex()
        digest.update(f"{name}\0{info.get('size')}\0{tag}\n".encode())
    return digest.hexdigest()[:16]


def local_copy(url: PathLike) -> Path:
    """A local path holding the content of ``url``: the path itself when local, else a cached copy of the remote
    file or folder (see the module docstring), downloaded when missing or out of date.

    Raises:
        FileNotFoundError: nothing at ``url``.
        storage.StorageError: the download kept failing transiently.
    """
    if not is_remote(url):
        return local_path(url)
    fs, path = _fresh(url)
    path = path.rstrip("/")
    name = path.rsplit("/", 1)[-1]

    def listing() -> list[tuple[str, dict]]:
        # An object at exactly this key wins over a prefix of the same name: the checkpoint writers remove the object
        # before writing a sharded folder there, and write a full file before deleting an older folder
        # (lit_modules.strategy), so when both exist the object is the newer one.
        if not fs.isfile(path) and fs.isdir(path):
            return [(p[len(path) + 1 :], info) for p, info in fs.find(path, detail=True).items()]
        return [("", fs.info(path))]

    entries = retry_call(listing, url=url, what="stat")
    if not entries:
        raise FileNotFoundError(f"{url}: no such file or folder")
    folder = cache_dir() / hashlib.sha256(str(url).encode()).hexdigest()[:16]
    dest = folder / _version(entries) / name
    versioned = all(version_tag(info) is not None for _, info in entries)
    if dest.exists():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".download-"))
    try:
        if entries == [("", entries[0][1])] and not entries[0][0]:
            retry_call(lambda: fs.get_file(path, str(tmp / name)), url=url, what="download")
        else:
            for rel, _ in entries:
                target = tmp / name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                retry_call(
                    lambda r=rel, t=target: fs.get_file(f"{path}/{r}", str(t)), url=f"{url}/{rel}", what="download"
                )
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp / name, dest)
        except OSError:
            if not dest.exists():  # another process renamed the same version into place first: use that one
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for other in folder.iterdir():  # older versions of this URL
        # Copies of an unversioned object are one per call: another process (a rank on this node) may be about to read
        # its own, so only copies over an hour old go.
        if not versioned and time.time() - other.stat().st_mtime < UNVERSIONED_KEEP_S:
            continue
        if other.name != dest.parent.name and not other.name.startswith(".download-"):
            with contextlib.suppress(OSError):
                shutil.rmtree(other)
    return dest
