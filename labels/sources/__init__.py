"""Source adapters: each turns one input shape into a deterministic stream of ``Unit`` records."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from labels import inputs
from labels.sources.base import InputError, Unit
from labels.sources.img2dataset import iter_img2dataset, list_tars
from labels.sources.manifest import count_manifest_rows, iter_manifest
from labels.sources.openclipart import iter_openclipart, list_openclipart
from labels.sources.tuxpaint import iter_tuxpaint, list_tuxpaint

SOURCE_TYPES = ("img2dataset", "manifest", "openclipart", "tuxpaint")

# Signal types each adapter can emit by itself (manifest/img2dataset add the configured ones).
BUILTIN_SIGNALS = {
    "openclipart": ("title", "description", "keywords", "author", "category"),
    "tuxpaint": ("category",),
    "img2dataset": (),
    "manifest": (),
}


@dataclass
class Partition:
    """One shard-like slice of one source: the unit of work of every per-shard pass.

    Attributes:
        index: position in the run's partition list (the global input order is by index, then unit).
        source: index of the source in ``cfg.sources``.
        name: what reports and errors call it (a tar's path, ``<root>[0:1000]``, ``<manifest>[rows 0:1000]``).
        files: openclipart/tuxpaint: relative paths; img2dataset: the tar path (one).
        start, stop: manifest: data-row range.
        limit: units to read at most (what is left of the source's ``limit``), None for all.
        version: the digest of its input files' sizes and modification times (or ETags) when it was listed: a run's
            work files are keyed by it, and its tasks stop when an input no longer matches (``check_unchanged``).
    """

    index: int
    source: int
    name: str
    files: list[str] = field(default_factory=list)
    start: int = 0
    stop: int | None = None
    limit: int | None = None
    version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def input_paths(self, src) -> list[str]:
        """The files this partition reads: its tar, its files below the source's root, or the manifest."""
        if src.type == "manifest":
            return [src.path]
        if src.type == "img2dataset":
            return list(self.files)
        return [os.path.join(src.path, f) for f in self.files]


def input_version(paths: list[str], known: dict[str, str] | None = None) -> str:
    """One digest of the ``labels.inputs.versions`` of ``paths`` (read now unless ``known`` holds them)."""
    found = known if known is not None else inputs.versions(paths)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}\0{found[path]}\n".encode())
    return digest.hexdigest()[:24]


def check_unchanged(src, part: Partition) -> None:
    """Raise ``InputError`` when the inputs of ``part`` are no longer what the run listed (replaced, appended to,
    re-downloaded): a run that read them half before and half after would mix two datasets without a word."""
    if part.version and input_version(part.input_paths(src)) != part.version:
        raise InputError(
            f"input {part.name} changed while the run read it (its size or modification time is not what the run "
            "listed): the run stops rather than mix old and new content; rerun it once the input is final (the rerun "
            "reads the changed inputs again and redoes every pass after the map)"
        )


def _count_tar_units(tar_path: str) -> int:
    """Samples in a tar (only for a source with a ``limit``): those the map pass reads, so a damaged tar counts the
    samples before its damage (``iter_img2dataset``)."""
    units = iter_img2dataset(os.path.dirname(tar_path) or ".", read_images=False, tars=[tar_path], bad_inputs=[])
    return sum(1 for _ in units)


def list_partitions(sources, partition_size: int) -> list[Partition]:
    """The run's partitions, in input order: one per img2dataset tar, fixed-size chunks of
    ``partition_size`` files (openclipart, tuxpaint) or rows (manifests) otherwise.

    A source's ``limit`` is applied here, so each partition knows how many units it may read.
    """
    parts: list[Partition] = []
    for si, src in enumerate(sources):
        limit = src.limit
        if src.type in ("openclipart", "tuxpaint"):
            files = list_openclipart(src.path) if src.type == "openclipart" else list_tuxpaint(src.path)
            if limit is not None:
                files = files[:limit]
            for a in range(0, len(files), partition_size):
                chunk = files[a : a + partition_size]
                parts.append(Partition(len(parts), si, f"{src.path}[{a}:{a + len(chunk)}]", files=chunk))
        elif src.type == "img2dataset":
            left = limit
            for tar in list_tars(src.path):
                if left is not None and left <= 0:
                    break
                parts.append(Partition(len(parts), si, tar, files=[tar], limit=left))
                if left is not None:
                    left -= _count_tar_units(tar)
        elif src.type == "manifest":
            rows = count_manifest_rows(src.path, dict(src.fields), src.image_field, src.format)
            if limit is not None:
                rows = min(rows, limit)
            for a in range(0, rows, partition_size):
                b = min(rows, a + partition_size)
                parts.append(Partition(len(parts), si, f"{src.path}[rows {a}:{b}]", start=a, stop=b))
        else:
            raise InputError(f"unknown source type '{src.type}': use one of {SOURCE_TYPES}")
    paths = {p.index: p.input_paths(sources[p.source]) for p in parts}
    known = inputs.versions(dict.fromkeys(x for ps in paths.values() for x in ps))  # one listing per folder
    for part in parts:
        part.version = input_version(paths[part.index], known)
    return parts


def iter_partition(src, part: Partition, read_images: bool = True, bad_inputs: list | None = None) -> Iterator[Unit]:
    """Units of one partition of source ``src``, in the source's order.

    ``bad_inputs``: img2dataset: where a tar that cannot be read to its end is recorded (``BadInput``; its samples
    before the damage are yielded); None: such a tar raises ``InputError``."""
    name = src.name or src.type
    if src.type == "openclipart":
        return iter_openclipart(src.path, name=name, files=part.files)
    if src.type == "tuxpaint":
        return iter_tuxpaint(src.path, name=name, text_signal=src.text_signal, files=part.files)
    if src.type == "img2dataset":
        return iter_img2dataset(
            os.path.dirname(part.files[0]) or ".",
            name=name,
            caption_signal=src.text_signal,
            fields=dict(src.fields),
            read_images=read_images,
            limit=part.limit,
            tars=part.files,
            bad_inputs=bad_inputs,
        )
    if src.type == "manifest":
        return iter_manifest(
            src.path,
            fields=dict(src.fields),
            image_field=src.image_field,
            name=name,
            root=src.root,
            fmt=src.format,
            read_images=read_images,
            start=part.start,
            stop=part.stop,
        )
    raise InputError(f"unknown source type '{src.type}': use one of {SOURCE_TYPES}")


__all__ = [
    "InputError",
    "Unit",
    "Partition",
    "SOURCE_TYPES",
    "BUILTIN_SIGNALS",
    "check_unchanged",
    "input_version",
    "iter_partition",
    "list_partitions",
]
