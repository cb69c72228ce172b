"""Work files of the per-shard passes: line-safe JSONL records and small JSON stats, written atomically.

Every pass task writes its outputs under a temporary name, renames them into place, and writes its
``stats.json`` LAST: a task whose stats file exists is complete, so a rerun after a crash (kill -9
of the driver or of a worker) skips it and redoes only the tasks that were in flight.

Lines are written by ``tracking.textio.json_line`` (the repo's one line-safe JSONL writer): U+0085, U+2028 and
U+2029 (which ``str.splitlines`` treats as line breaks) never appear raw, and readers split on ``"\\n"`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import orjson

from tracking.textio import json_line

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


def write_lines_atomic(path: str, lines: Iterable[bytes]) -> int:
    """Write encoded lines to ``path`` via a temp file + rename; returns the byte count."""
    tmp = path + ".tmp"
    n = 0
    with open(tmp, "wb") as f:
        for line in lines:
            f.write(line)
            n += len(line)
    os.replace(tmp, path)
    return n


def read_lines(path: str, start: int = 0, end: int | None = None) -> Iterator:
    """Decoded JSON records of ``path`` between byte offsets ``start`` and ``end`` (whole lines)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    for line in data.split(b"\n"):
        if line:
            yield loads_line(line)


def write_json_atomic(path: str, obj) -> None:
    """A small JSON record (sorted keys, ASCII), written via a temp file + rename."""
    tmp = path + ".tmp"
    # json.dumps, not json.dump: dump streams through the pure-Python encoder (same bytes, several times slower on
    # the per-partition document-frequency tables)
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path, encoding="ascii") as f:
        return json.load(f)


def fresh_dir(path: str) -> str:
    """``path`` as an empty folder (what a task in flight at a crash left there is removed)."""
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path
