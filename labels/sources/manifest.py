"""A manifest of local image paths plus any number of text fields: JSONL, CSV or Parquet.

``fields`` maps a column to a signal type (``{"tags": "keywords", "caption": "description"}``);
``image_field`` names the image path column (relative paths resolve against ``root``, by default
the manifest's folder). Rules: a row without an image path -> ``missing_image_field``; a path that
does not exist -> ``missing_image``; an absent text field is an absent signal (the pipeline's header
check adds ``corrupt_image``). A malformed manifest (a JSONL line that is not a JSON object, a CSV
row with the wrong number of columns, a CSV/Parquet header missing a configured column) fails at
once with an ``InputError`` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping

from labels.sources.base import InputError, Unit, add_signal, require_path

FORMATS = ("jsonl", "csv", "parquet")


def manifest_format(path: str, fmt: str | None = None) -> str:
    """``fmt`` if given, else from the extension (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``)."""
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown manifest format '{fmt}' for {path}: use one of {FORMATS}")
        return fmt
    ext = path.lower().rsplit(".", 1)[-1]
    mapping = {
        "jsonl": "jsonl",
        "ndjson": "jsonl",
        "json": "jsonl",
        "csv": "csv",
        "parquet": "parquet",
        "pq": "parquet",
    }
    if ext not in mapping:
        raise InputError(f"cannot tell the format of manifest {path} from its extension; set the source's 'format'")
    return mapping[ext]


def _rows_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise InputError(f"{path}:{line_no}: malformed JSON line: {err}") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_no}: a manifest line must be a JSON object, got {type(row).__name__}")
            yield line_no, row


def _check_header(path: str, header: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"{path}:1: manifest header lacks column(s) {missing}; it has {header}")


def _rows_csv(path: str, needed: list[str]) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputError(f"{path}:1: malformed CSV: {err}") from None
        _check_header(path, header, needed)
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
            if not values:
                continue
            if len(values) != len(header):
                raise InputError(
                    f"{path}:{reader.line_num}: CSV row has {len(values)} fields, the header has {len(header)}"
                )
            yield reader.line_num, dict(zip(header, values))


def _rows_parquet(path: str, needed: list[str]) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # e.g. a pyarrow build that needs a newer numpy than the one installed
        raise InputError(f"{path}: reading Parquet manifests needs a working pyarrow: {err}") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from None
    _check_header(path, list(pf.schema_arrow.names), needed)
    row_no = 0
    for batch in pf.iter_batches(batch_size=8192, columns=needed):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def iter_manifest(
    path: str,
    fields: Mapping[str, str],
    image_field: str = "image",
    name: str = "manifest",
    root: str | None = None,
    fmt: str | None = None,
    read_images: bool = True,
    limit: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Unit]:
    """Units for every row of the manifest, in file order (uid ``<file>:<line>``); with ``start`` /
    ``stop``, only rows ``start <= i < stop`` (0-based data rows: one partition of the manifest).

    Args:
        fields: column -> signal type.
        image_field: the column holding the image path.
        root: folder for relative image paths (default: the manifest's folder).
        fmt: ``jsonl``, ``csv`` or ``parquet`` (default: from the extension).
        read_images: read and hash the image (False: text-only run, no file access per row).
    """
    require_path(path, "manifest")
    kind = manifest_format(path, fmt)
    root = root or os.path.dirname(os.path.abspath(path))
    needed = ([image_field] if read_images else []) + [c for c in fields if c != image_field]
    if kind == "jsonl":
        rows = _rows_jsonl(path)
    elif kind == "csv":
        rows = _rows_csv(path, needed)
    else:
        rows = _rows_parquet(path, needed)
    base = os.path.basename(path)
    for count, (line_no, row) in enumerate(rows):
        if (limit is not None and count >= limit) or (stop is not None and count >= stop):
            return
        if count < start:
            continue
        uid = f"{base}:{line_no}"
        signals: dict[str, list[str]] = {}
        for column, signal in fields.items():
            value = row.get(column)
            if value is not None:
                add_signal(signals, signal, value)
        image = row.get(image_field)
        if not read_images:
            yield Unit(source=name, uid=uid, signals=signals, ext="jpg")
            continue
        if image is None or not str(image).strip():
            yield Unit(source=name, uid=uid, signals=signals, skip="missing_image_field")
            continue
        image_path = os.path.join(root, str(image))
        ext = image_path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(image_path) else ""
        try:
            with open(image_path, "rb") as f:
                data = f.read()
        except OSError:
            yield Unit(source=name, uid=uid, signals=signals, path=image_path, ext=ext, skip="missing_image")
            continue
        yield Unit(source=name, uid=uid, signals=signals, path=image_path, ext=ext or "jpg", data=data)


def count_manifest_rows(
    path: str, fields: Mapping[str, str], image_field: str = "image", fmt: str | None = None
) -> int:
    """Number of data rows of a manifest (validates it on the way: a malformed one fails here, by line)."""
    require_path(path, "manifest")
    kind = manifest_format(path, fmt)
    needed = [image_field] + [c for c in fields if c != image_field]
    if kind == "parquet":
        return sum(1 for _ in _rows_parquet(path, [c for c in needed if c != image_field] or needed))
    rows = _rows_jsonl(path) if kind == "jsonl" else _rows_csv(path, [c for c in needed if c != image_field])
    return sum(1 for _ in rows)
