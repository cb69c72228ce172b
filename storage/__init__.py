"""One filesystem layer for local paths and object-store URLs (``s3://``, ``gs://``, ``https://``, ``file://``).

    import storage
    run = storage.join("s3://bucket/runs", "my-run")          # upath.UPath; a local path stays pathlib.Path
    storage.write_text(run / "run.json", text)                # atomic: temp + rename locally, one PUT remotely
    storage.read_text(run / "run.json"); storage.glob("s3://bucket/runs", "*/run.json")
    storage.local_copy(run / "checkpoints" / "last.ckpt")     # a cached local copy of a remote checkpoint

``storage.fs``: paths, reads, atomic writes, listings (module docstring: credentials, endpoints, atomicity);
``storage.retry``: transient-error retries with a deadline (``STORAGE_RETRY_DEADLINE_S``) ending in a
``StorageError`` naming the URL; ``storage.cache``: local copies of remote checkpoints (``STORAGE_CACHE_DIR``).
"""

from storage.cache import cache_dir, local_copy
from storage.fs import (
    OBJECT_STORES,
    PathLike,
    as_path,
    atomic_write,
    create,
    exists,
    glob,
    is_remote,
    isdir,
    isfile,
    join,
    listdir,
    local_path,
    makedirs,
    open_atomic,
    protocol,
    read_bytes,
    read_text,
    remove,
    upload,
    url_to_fs,
    write_bytes,
    write_text,
)
from storage.retry import StorageError, deadline_s, is_transient, retry_call

__all__ = [
    "OBJECT_STORES",
    "PathLike",
    "StorageError",
    "as_path",
    "atomic_write",
    "cache_dir",
    "create",
    "deadline_s",
    "exists",
    "glob",
    "is_remote",
    "is_transient",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_copy",
    "local_path",
    "makedirs",
    "open_atomic",
    "protocol",
    "read_bytes",
    "read_text",
    "remove",
    "retry_call",
    "upload",
    "url_to_fs",
    "write_bytes",
    "write_text",
]
