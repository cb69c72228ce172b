"""Source adapters: each turns one input shape into a deterministic stream of ``Unit`` records."""

from __future__ import annotations

from collections.abc import Iterator

from labels.sources.base import InputError, Unit
from labels.sources.img2dataset import iter_img2dataset
from labels.sources.manifest import iter_manifest
from labels.sources.openclipart import iter_openclipart
from labels.sources.tuxpaint import iter_tuxpaint

SOURCE_TYPES = ("img2dataset", "manifest", "openclipart", "tuxpaint")

# Signal types each adapter can emit by itself (manifest/img2dataset add the configured ones).
BUILTIN_SIGNALS = {
    "openclipart": ("title", "description", "keywords", "author", "category"),
    "tuxpaint": ("category",),
    "img2dataset": (),
    "manifest": (),
}


def iter_source(src, read_images: bool = True) -> Iterator[Unit]:
    """Units of one configured source (``configs.labels_schema.SourceConfig``), in a fixed order."""
    name = src.name or src.type
    if src.type == "openclipart":
        return iter_openclipart(src.path, name=name, limit=src.limit)
    if src.type == "tuxpaint":
        return iter_tuxpaint(src.path, name=name, text_signal=src.text_signal, limit=src.limit)
    if src.type == "img2dataset":
        return iter_img2dataset(
            src.path,
            name=name,
            caption_signal=src.text_signal,
            fields=dict(src.fields),
            read_images=read_images,
            limit=src.limit,
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
            limit=src.limit,
        )
    raise InputError(f"unknown source type '{src.type}': use one of {SOURCE_TYPES}")


__all__ = ["InputError", "Unit", "SOURCE_TYPES", "BUILTIN_SIGNALS", "iter_source"]
