"""A strict reader of the regular-file members of a tar stream (what a webdataset shard holds), shared by training
(``datamodules.stages``) and the label miner (``labels.sources.img2dataset``).

Why not ``tarfile`` / ``webdataset.tarfile_to_samples``: both read every member's payload. Exact mid-epoch resume
(``datamodules.stages``) skips the samples a run already consumed by their headers alone, seeking past the data
on a local file (reading and discarding only on an unseekable stream); the label miner's text-only runs skip the
image bytes the same way. (Header parsing speed, the reason this reader was first written, is no longer one: see
benchmarks/bench_data.py ``--tar`` for the figure against ``tarfile_to_samples`` on integer-mtime shards.) It handles
exactly what shards contain: ustar/GNU/PAX headers (PAX ``path``/``size`` and GNU long names), regular files, every
other member type skipped (never followed, never written anywhere). It is explicit about the two ways a shard can end:

* two zero blocks (end-of-archive): a clean end, the generator returns;
* anything else (the stream stops mid-header or mid-data, a header's checksum is wrong): ``TarFormatError``, so a
  truncated or corrupt shard is never mistaken for a shorter intact one (``tarfile`` silently stops at a header that
  is cut short).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")


class TarFormatError(ValueError):
    """The tar stream is truncated or corrupt."""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        while len(data) < size:  # a raw or pipe stream may return short reads before the end
            more = stream.read(size - len(data))
            if not more:
                raise TarFormatError(f"stream ended {size - len(data)} bytes early (truncated tar)")
            data += more
    return data


def _skip(stream: BinaryIO, size: int, seekable: bool) -> None:
    if seekable:
        # Seeking past the end raises nothing; a truncated file then fails at the next header read.
        stream.seek(size, 1)
        return
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            raise TarFormatError("stream ended inside a member (truncated tar)")
        size -= len(chunk)


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number field {field!r} in a tar header") from None


def _pax_records(body: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a PAX extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(body[pos:space])
        except ValueError:
            raise TarFormatError("bad PAX record length") from None
        if length <= 0:
            break
        key, _, value = body[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def iter_members(
    stream: BinaryIO, wanted: Callable[[str], bool | None] = lambda name: True, pos: int = 0
) -> Iterator[dict]:
    """Yield ``{"fname", "data", "offset", "size"}`` for the regular files of a tar stream, in stream order.

    Args:
        stream: the tar bytes, positioned at a header.
        wanted: per member name: ``True`` reads its data, ``None`` yields the member with ``data=None`` and skips its
            payload (a seek on a seekable stream), ``False`` skips it without yielding it.
        pos: the stream offset of the first header (``offset`` of a member is where its data starts).

    Raises ``TarFormatError`` when the stream is truncated or a header is corrupt; returns normally only at a proper
    end-of-archive block.
    """
    seekable = _seekable(stream)
    pax: dict[str, str] = {}
    long_name: bytes | None = None
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            raise TarFormatError("stream ended without the end-of-archive block (truncated tar)")
        pos += BLOCK
        if header == ZERO_BLOCK:
            return
        checksum = _number(header[148:156])
        if checksum != sum(header) - sum(header[148:156]) + 8 * 0x20:  # the checksum field counts as spaces
            raise TarFormatError("tar header checksum mismatch (corrupt tar)")
        size = _number(header[124:136])
        kind = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"g", b"L"):  # PAX (per-member or global) extended header, GNU long name
            body = _read_exact(stream, padded)[:size]
            pos += padded
            if kind == b"x":
                pax = _pax_records(body)
            elif kind == b"L":
                long_name = body.rstrip(b"\0")
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        fname = pax.get("path") or name.decode("utf-8", "replace")
        if "size" in pax:
            size = int(pax["size"])
            padded = -(-size // BLOCK) * BLOCK
        pax, long_name = {}, None
        choice = wanted(fname) if kind in REGULAR else False
        if choice:
            yield {"fname": fname, "data": _read_exact(stream, padded)[:size], "offset": pos, "size": size}
        else:
            _skip(stream, padded, seekable)
            if choice is None:
                yield {"fname": fname, "data": None, "offset": pos, "size": size}
        pos += padded
