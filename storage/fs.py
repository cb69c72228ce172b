"""Paths and URLs through one layer: local paths stay ``pathlib.Path`` (same code and speed as before), URLs
(``s3://``, ``gs://``, ``https://``, ...) go through fsspec. Every module that reads or writes run directories,
checkpoints or data uses these functions instead of ``open`` / ``os.path`` / ``glob`` (CONVENTIONS.md pitfall 22).

Credentials and endpoints come from the usual environment only: s3fs hands them to botocore, which reads
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile, or an instance role) and ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for MinIO, Ceph or R2 (botocore >= 1.31; checked with botocore 1.43 against moto_server in
tests/test_storage.py). gcsfs reads ``GOOGLE_APPLICATION_CREDENTIALS`` / gcloud's default login. Anything fsspec
takes as storage options can also come from ``FSSPEC_<PROTOCOL>_<OPTION>`` variables (fsspec's own config), e.g.
``FSSPEC_S3_ENDPOINT_URL`` for an older botocore.

Atomicity (a reader never sees a torn file):
  * local paths: the bytes go to a temporary file in the target's own folder, then ``os.replace`` renames it over
    the target (atomic on POSIX; the same filesystem by construction);
  * object stores (S3, GCS, Azure, R2, MinIO): an object appears only when its upload completes, a single PUT or
    the final "complete" call of a multipart upload, so the previous object stays readable until the new one is
    whole; a write that fails is aborted (``discard``), never committed half-written. A process killed during an
    upload leaves the old object and, for a multipart upload, unfinished parts the bucket's lifecycle rule
    ``AbortIncompleteMultipartUpload`` removes.
  * other fsspec filesystems: a temporary name next to the target, then ``fs.mv`` (atomic where they rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.utils import get_protocol

from storage.retry import retry_call

__all__ = [
    "OBJECT_STORES",
    "PathLike",
    "as_path",
    "atomic_write",
    "create",
    "exists",
    "glob",
    "is_remote",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_path",
    "makedirs",
    "open_atomic",
    "protocol",
    "read_bytes",
    "read_text",
    "remove",
    "upload",
    "url_to_fs",
    "write_bytes",
    "write_text",
]

PathLike = str | os.PathLike
LOCAL = ("file", "local")
# Object stores: an object becomes visible only once its upload completes (see the module docstring).
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "r2", "oss")


def _text(url: PathLike) -> str:
    return os.fspath(url) if not _is_upath(url) else str(url)


def _is_upath(url: Any) -> bool:
    return type(url).__module__.startswith("upath") and not isinstance(url, Path)


def protocol(url: PathLike) -> str:
    """fsspec's protocol of ``url``: ``"file"`` for a plain path or ``file://``, else ``s3``, ``gs``, ``https``..."""
    if isinstance(url, Path):
        return "file"
    return get_protocol(_text(url))


def is_remote(url: PathLike) -> bool:
    """True for a URL that is not on the local filesystem."""
    return protocol(url) not in LOCAL


def local_path(url: PathLike) -> Path:
    """The local ``Path`` of a plain path or ``file://`` URL (``~`` expanded only as a plain path would be: never).

    Raises:
        ValueError: ``url`` is remote.
    """
    if is_remote(url):
        raise ValueError(f"{url} is not a local path")
    if isinstance(url, Path):
        return url
    text = _text(url)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def as_path(url: PathLike) -> Any:
    """A pathlib-style object for ``url``: ``pathlib.Path`` for a local path (exactly what the code used before),
    a ``upath.UPath`` (universal_pathlib: the pathlib API over fsspec) for a URL. Both support ``/``, ``name``,
    ``parent``, ``suffix`` and ``str()`` (the URL); read and write through the functions of this module."""
    if not is_remote(url):
        return local_path(url)
    if _is_upath(url):
        return url
    from upath import UPath

    return UPath(_text(url))


