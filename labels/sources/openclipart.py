"""Debian ``openclipart-svg``: one unit per SVG file under the root (symlinked copies included).

Signals read from each file's RDF metadata (``cc:Work``): ``title`` (dc:title), ``description``
(dc:description), ``keywords`` (the dc:subject bag), ``author`` (dc:creator's name, an excluded
signal by default), plus ``category``: the folder path relative to the root (``animals/birds``).
The same drawing filed under several folders has the same bytes, hence the same key; the pipeline
merges those units into one sample whose ``category`` lists every folder.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from labels.sources.base import Unit, add_signal, require_path, sorted_walk

DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def _text(el: ET.Element | None) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def parse_metadata(data: bytes) -> dict[str, list[str]]:
    """Signals from an SVG's RDF metadata (empty when it has none).

    Raises:
        xml.etree.ElementTree.ParseError: the bytes are not well-formed XML.
    """
    root = ET.fromstring(data)
    signals: dict[str, list[str]] = {}
    # cc:Work's namespace varies between Creative Commons versions: match the local name.
    work = next((el for el in root.iter() if isinstance(el.tag, str) and el.tag.endswith("}Work")), None)
    if work is None:
        return signals
    add_signal(signals, "title", _text(work.find(DC + "title")))
    add_signal(signals, "description", _text(work.find(DC + "description")))
    subject = work.find(DC + "subject")
    if subject is not None:
        add_signal(signals, "keywords", [_text(li) for li in subject.iter(RDF + "li")])
    creator = work.find(DC + "creator")
    if creator is not None:
        add_signal(signals, "author", [_text(t) for t in creator.iter(DC + "title")])
    return signals


def list_openclipart(root: str) -> list[str]:
    """Paths (relative to ``root``) of every ``*.svg`` below it, in sorted walk order."""
    require_path(root, "openclipart folder")
    out = []
    for dirpath, filenames in sorted_walk(root):
        out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.lower().endswith(".svg"))
    return out


def iter_openclipart(
    root: str, name: str = "openclipart", limit: int | None = None, files: list[str] | None = None
) -> Iterator[Unit]:
    """Units for every ``*.svg`` below ``root`` in sorted path order, or for ``files`` (relative
    paths, one partition of the listing) in the order given.

    Each unit carries its bytes (``data``); an SVG whose XML does not parse is a unit with skip
    reason ``unreadable_svg``.
    """
    require_path(root, "openclipart folder")
    rels = list_openclipart(root) if files is None else files
    for count, rel in enumerate(rels):
        if limit is not None and count >= limit:
            return
        path = os.path.join(root, rel)
        folder = os.path.dirname(rel)
        with open(path, "rb") as f:
            data = f.read()
        try:
            signals = parse_metadata(data)
        except ET.ParseError:
            yield Unit(source=name, uid=rel, path=path, ext="svg", data=data, skip="unreadable_svg")
            continue
        if folder:
            add_signal(signals, "category", folder)
        yield Unit(source=name, uid=rel, signals=signals, path=path, ext="svg", data=data)
