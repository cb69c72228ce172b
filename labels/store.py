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

from tracking.textio import json_line


def dumps_line(obj) -> bytes:
    """One JSONL line (UTF-8 JSON, no spaces, trailing newline, no raw line separator in any value)."""
    return json_line(obj, separators=(",", ":")).encode("utf-8")


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
            yield json.loads(line)


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