def join(base: PathLike, *parts: str) -> Any:
    """``base / part / ...`` as ``as_path`` gives it."""
    path = as_path(base)
    for part in parts:
        path = path / part
    return path


def url_to_fs(url: PathLike, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for ``url``: ``fsspec.core.url_to_fs``; instances are cached by fsspec."""
    return fsspec.core.url_to_fs(_text(url), **storage_options)


def _fresh(url: PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """``url_to_fs`` with the listing cache of that path dropped: other processes (another rank, a rerun, a reader)
    write the same bucket, so existence and listings are asked of the server each time."""
    fs, path = url_to_fs(url)
    fs.invalidate_cache(path)
    return fs, path


# --------------------------------------------------------------------------------------------------- reading


def read_bytes(url: PathLike) -> bytes:
    """The whole content of a file or object (remote reads retried on transient errors)."""
    if not is_remote(url):
        return local_path(url).read_bytes()
    fs, path = url_to_fs(url)
    return retry_call(lambda: fs.cat_file(path), url=url, what="read")


def read_text(url: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(url).decode(encoding) if is_remote(url) else local_path(url).read_text(encoding=encoding)


def exists(url: PathLike) -> bool:
    if not is_remote(url):
        return local_path(url).exists()
    fs, path = _fresh(url)
    return retry_call(lambda: fs.exists(path), url=url, what="stat")


def isfile(url: PathLike) -> bool:
    if not is_remote(url):
        return local_path(url).is_file()
    fs, path = _fresh(url)
    return retry_call(lambda: fs.isfile(path), url=url, what="stat")


def isdir(url: PathLike) -> bool:
    """A folder locally; on an object store, a prefix holding at least one object."""
    if not is_remote(url):
        return local_path(url).is_dir()
    fs, path = _fresh(url)
    return retry_call(lambda: fs.isdir(path), url=url, what="stat")


def listdir(url: PathLike) -> list[Any]:
    """The entries directly under ``url`` (files and folders), sorted, as ``as_path`` objects; [] when absent."""
    if not is_remote(url):
        folder = local_path(url)
        return sorted(folder.iterdir()) if folder.is_dir() else []
    fs, path = _fresh(url)

    def ls() -> list[str]:
        try:
            return fs.ls(path, detail=False)
        except FileNotFoundError:
            return []

    base = as_path(url)
    names = sorted({p.rstrip("/").rsplit("/", 1)[-1] for p in retry_call(ls, url=url, what="list")})
    return [base / name for name in names if name]


def glob(url: PathLike, pattern: str) -> list[Any]:
    """Entries under ``url`` matching ``pattern`` (``*`` within one level, e.g. ``"*/run.json"``), sorted, as
    ``as_path`` objects."""
    if not is_remote(url):
        return sorted(local_path(url).glob(pattern))
    fs, path = url_to_fs(url)
    fs.invalidate_cache()  # listings below the root are cached per folder: drop them all (memory only)
    root = path.rstrip("/")
    found = retry_call(lambda: fs.glob(f"{root}/{pattern}"), url=url, what="list")
    base = as_path(url)
    return [join(base, *p[len(root) + 1 :].split("/")) for p in sorted(found)]


# --------------------------------------------------------------------------------------------------- writing


def makedirs(url: PathLike) -> None:
    """Create a folder and its parents; nothing to do on an object store (prefixes exist through their objects)."""
    if not is_remote(url):
        local_path(url).mkdir(parents=True, exist_ok=True)
        return
    fs, path = url_to_fs(url)
    if protocol(url) not in OBJECT_STORES:
        retry_call(lambda: fs.makedirs(path, exist_ok=True), url=url, what="mkdir")


def remove(url: PathLike, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete a file (or, with ``recursive``, a folder / every object under a prefix)."""
    if not is_remote(url):
        path = local_path(url)
        if recursive and path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError) if missing_ok else contextlib.nullcontext():
                path.unlink()
        return
    fs, path = _fresh(url)

    def rm() -> None:
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            if not missing_ok:
                raise

    retry_call(rm, url=url, what="delete")


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def open_atomic(url: PathLike, durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to write ``url`` through; the target appears whole when the block ends without an error, and
    is left as it was when it raises (see the module docstring for how, per backend). Not retried: a stream cannot
    be replayed (``atomic_write`` retries a whole write).

    Args:
        durable: local paths: fsync the file and its folder (checkpoints), so the rename survives a power loss.
    """
    if not is_remote(url):
        target = local_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:  # a named file: f.name says where the bytes go
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if durable:
            _fsync_dir(target.parent)
        return
    fs, path = url_to_fs(url)
    if protocol(url) in OBJECT_STORES:
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()  # aborts a multipart upload; a single PUT was never sent
            f.closed = True  # so close() (or __del__) never commits what was buffered
            raise
        f.close()  # the upload completes here: the object appears whole
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def atomic_write(url: PathLike, write: Callable[[IO[bytes]], Any], durable: bool = False) -> None:
    """Write ``url`` atomically with ``write(file)`` (``open_atomic``); remote writes that fail transiently are
    redone whole (``write`` must be repeatable) until ``STORAGE_RETRY_DEADLINE_S``."""

    def once() -> None:
        with open_atomic(url, durable=durable) as f:
            write(f)

    if not is_remote(url):
        once()
    else:
        retry_call(once, url=url, what="write")


def upload(local: PathLike, url: PathLike) -> None:
    """Copy the local file ``local`` to ``url`` atomically, retried whole on transient errors.

    For a large file (a checkpoint) this beats streaming into ``open_atomic``: fsspec's ``put_file`` sends the parts
    of a multipart upload concurrently (s3fs: ``max_concurrency`` parts at a time; a file object sends them one by
    one), holds no second copy in memory, and a retry re-sends the file without re-creating it. On an object store
    the object appears when the upload completes (s3fs aborts a failed multipart upload); a local ``url`` is a copy
    to a temporary file and a rename.
    """
    source = local_path(local)
    if not is_remote(url):
        import shutil

        atomic_write(url, lambda f: shutil.copyfileobj(source.open("rb"), f, 16 * 2**20), durable=True)
        return
    fs, path = url_to_fs(url)
    if protocol(url) in OBJECT_STORES:
        retry_call(lambda: fs.put_file(str(source), path), url=url, what="upload")
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    retry_call(lambda: (fs.put_file(str(source), tmp), fs.mv(tmp, path)), url=url, what="upload")


def write_bytes(url: PathLike, data: bytes, durable: bool = False) -> None:
    """Replace ``url`` with ``data`` atomically (remote: one PUT, retried)."""
    atomic_write(url, lambda f: f.write(data), durable=durable)


def write_text(url: PathLike, text: str, encoding: str = "utf-8", durable: bool = False) -> None:
    write_bytes(url, text.encode(encoding), durable=durable)


def create(url: PathLike, data: bytes) -> bool:
    """Write ``data`` to ``url`` only if nothing is there yet: True when this call created it, False when it existed.

    Object stores: one exclusive PUT where the backend has one (s3fs sends ``If-None-Match: *``, which AWS S3, MinIO
    and moto honour: two writers racing, exactly one wins); other fsspec filesystems check, then write (fsspec's
    ``mode="create"``: a window between the two). Local paths: ``O_EXCL`` on a temporary name linked into place, so
    the file appears whole and only once. Remote writes are retried on transient errors; a retried PUT that finds
    its own earlier attempt committed answers False (the caller cannot tell it apart from another writer).
    """
    if not is_remote(url):
        target = local_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
            try:
                os.link(tmp, target)  # fails if the target exists: exclusive, and the content is already whole
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fs, path = url_to_fs(url)

    def put() -> bool:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    return retry_call(put, url=url, what="create")
