"""Work files of the per-shard passes: line-safe JSONL records and small JSON stats, written atomically.

Every pass task writes its outputs under a temporary name, renames them into place, and writes its
``stats.json`` LAST: a task whose stats file exists is complete, so a rerun after a crash (kill -9
of the driver or of a worker) skips it and redoes only the tasks that were in flight.

Lines are written by ``tracking.textio.json_line`` (the repo's one line-safe JSONL writer): U+0085, U+2028 and
U+2029 (which ``str.splitlines`` treats as line breaks) never appear raw, and readers split on ``"\\n"`` only.

The work folder may be an object-store URL (``output=s3://...``, docs/labels_distributed.md "Output on a bucket"):
then a task writes its files into a temporary folder of its own node (``$TMPDIR``) and ``TaskFiles.commit`` uploads
them under an attempt-unique prefix ``<task folder>/<attempt>/``, its ``stats.json`` last, and then creates the
task's commit marker ``commit.json`` (naming that prefix) with an exclusive PUT: the first attempt to commit wins, a
later one (a survivor of a killed run, a duplicate Ray retry) finds the marker taken and its files are never read.
Readers follow the marker (``committed_folder``) and read byte ranges of objects. On local disk nothing changes:
the task writes in place and its ``stats.json`` is the marker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import orjson

import storage
from tracking.textio import json_line

log = logging.getLogger(__name__)
COMMIT = "commit.json"  # a remote task's commit marker: {"files": "<attempt prefix>"}
STATS = "stats.json"  # a task's stats record (on local disk also its commit marker)

# orjson writes U+0085/U+2028/U+2029 raw, as json.dumps(ensure_ascii=False) does: escaped like tracking.textio does.
_RAW_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def dumps_line(obj) -> bytes:
    """One JSONL line (UTF-8 JSON, no spaces, trailing newline, no raw line separator in any value).

    Encoded by orjson (the passes write and read every sample three times; it is ~5x faster than ``json``), whose
    bytes equal ``tracking.textio.json_line``'s for the passes' records (strings, ints, lists, str-keyed dicts,
    rounded scores); what orjson refuses (a lone surrogate from a ``\\ud800`` escape in input JSON, an int past 64
    bits) goes through ``json_line``. Floats below 1e-4 would be written ``0.00001`` rather than ``1e-05``: the same
    value.
    """
    try:
        data = orjson.dumps(obj)
    except TypeError:
        return json_line(obj, separators=(",", ":")).encode("utf-8")
    if not data.isascii():
        for raw, escaped in _RAW_BREAKS:
            data = data.replace(raw, escaped)
    return data + b"\n"


def loads_line(line: bytes):
    """A ``dumps_line`` record (orjson; ``json`` for what orjson refuses, e.g. an escaped lone surrogate)."""
    try:
        return orjson.loads(line)
    except ValueError:
        return json.loads(line)


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store (or any non-local fsspec) URL."""
    return storage.is_remote(path)


def write_lines_atomic(path: str, lines: Iterable[bytes]) -> int:
    """Write encoded lines to ``path`` via a temp file + rename (remote: one upload); returns the byte count."""
    if is_remote(path):
        data = b"".join(lines)
        storage.write_bytes(path, data)
        return len(data)
    tmp = path + ".tmp"
    n = 0
    with open(tmp, "wb") as f:
        for line in lines:
            f.write(line)
            n += len(line)
    os.replace(tmp, path)
    return n


