"""Debian ``tuxpaint-stamps-default``: one unit per stamp image below the root.

A stamp is ``name.png`` or ``name.svg`` (when both exist the ``.png`` is used and the ``.svg`` is not
read) with an optional ``name.txt`` whose first line is the English description (the other lines
are translations, ``fr.utf8=...``). Signals: the description (as signal type ``text_signal``) and
``category``: the folder path relative to the root (``animals/birds``). ``name_mirror.png`` files are
hand-made mirror images of stamp ``name``: near-duplicates that would straddle the split, so they are
units with skip reason ``mirror_variant``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from labels.sources.base import Unit, add_signal, require_path, sorted_walk

IMAGE_EXTS = ("png", "svg")  # preference order when a stamp ships both


def read_description(txt_path: str) -> str:
    """The English (first) line of a stamp's description file, or ''."""
    with open(txt_path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    # The English line has no "lang.utf8=" prefix; a file holding only translations has none.
    head = first.split("=", 1)[0]
    return "" if "=" in first and ".utf8" in head else first


def list_tuxpaint(root: str) -> list[str]:
    """Paths (relative to ``root``) of every stamp image (``.png`` preferred over ``.svg``), sorted."""
    require_path(root, "tuxpaint stamps folder")
    out = []
    for dirpath, filenames in sorted_walk(root):
        present = set(filenames)
        stems = sorted({f.rsplit(".", 1)[0] for f in filenames if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTS})
        for stem in stems:
            ext = next(e for e in IMAGE_EXTS if f"{stem}.{e}" in present)
            out.append(os.path.relpath(os.path.join(dirpath, f"{stem}.{ext}"), root))
    return out


def iter_tuxpaint(
    root: str,
    name: str = "tuxpaint",
    text_signal: str = "description",
    limit: int | None = None,
    files: list[str] | None = None,
) -> Iterator[Unit]:
    """Units for every stamp below ``root`` in sorted path order, or for ``files`` (relative image
    paths from ``list_tuxpaint``, one partition) in the order given. Bytes are read later, by path."""
    require_path(root, "tuxpaint stamps folder")
    rels = list_tuxpaint(root) if files is None else files
    for count, rel in enumerate(rels):
        if limit is not None and count >= limit:
            return
        path = os.path.join(root, rel)
        dirpath, fname = os.path.split(path)
        stem, ext = fname.rsplit(".", 1)
        folder = os.path.dirname(rel)
        if stem.endswith("_mirror") and os.path.exists(os.path.join(dirpath, f"{stem[: -len('_mirror')]}.txt")):
            yield Unit(source=name, uid=rel, path=path, ext=ext, skip="mirror_variant")
            continue
        signals: dict[str, list[str]] = {}
        txt = os.path.join(dirpath, f"{stem}.txt")
        if os.path.exists(txt):
            add_signal(signals, text_signal, read_description(txt))
        if folder:
            add_signal(signals, "category", folder)
        yield Unit(source=name, uid=rel, signals=signals, path=path, ext=ext)
