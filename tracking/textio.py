"""Line-safe text for files other programs read line by line (JSONL, TSV, CSV, Markdown tables).

Python's ``str.splitlines`` (and many JSONL and CSV tools) end a line at any Unicode line boundary:
``\\n``, ``\\r``, ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, U+0085, U+2028 and U+2029. ``json.dumps`` escapes the
control characters below U+0020 but, with ``ensure_ascii=False``, writes U+0085/U+2028/U+2029 raw, so a value
holding one splits its record in two for such a reader. Writers here escape every one of them inside a value;
readers split on ``"\\n"`` only. No library does both for JSONL and delimited cells, hence this small module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LINE_BREAKS",
    "json_line",
    "write_jsonl",
    "split_lines",
    "read_jsonl",
    "escape_cell",
    "unescape_cell",
]

# Every character str.splitlines breaks on (https://docs.python.org/3/library/stdtypes.html#str.splitlines).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Left raw by json.dumps(ensure_ascii=False); the others are below U+0020 and json escapes them already.
_JSON_RAW_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_TABLE = str.maketrans(_JSON_RAW_BREAKS)
# Cells: a backslash escape per break and tab, reversible by unescape_cell. A backslash is doubled only where
# unescape_cell would otherwise read it as an escape, so ordinary text ("model \\ data scale") stays as it is.
_CELL_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_CELL_ESCAPES.update({c: f"\\u{ord(c):04x}" for c in LINE_BREAKS if c not in _CELL_ESCAPES})
_ESCAPE_LETTERS = {"n": "\n", "r": "\r", "t": "\t"}


def json_line(obj: Any, *, sort_keys: bool = False, separators: tuple[str, str] | None = None) -> str:
    """``obj`` as one JSON line ending in ``"\\n"``, UTF-8 text kept readable, no raw line break in any value.

    Args:
        obj: any JSON-serialisable value.
        sort_keys, separators: as ``json.dumps`` (canonical writers pass ``sort_keys=True, separators=(",", ":")``).

    Returns:
        The line; ``json.loads`` of it (without the newline) equals ``json.loads(json.dumps(obj))``.
    """
    text = json.dumps(obj, ensure_ascii=False, sort_keys=sort_keys, separators=separators)
    # Outside strings JSON holds only ASCII, so translating the whole text only touches string values; ASCII text
    # (the common case, checked in C) holds none of the three.
    return (text if text.isascii() else text.translate(_JSON_TABLE)) + "\n"


def write_jsonl(path: os.PathLike | str, records: Iterable[Any], *, append: bool = False) -> int:
    """Write ``records`` to ``path`` as JSON lines (``json_line``); returns the number written."""
    count = 0
    with open(path, "a" if append else "w", encoding="utf-8", newline="") as f:
        for record in records:
            f.write(json_line(record))
            count += 1
    return count


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """``text`` split on ``"\\n"`` only (unlike ``str.splitlines``); no empty item for a final newline."""
    parts = text.split("\n")
    tail = parts.pop()  # "" when text ends in a newline
    lines = [p + "\n" for p in parts] if keepends else parts
    if tail:
        lines.append(tail)
    return lines


def read_jsonl(path: os.PathLike | str, complete_only: bool = False) -> Iterator[Any]:
    """The records of a JSON-lines file, split on ``"\\n"`` only; blank lines are skipped.

    Args:
        complete_only: leave out a last line without its newline (a writer killed mid-line).
    """
    for line in split_lines(Path(path).read_text(encoding="utf-8"), keepends=True):
        if complete_only and not line.endswith("\n"):
            continue
        if line.strip():
            yield json.loads(line)


def escape_cell(value: Any, extra: str = "") -> str:
    """``str(value)`` for one TSV/CSV/Markdown cell that never spans lines: tab and every line break as a backslash
    escape (``\\t``, ``\\n``, ``\\r``, ``\\u2028``...); ``extra`` characters (``"|"`` for Markdown) get a backslash
    in front. ``unescape_cell`` gives the value back."""
    text = str(value)
    out = []
    for i, c in enumerate(text):
        if c in _CELL_ESCAPES:
            out.append(_CELL_ESCAPES[c])
        elif c in extra:
            out.append("\\" + c)
        elif c == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            # Doubled when the next character would make it read as an escape (itself escaped, or a letter).
            out.append("\\\\" if nxt and (nxt in "\\nrtu" or nxt in _CELL_ESCAPES or nxt in extra) else c)
        else:
            out.append(c)
    return "".join(out)


def unescape_cell(text: str, extra: str = "") -> str:
    """The value ``escape_cell(value, extra)`` escaped; a backslash that starts no escape is kept."""
    out, i = [], 0
    while i < len(text):
        c, nxt = text[i], text[i + 1 : i + 2]
        hexa = text[i + 2 : i + 6]
        if c == "\\" and nxt == "u" and len(hexa) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexa):
            out.append(chr(int(hexa, 16)))
            i += 6
        elif c == "\\" and nxt and (nxt in _ESCAPE_LETTERS or nxt == "\\" or nxt in extra):
            out.append(_ESCAPE_LETTERS.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
