"""img2dataset output: webdataset tars of ``{key}.jpg|png|webp`` + ``{key}.txt`` + ``{key}.json``.

Tars are streamed member by member with the training side's reader, :mod:`datamodules.tar_reader` (nothing is
extracted to disk, nothing is unpickled, links are never followed; image bytes are skipped by seeking when they are
not needed); members sharing a key (the path up to the first dot of the file name, webdataset's rule)
form one unit. Signals: the ``.txt`` caption as signal type ``caption_signal``, and the ``.json``
fields named in ``fields`` (field -> signal type; a list value gives several texts). The image's
byte offset inside the tar is recorded so the writing pass reads it back with one seek.

Per-sample rules: no image member -> ``missing_image``; a ``.json`` that does not parse ->
``bad_metadata`` (the pipeline's header check adds ``corrupt_image``). A missing ``.txt`` or json
field is just an absent signal.

A tar that cannot be read to its end (``run.on_bad_input``): the reader is strict (``tar_reader``: a truncated or
corrupt tar is never mistaken for a shorter intact one), so its damage is always seen. With ``bad_inputs`` given
(``skip``), the samples before the damage are kept and the tar is recorded there (``BadInput``); otherwise
(``fail``) ``InputError`` names the tar. Keeping them is safe because a sample is yielded only once the next
sample's first member was read whole: every member of a kept sample was read whole (its bytes or, when skipped,
its full length present), and the sample the damage cut (or the one before it, when the damage is in the next
sample's first member) is never yielded, even when it looked complete.
An interrupted img2dataset download is a tar whose beginning is intact: its samples are kept, not lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from datamodules.tar_reader import TarFormatError, iter_members
from labels import inputs
from labels.sources.base import RASTER_EXTS, InputError, Unit, add_signal
from storage import StorageError


class BadInput(NamedTuple):
    """A tar that could not be read to its end: ``reason`` is ``truncated_tar``, ``corrupt_tar`` or
    ``unreadable_tar``; ``samples_kept``: samples read before the damage."""

    input: str
    reason: str
    error: str
    samples_kept: int


def _bad_reason(err: Exception) -> str:
    if isinstance(err, OSError):
        return "unreadable_tar"
    return "truncated_tar" if "truncated" in str(err) else "corrupt_tar"  # tar_reader's messages say which


def list_tars(path: str) -> list[str]:
    """Tar files named by ``path``, a local path or an object-store URL (``labels.inputs``): one tar, a folder (or
    prefix) of ``*.tar``, a glob pattern, or a brace range (``{00000..00099}.tar``: every tar it names must exist);
    sorted."""
    tars: list[str] = []
    for one in inputs.expand(path):
        if inputs.has_glob(one):
            tars += inputs.glob(one)
        elif inputs.isdir(one):
            tars += inputs.glob(one.rstrip("/") + "/*.tar")
        elif inputs.isfile(one):
            tars.append(one)
        else:
            raise InputError(f"img2dataset input not found: {one}")
    if not tars:
        raise InputError(f"no .tar files in img2dataset input: {path}")
    return sorted(set(tars))


def _split_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name by webdataset's rule: the key is the path up to the first dot of the
    file name (folders kept as written), the extension the rest, lower-cased."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def _group_members(stream, read_images: bool) -> Iterator[tuple[str, dict[str, dict]]]:
    """Consecutive members with the same key -> ``(key, {ext: member})``; members as ``tar_reader.iter_members``
    yields them (text payloads read, image payloads only when ``read_images``, others header-only)."""
    split: dict[str, tuple[str, str]] = {}  # the name wanted() just split, for the member it yields next

    def wanted(fname: str) -> bool | None:
        split.clear()
        k_ext = split[fname] = _split_name(fname)
        ext = k_ext[1]
        return True if ext in ("txt", "json") or (read_images and ext in RASTER_EXTS) else None

    key, group = None, {}
    for member in iter_members(stream, wanted):
        fname = member["fname"]
        k, ext = split.get(fname) or _split_name(fname)
        if k != key and group:
            yield key, group
            group = {}
        key = k
        group[ext] = member
    if group:
        yield key, group


def iter_img2dataset(
    path: str,
    name: str = "img2dataset",
    caption_signal: str = "description",
    fields: Mapping[str, str] | None = None,
    read_images: bool = True,
    limit: int | None = None,
    tars: list[str] | None = None,
    bad_inputs: list[BadInput] | None = None,
) -> Iterator[Unit]:
    """Units for every sample of every tar under ``path`` (tars sorted, members in tar order).

    Args:
        fields: ``.json`` field -> signal type.
        tars: read only these tar files (one partition of ``list_tars(path)``), in the order given.
        read_images: read the image bytes (for the content key and the header check); False for
            text-only runs, where the key comes from the unit id.
        bad_inputs: where a tar that cannot be read to its end is recorded (its samples before the damage are
            yielded, reading goes on with the next tar); None: ``InputError`` naming the tar.
    """
    fields = dict(fields or {})
    count = 0
    for tar_path in list_tars(path) if tars is None else tars:
        tar_name = os.path.basename(tar_path.rstrip("/"))
        kept = 0
        try:
            # A remote tar is read from a local copy (labels.inputs); the units name the URL.
            with inputs.local_copies([tar_path]) as local, open(local.get(tar_path, tar_path), "rb") as stream:
                for key, group in _group_members(stream, read_images):
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    kept += 1
                    yield _unit(group, f"{tar_name}:{key}", name, tar_path, caption_signal, fields)
        except StorageError:
            raise  # the store kept failing: the tar is not known to be bad, the task fails and a rerun redoes it
        except (OSError, TarFormatError) as err:
            if bad_inputs is None:
                raise InputError(f"cannot read tar {tar_path}: {err} (run.on_bad_input=skip skips it)") from None
            bad_inputs.append(BadInput(tar_path, _bad_reason(err), str(err), kept))


def _unit(
    group: dict[str, dict], uid: str, name: str, tar_path: str, caption_signal: str, fields: Mapping[str, str]
) -> Unit:
    signals: dict[str, list[str]] = {}
    skip = None
    site = None
    if "txt" in group:
        add_signal(signals, caption_signal, group["txt"]["data"].decode("utf-8", "replace"))
    if "json" in group:
        try:
            meta = json.loads(group["json"]["data"])
        except (ValueError, UnicodeDecodeError):
            meta, skip = {}, "bad_metadata"
        if isinstance(meta, dict):
            for field_name, signal in fields.items():
                if field_name in meta:
                    add_signal(signals, signal, meta[field_name])
            if isinstance(meta.get("url"), str):
                try:
                    site = urlsplit(meta["url"]).hostname  # img2dataset always records the url
                except ValueError:  # a malformed url: no site, the sample is still read
                    site = None
    image_ext = next((e for e in RASTER_EXTS if e in group), None)
    if image_ext is None:
        return Unit(source=name, uid=uid, signals=signals, skip=skip or "missing_image", site=site)
    member = group[image_ext]
    return Unit(
        source=name,
        uid=uid,
        signals=signals,
        path=tar_path,
        offset=member["offset"],
        size=member["size"],
        ext=image_ext,
        data=member["data"],
        skip=skip,
        site=site,
    )
