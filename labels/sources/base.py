"""What every source adapter yields: one ``Unit`` per input item, in a deterministic order."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

from PIL import Image

# Raster formats a source may hold; SVG is rendered (see labels.images).
RASTER_EXTS = ("jpg", "jpeg", "png", "webp")


class InputError(ValueError):
    """An input the pipeline cannot start on: a missing path or a malformed manifest (names file and line)."""


@dataclass
class Unit:
    """One input item as read by an adapter (a file, a tar sample or a manifest row).

    Attributes:
        source: the source's name (recorded in each sample's json).
        uid: a stable, human-readable locator (relative path, ``tar:key``, ``manifest:line``).
        signals: signal type -> texts (empty strings already dropped).
        path: the file holding the image bytes (a tar for img2dataset), or None.
        offset: byte offset of the image inside ``path``.
        size: byte count of the image, or -1 for the whole file.
        ext: image format: ``svg`` or one of ``RASTER_EXTS``.
        data: the image bytes when the adapter already read them (it hashes them for the key).
        skip: a skip reason known at read time (the unit is counted, never written).
        site: where the item was published, when the source says (img2dataset: the host of the json ``url``):
            a curation group (``site=<host>``) and the report's "top sources" of a label.
    """

    source: str
    uid: str
    signals: dict[str, list[str]] = field(default_factory=dict)
    path: str | None = None
    offset: int = 0
    size: int = -1
    ext: str = ""
    data: bytes | None = None
    skip: str | None = None
    site: str | None = None


def add_signal(signals: dict[str, list[str]], name: str, value) -> None:
    """Append a text (or each of a list of texts) to a signal, dropping empty ones; numbers become text."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None or isinstance(v, (dict, list, tuple)):
            continue
        text = v if isinstance(v, str) else str(v)
        if not text.isascii():
            # A lone surrogate (valid JSON escape "\ud800") cannot be UTF-8 encoded later: replace it here.
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        text = text.strip()
        if text:
            signals.setdefault(name, []).append(text)


def require_path(path: str, what: str) -> str:
    """Fail at once, naming the path, when an input path does not exist."""
    if not os.path.exists(path):
        raise InputError(f"{what} not found: {path}")
    return path


def sniff_raster(data: bytes) -> str | None:
    """Cheap header check (no pixel decode): None when PIL recognises an image, else a skip reason."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.size  # noqa: B018 - the header is parsed on open; touching size documents the intent
    except Image.DecompressionBombError:
        return "image_too_large"
    except Exception:  # PIL raises many types for garbage bytes
        return "corrupt_image"
    return None


def sorted_walk(root: str):
    """``os.walk`` in sorted order (folders and files), following the files symlinks point to."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        yield dirpath, sorted(filenames)