def read_range(path: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start:end`` of a file or object (remote: one ranged GET, retried on transient errors)."""
    if is_remote(path):
        if end is not None and end <= start:
            return b""
        fs, inner = storage.url_to_fs(path)
        if start == 0 and end is None:  # the whole object: no Range header (a range of an empty object is a 416)
            return storage.retry_call(lambda: fs.cat_file(inner), url=path, what="read")
        return storage.retry_call(lambda: fs.cat_file(inner, start=start, end=end), url=path, what="read")
    with open(path, "rb") as f:
        f.seek(start)
        return f.read() if end is None else f.read(end - start)


BATCH = 64  # remote reads issued at once by ``read_ranges`` (fsspec's async batch)


def read_ranges(paths: list[str], starts: list[int] | None = None, ends: list[int | None] | None = None):
    """The bytes of each ``(path, start, end)`` in order (whole files by default; ``end`` None: to the end).

    Local files are read one after the other, as ``read_range`` does. Remote objects are fetched ``BATCH`` ranges at
    a time concurrently (fsspec ``cat_ranges``): a task reads one range of each of hundreds of objects, and one
    round trip at a time made those reads most of its time against a store (measured: 3 s of the 3.3 s of a df
    task on moto). Each batch is retried whole on transient errors; empty ranges cost no request."""
    n = len(paths)
    starts = [0] * n if starts is None else starts
    ends = [None] * n if ends is None else ends
    if not n or not is_remote(paths[0]):
        for p, a, b in zip(paths, starts, ends):
            yield b"" if b is not None and b <= a else read_range(p, a, b)
        return
    fs, _ = storage.url_to_fs(paths[0])
    for i in range(0, n, BATCH):
        todo = [
            (k, fs._strip_protocol(paths[k]), None if (starts[k] == 0 and ends[k] is None) else starts[k], ends[k])
            for k in range(i, min(n, i + BATCH))
            if ends[k] is None or ends[k] > starts[k]
        ]

        def fetch(todo=todo) -> list[bytes]:
            got = fs.cat_ranges([t[1] for t in todo], [t[2] for t in todo], [t[3] for t in todo], on_error="return")
            for item in got:
                if isinstance(item, BaseException):
                    raise item
            return got

        found = dict(zip((t[0] for t in todo), storage.retry_call(fetch, url=paths[i], what="read"))) if todo else {}
        for k in range(i, min(n, i + BATCH)):
            yield found.get(k, b"")


def records(data: bytes) -> Iterator:
    """Decoded JSON records of whole ``dumps_line`` lines."""
    for line in data.split(b"\n"):
        if line:
            yield loads_line(line)


def read_lines(path: str, start: int = 0, end: int | None = None) -> Iterator:
    """Decoded JSON records of ``path`` between byte offsets ``start`` and ``end`` (whole lines), read on first use."""
    yield from records(read_range(path, start, end))


def _json_text(obj) -> str:
    # json.dumps, not json.dump: dump streams through the pure-Python encoder (same bytes, several times slower on
    # the per-partition document-frequency tables)
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def write_json_atomic(path: str, obj) -> None:
    """A small JSON record (sorted keys, ASCII), written via a temp file + rename (remote: one PUT)."""
    text = _json_text(obj)
    if is_remote(path):
        storage.write_text(path, text, encoding="ascii")
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: str):
    if is_remote(path):
        return json.loads(storage.read_bytes(path))
    with open(path, encoding="ascii") as f:
        return json.load(f)


def read_jsons(paths: list[str]) -> Iterator:
    """``read_json`` of each path, in order (remote: ``BATCH`` concurrent requests at a time)."""
    if not paths or not is_remote(paths[0]):
        yield from map(read_json, paths)
        return
    for data in read_ranges(paths):
        yield json.loads(data)


def fresh_dir(path: str) -> str:
    """``path`` as an empty folder (what a task in flight at a crash left there is removed)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def done_path(folder: str) -> str:
    """The commit marker of the task whose folder is ``folder``: it exists once the task is complete."""
    return os.path.join(folder, COMMIT if is_remote(folder) else STATS)


def committed_folder(folder: str) -> str:
    """Where a complete task's files are: ``folder`` on local disk; remotely the attempt prefix its marker names."""
    return committed_folders([folder])[0]


def committed_folders(folders: list[str]) -> list[str]:
    """``committed_folder`` of each folder (remote: the markers read ``BATCH`` at a time)."""
    if not folders or not is_remote(folders[0]):
        return list(folders)
    markers = read_jsons([os.path.join(f, COMMIT) for f in folders])
    return [os.path.join(f, m["files"]) for f, m in zip(folders, markers)]


def committed(markers: list[str]) -> set[str]:
    """The commit markers among ``markers`` that exist (remote: one listing per pass folder, not one request each).

    Remote: every key under the pass folder, listed flat (``find``: ListObjectsV2 pages of 1,000 keys, no delimiter),
    markers picked out by depth. A ``glob`` of ``*/commit.json`` walks the task folders one listing request each
    (measured: 1,107 requests for a pass of 1,105 tasks), and a literal prefix is not read as a glob pattern."""
    if not markers or not is_remote(markers[0]):
        return {m for m in markers if os.path.exists(m)}
    found: set[str] = set()
    by_pass: dict[str, list[str]] = {}
    for m in markers:
        by_pass.setdefault(os.path.dirname(os.path.dirname(m)), []).append(m)
    for folder, wanted in by_pass.items():
        fs, inner = storage.url_to_fs(folder)
        root = inner.rstrip("/") + "/"
        fs.invalidate_cache()
        listed = storage.retry_call(lambda fs=fs, root=root: fs.find(root), url=folder, what="list")
        names = set()
        for key in listed:
            parts = key[len(root) :].split("/") if key.startswith(root) else ()
            if len(parts) == 2 and parts[1] == COMMIT:
                names.add(parts[0])
        found.update(m for m in wanted if m.split("/")[-2] in names)
    return found


def upload_folder(local: str, url: str, last: str | None = None) -> None:
    """Upload every file under the local folder ``local`` to ``url/<relative path>``, ``last`` (a relative name) after
    all the others; the whole batch is retried on transient errors (each object appears whole or not at all)."""
    files = sorted(os.path.relpath(os.path.join(d, n), local) for d, _, names in os.walk(local) for n in names)
    fs, inner = storage.url_to_fs(url)
    for batch in ([f for f in files if f != last], [f for f in files if f == last]):
        if batch:
            lpaths = [os.path.join(local, f) for f in batch]
            rpaths = [f"{inner.rstrip('/')}/{f}" for f in batch]
            storage.retry_call(lambda lp=lpaths, rp=rpaths: fs.put(lp, rp), url=url, what="upload")


class TaskFiles:
    """Where one task writes its files (``dir``, a local folder, after ``open``) and how it commits them (``commit``,
    last).

    Local ``folder``: the folder itself, emptied first; ``commit`` writes ``stats.json`` (the marker) into it.
    Remote ``folder``: a temporary folder on this node's disk; ``commit`` uploads it to ``folder/<attempt>/``
    (``stats.json`` last), creates ``folder/commit.json`` exclusively and removes the temporary folder. A task that
    fails before its commit leaves it to ``close_all`` (the pass functions' wrapper calls it whatever happens).
    """

    _open: list[str] = []  # this process's staging folders not yet removed

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.remote = is_remote(folder)
        self.dir = ""

    def open(self) -> TaskFiles:
        if self.remote:
            self.dir = tempfile.mkdtemp(prefix="mine_labels-task-")
            TaskFiles._open.append(self.dir)
        else:
            self.dir = fresh_dir(self.folder)
        return self

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def commit(self, stats: dict) -> None:
        """Write the stats record and, remotely, publish the task (see the class docstring)."""
        write_json_atomic(self.path(STATS), stats)
        if not self.remote:
            return
        attempt = f"a{secrets.token_hex(8)}"
        try:
            upload_folder(self.dir, os.path.join(self.folder, attempt), last=STATS)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            with contextlib.suppress(ValueError):
                TaskFiles._open.remove(self.dir)
        marker = os.path.join(self.folder, COMMIT)
        if storage.create(marker, _json_text({"files": attempt}).encode("ascii")):
            return
        # The marker exists: another attempt of this task committed first (same config: the same result), or this
        # attempt's own PUT went through before a transient error and its retry found it (then it names us).
        if read_json(marker).get("files") != attempt:
            log.warning("%s was committed by another attempt: this attempt's files (%s) are ignored", marker, attempt)
            with contextlib.suppress(Exception):
                storage.remove(os.path.join(self.folder, attempt), recursive=True)

    @classmethod
    def close_all(cls) -> None:
        """Remove this process's remote tasks' staging folders."""
        while cls._open:
            shutil.rmtree(cls._open.pop(), ignore_errors=True)
