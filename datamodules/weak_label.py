"""Weak-label shards (``labels/`` writes them, docs/ARCHITECTURE.md defines them) streamed under DDP.

Config: ``data.weak_label.{manifest, shards, label_space, scale, resampled}``, ``data.{img_size, batch_size,
eval_batch_size, num_workers, shuffle_buffer, augment.*}``, ``seed``. Sample counts always come from the manifest.

Training pipeline, per (rank, logical worker), one ``wds.DataPipeline`` (``TrainStream.pipeline``) in the shape of
open_clip's ``get_wds_dataset``::

    shard list        resampled (default): webdataset's ResampledShards seeded by (seed, epoch, pass, rank, worker);
                      else ShardSource: the list shuffled per round by (seed, epoch, pass, round), the same on every
                      rank, then split by rank and logical worker (fewer shards than slots: every slot reads every
                      shard and keeps every n-th sample, with a warning)
    ShardGroups       consecutive shards -> shuffle groups of >= GROUP_BUFFERS x shuffle_buffer samples, each sample's
                      raw index in the pass known from the manifest counts alone (a round always starts a group)
    ResumeAt          a resumed pass: groups before the position are dropped unopened; in the position's group the
                      samples already consumed are marked, found by replaying the group's shuffle on positions
    ReadShards        tar -> raw samples (datamodules.tar_reader, webdataset's key rule); marked samples are passed by
                      their headers (a seek, no payload read); bad shards are counted skips (below)
    GroupShuffle      webdataset's shuffle within each group, seeded per group; numbers the samples (``__raw__``)
    DecodeSample      json labels -> label ids + scores, image decode, timm transform (uint8 out), RNGs seeded from
                      ``__raw__``; counted skips
    batched           full batches only of uint8 images and padded label ids (the contract in ``datamodules.targets``:
                      dense targets, normalization and mixup happen on the device)
    with_epoch        each worker yields exactly ceil(ceil(N / (batch x ranks)) / workers) batches per pass (N from
                      the manifest), open_clip's num_worker_batches: equal batch counts on every rank

Bad data in training is always a counted skip that names the shard, never an exception (one rank raising would leave
the others waiting at the next collective): a shard that cannot be opened, is truncated or corrupt
(``shard_read_error``, ``samples_lost``), a shard whose count disagrees with the manifest (``count_mismatch``; only its
first manifest-count samples are used), a sample without json / labels, with a label id outside the vocabulary, or
with undecodable image bytes. Validation raises on shards that disagree with the manifest, because its batch plan
(equal counts on every rank, every sample once) is cut from the manifest and its metrics must cover that split.

Guarantees:

* **Equal batch counts per rank**, by construction (quota above), whatever the shard count or sizes.
* **Determinism**: given seed, world size, num_workers, batch size, shuffle_buffer and manifest, pass ``p`` of epoch
  ``e`` yields the same samples in the same order with the same augmentations.
* **Mid-epoch resume** (``MultiTaskDataModule.state_dict``): the checkpoint stores the trainer's position; each
  logical worker resumes at the raw index after the last sample it turned into a consumed batch (counted in the raw,
  pre-decode stream, so undecodable samples do not shift it), and worker roles are rotated, so the resumed run yields
  the same batches in the same order as an uninterrupted run, in both modes. Its cost is bounded: at most one shuffle
  group of tar headers per worker (payloads seeked past) plus an in-memory replay of that group's shuffle, whatever
  the position in the epoch (benchmarks/bench_resume.py); the shard source is re-enumerated up to the position
  (random draws only, no I/O). Limits: world size, num_workers, batch size, seed, shuffle_buffer and the shards must
  be unchanged (otherwise a warning and the epoch restarts from a fresh pass); a shard that became unreadable or
  changed its count in between changes the stream from its group on.
* **Non-resampled passes** read each sample of their slot's shards once before repeating any; with shards that do
  not split evenly, a slot whose share exceeds the quota leaves its rest for the next pass and a smaller one repeats
  a few samples (the price of equal batch counts). Resampled passes draw shards with replacement: samples repeat
  within a pass, as the design of resampling intends.
* **Validation** (``EvalStream``): every val sample of the manifest is yielded exactly once over all ranks and
  workers. Val shards are assigned whole to (rank, worker) slots by size when that balances them, else every slot
  reads every val shard and keeps sample ``g`` of the split when ``g % slots`` is its slot (ranks then differ by at
  most one sample). Every rank yields the same number of
  batches (batches are cut by a plan from the manifest counts; a rank with fewer samples gets smaller batches), so
  metrics gathered over ranks equal a single-process evaluation, independent of the world size. Undecodable val
  samples are counted and left out (a batch then has fewer samples); a val shard that is truncated or disagrees
  with the manifest raises, because the plan would no longer cover it. Equal counts need every rank to hold at least
  as many val samples as batches; a val split too small for that (e.g. fewer samples than ranks) raises.

Workers are persistent; the pass state they read (epoch, pass, worker rotation, resume offsets) is in shared memory
(``TrainStream``). Skip counts reach the main process inside the batches (``datamodules.loaders``); skips after a
worker's last batch of a pass are not reported.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from timm.data import DEFAULT_CROP_PCT
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torchvision.transforms.functional import pil_modes_mapping as PIL_RESAMPLE
from webdataset.gopen import gopen

from datamodules.loaders import (
    META,
    BatchSource,
    DataConfigError,
    equalize_batches,
    index_seed,
    mix_seed,
    seed_sample_rngs,
    split_plan,
)
from datamodules.tar_reader import TarFormatError, iter_members
from datamodules.targets import label_arrays, pad_labels

log = logging.getLogger(__name__)

CHECK_SHARDS = 16  # local shards whose existence start-up checks (a sample, not all)
# Samples in a row that a training worker may skip before it gives up: a stream where nothing decodes (a broken
# transform, a corpus of error pages) must end the run with the cause, not spin through shards forever.
MAX_SKIPS_IN_A_ROW = 10_000
GROUP_BUFFERS = 4  # a shuffle group holds at least this many shuffle buffers of samples (bounds the resume replay)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
READ_EXTS = frozenset((*IMAGE_EXTS, "json"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SKIP_REASONS = (
    "shard_read_error",  # a shard could not be opened or its tar stream broke (e.g. truncated)
    "samples_lost",  # samples the manifest lists in a shard that broke or holds fewer, never read
    "count_mismatch",  # a complete shard whose sample count differs from the manifest (the shard is named in the log)
    "samples_extra",  # samples beyond the manifest's count of such a shard, not used
    "ignored_member",  # a tar member with an extension the pipeline does not read (.pyd, .pickle, .txt, ...)
    "missing_image",
    "missing_json",
    "bad_json",
    "missing_labels",  # json without labels[label_space]
    "label_out_of_vocab",  # a label id outside [0, num_classes)
    "empty_labels",  # no label in the chosen label space
    "decode_error",  # image bytes PIL cannot decode (or a transform failed on them)
)


class ManifestError(DataConfigError):
    """The manifest is missing, malformed or does not fit the config."""


class ManifestMismatchError(RuntimeError):
    """A shard holds a different number of samples than the manifest says."""


# -------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it; ``url`` is resolved against the manifest's folder."""

    url: str
    num_samples: int
    scale_bucket: float | None = None


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def _read_text(path: str) -> str:
    if _is_remote(path):
        with gopen(path, "rb") as stream:
            return stream.read().decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


class Manifest:
    """A parsed, validated ``manifest.json`` (see docs/ARCHITECTURE.md)."""

    def __init__(self, data: dict, path: str) -> None:
        self.data = data
        self.path = path
        if path.startswith("pipe:"):
            self.root = None  # shard urls must then be absolute
        elif "://" in path:
            self.root = path.rsplit("/", 1)[0]
        else:
            self.root = os.path.dirname(os.path.abspath(path))
        self._validate()

    @classmethod
    def load(cls, path: str) -> Manifest:
        """Read and validate the manifest at ``path`` (local path or a URL webdataset's gopen can open)."""
        path = str(path)
        if not _is_remote(path) and not os.path.isfile(path):
            raise ManifestError(
                f"data.weak_label.manifest: file not found: {path} (build the shards with mine_labels.py, or point "
                "data.weak_label.manifest at an existing manifest.json)"
            )
        try:
            data = json.loads(_read_text(path))
        except (OSError, ValueError) as err:
            raise ManifestError(f"data.weak_label.manifest: cannot read {path}: {err}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {path} must hold a JSON object")
        return cls(data, path)

    def _fail(self, field_name: str, msg: str) -> None:
        raise ManifestError(f"manifest {self.path}: field '{field_name}' {msg}")

    def _validate(self) -> None:
        d = self.data
        if d.get("format_version") != 1:
            self._fail("format_version", f"is {d.get('format_version')!r}; this reader understands 1")
        spaces = d.get("label_spaces")
        if not isinstance(spaces, dict) or not spaces:
            self._fail("label_spaces", "must map a label space name to {num_classes, names}")
        for name, space in spaces.items():
            n = space.get("num_classes") if isinstance(space, dict) else None
            names = space.get("names") if isinstance(space, dict) else None
            if not isinstance(n, int) or n <= 0 or not isinstance(names, list) or len(names) != n:
                self._fail(f"label_spaces.{name}", "needs a positive num_classes and that many names")
        scales = d.get("scales")
        if not isinstance(scales, list) or not scales or not all(isinstance(s, (int, float)) for s in scales):
            self._fail("scales", "must be a non-empty list of fractions")
        splits = d.get("splits")
        if not isinstance(splits, dict) or "train" not in splits:
            self._fail("splits", "must hold at least 'train'")
        for split, entry in splits.items():
            shards = entry.get("shards") if isinstance(entry, dict) else None
            if not isinstance(shards, list) or not shards:
                self._fail(f"splits.{split}.shards", "must be a non-empty list")
            for i, shard in enumerate(shards):
                if not isinstance(shard, dict) or not isinstance(shard.get("url"), str):
                    self._fail(f"splits.{split}.shards[{i}].url", "is missing")
                if not isinstance(shard.get("num_samples"), int) or shard["num_samples"] < 0:
                    self._fail(f"splits.{split}.shards[{i}].num_samples", "must be a non-negative integer")
            total = sum(s["num_samples"] for s in shards)
            if entry.get("num_samples") != total:
                self._fail(
                    f"splits.{split}.num_samples", f"is {entry.get('num_samples')} but its shards sum to {total}"
                )

    @property
    def scales(self) -> list[float]:
        return [float(s) for s in self.data["scales"]]

    def label_space(self, space: str) -> tuple[int, list[str]]:
        """(num_classes, names) of a label space; a clear error naming data.weak_label.label_space otherwise."""
        spaces = self.data["label_spaces"]
        if space not in spaces:
            raise ManifestError(
                f"data.weak_label.label_space='{space}' is not in manifest {self.path}; it has {sorted(spaces)}"
            )
        return spaces[space]["num_classes"], list(spaces[space]["names"])

    def resolve(self, url: str) -> str:
        """A shard url as written in the manifest, made absolute against the manifest's folder."""
        if _is_remote(url) or os.path.isabs(url):
            return url
        if self.root is None:
            raise ManifestError(f"manifest {self.path} is read through a pipe, so shard url '{url}' must be absolute")
        return f"{self.root}/{url}" if "://" in self.root else os.path.join(self.root, url)

    def shards(self, split: str) -> list[ShardInfo]:
        """Every shard of a split, in manifest order."""
        if split not in self.data["splits"]:
            raise ManifestError(f"manifest {self.path} has no '{split}' split (it has {sorted(self.data['splits'])})")
        return [
            ShardInfo(self.resolve(s["url"]), int(s["num_samples"]), s.get("scale_bucket"))
            for s in self.data["splits"][split]["shards"]
        ]

    def train_shards(self, scale: float, override: str | None = None) -> list[ShardInfo]:
        """Train shards of the nested dataset-scale subset ``scale`` (every shard whose scale_bucket <= scale).

        Args:
            scale: one of the manifest's scales (``data.weak_label.scale``).
            override: ``data.weak_label.shards``, a brace pattern or several joined by ``::``; each shard must be
                listed in the manifest (counts come from the manifest, never from scanning).
        """
        scales = self.scales
        if not any(math.isclose(scale, s, rel_tol=1e-9, abs_tol=1e-12) for s in scales):
            raise ManifestError(
                f"data.weak_label.scale={scale} is not one of the scales of manifest {self.path}: valid scales are "
                f"{scales}"
            )
        shards = self.shards("train")
        if override:
            by_name: dict[str, ShardInfo] = {}
            for s in shards:
                by_name[s.url] = s
                by_name.setdefault(_shard_name(s.url), s)
            chosen = []
            for url in wds.shardlists.expand_urls(override):
                info = by_name.get(self.resolve(url)) if not _is_remote(url) else None
                info = info or by_name.get(_shard_name(url))
                if info is None:
                    raise ManifestError(
                        f"data.weak_label.shards: shard '{url}' is not listed in manifest {self.path}; sample counts "
                        "come from the manifest, so every shard must be in it"
                    )
                chosen.append(
                    ShardInfo(url if _is_remote(url) else self.resolve(url), info.num_samples, info.scale_bucket)
                )
            return chosen
        if math.isclose(scale, max(scales)):
            return shards
        missing = [s.url for s in shards if s.scale_bucket is None]
        if missing:
            raise ManifestError(
                f"manifest {self.path}: train shard {missing[0]} has no scale_bucket, needed for "
                f"data.weak_label.scale={scale}"
            )
        return [s for s in shards if s.scale_bucket <= scale + 1e-12]


def _shard_name(url: str) -> str:
    """The tar file name inside a url or pipe command (how an override is matched to the manifest)."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    return names[-1] if names else url


# ------------------------------------------------------------------------------ pipeline stages


class SampleSkip(Exception):
    """A sample dropped on purpose; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipCounter:
    """webdataset exception handler that logs, counts and continues; lives in one worker process.

    ``take()`` returns the counts added since the last call; batches carry them to the main process.
    """

    def __init__(self, where: str = "", max_in_a_row: int | None = None) -> None:
        self.counts: Counter = Counter()
        self._sent: Counter = Counter()
        self.where = where
        self.max_in_a_row = max_in_a_row  # None: no limit (validation fails on its own rules)
        self.in_a_row = 0  # skips since the last sample that decoded (reset by NameShard)

    def add(self, reason: str, n: int = 1, detail: Any = None) -> None:
        self.counts[reason] += n
        if self.counts[reason] == n or self.counts[reason] % 1000 == 0:
            log.warning("%sskipped (%s, %d so far): %s", self.where, reason, self.counts[reason], detail)

    def __call__(self, exn: BaseException) -> bool:
        reason = exn.reason if isinstance(exn, SampleSkip) else "decode_error"
        detail = " ".join([repr(exn)[:300], *getattr(exn, "__notes__", ())])
        self.add(reason, detail=detail)
        self.in_a_row += 1
        if self.max_in_a_row is not None and self.in_a_row >= self.max_in_a_row:
            raise RuntimeError(
                f"{self.where}{self.in_a_row} samples in a row were skipped, none decoded (last: {reason}: {detail}); "
                f"skip counts: {dict(self.counts)}"
            ) from exn
        return True

    def take(self) -> dict:
        delta = self.counts - self._sent
        self._sent = Counter(self.counts)
        return dict(delta)


class NameShard:
    """Calls ``fn(sample)``; an exception it raises gets the sample's shard as a note, so the skip log names it. A
    sample that decodes resets ``counter``'s run of skips in a row."""

    def __init__(self, fn: Any, counter: SkipCounter | None = None) -> None:
        self.fn = fn
        self.counter = counter

    def __call__(self, sample: dict) -> Any:
        try:
            out = self.fn(sample)
        except Exception as exn:
            exn.add_note(f"(shard {sample.get('__url__')})")
            raise
        if self.counter is not None:
            self.counter.in_a_row = 0
        return out


class ReadShards:
    """Tar shards -> raw samples ``{"__key__", "__url__", "jpg", "json", ...}`` (bytes), checked against the manifest.

    Shard entries are ``{"url"}`` plus, optionally, ``"stride": (n, i)`` (keep only samples ``j % n == i``), ``"skip"``
    (kept-sample indices a resumed pass already consumed: yielded as ``{"__skip__": True}`` placeholders whose payload
    is never read, see ``datamodules.tar_reader``) and the shuffle-group fields of ``ShardGroups``, copied onto each
    sample. Samples are grouped by webdataset's key rule inline (``base_plus_ext``: the key is the path up to the first
    dot of the file name, the extension the rest, lower-cased), because the generic ``group_by_keys`` costs more per
    sample than the rest of the tar reading; ``tarfile_to_samples`` cannot skip payloads, hence this stage.

    Bad shards never stop training: a shard that cannot be opened, is corrupt or truncated is logged and counted
    (``shard_read_error``, ``samples_lost`` for what the manifest listed but was not read) after the samples read
    before the break; a complete shard whose count differs from the manifest is counted (``count_mismatch``, naming
    the shard) and only its first manifest-count samples are used (``samples_extra`` for the rest), so sample numbers
    stay within what the manifest assigns to it. With ``strict`` (validation) a count mismatch raises
    ``ManifestMismatchError`` instead.
    """

    def __init__(self, counts: dict[str, int], counter: SkipCounter, max_empty: int, strict: bool = False) -> None:
        self.counts = counts
        self.counter = counter
        self.max_empty = max_empty
        self.strict = strict
        self.empty_run = 0  # shards in a row that gave no sample: a run of them means the data is gone

    def _samples(self, stream: Any, url: str, read: Any) -> Iterator[dict]:
        """Samples of one tar stream; ``read(j)`` says whether sample ``j``'s payload is needed."""
        last: list = [None, -1]  # key and index of the sample the reader is in

        def wanted(fname: str) -> bool | None:
            dot = fname.find(".", fname.rfind("/") + 1)
            if dot < 0 or fname[dot + 1 :].lower() not in READ_EXTS:
                self.counter.add("ignored_member", detail=fname)
                return False
            if fname[:dot] != last[0]:
                last[0], last[1] = fname[:dot], last[1] + 1
            return True if read(last[1]) else None

        sample: dict | None = None
        for member in iter_members(stream, wanted):
            fname = member["fname"]
            dot = fname.find(".", fname.rfind("/") + 1)
            key, ext = fname[:dot], fname[dot + 1 :].lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            elif ext in sample:
                raise TarFormatError(f"{fname}: two members with the same name in one sample")
            if member["data"] is None:
                sample["__skip__"] = True
            else:
                sample[ext] = member["data"]
        if sample is not None:
            yield sample

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for shard in src:
            url = shard["url"]
            expected = self.counts.get(url)
            limit = expected if expected is not None and not self.strict else None
            every, first = shard.get("stride") or (1, 0)
            skip = shard.get("skip") or ()
            tags = {f"__{k}__": shard[k] for k in ("group", "gstart") if k in shard}

            def read(j: int, every=every, first=first, skip=skip, limit=limit) -> bool:
                return j % every == first and j // every not in skip and (limit is None or j < limit)

            n = 0
            try:
                stream = gopen(url, "rb")
            except Exception as exn:  # noqa: BLE001 - any opener failure is a counted skip
                self.counter.add("shard_read_error", detail=f"{url}: {exn!r}")
                self.counter.add("samples_lost", expected or 0, detail=url)
                self._check_empty_run(0, url)
                continue
            problem = None
            try:
                for sample in self._samples(stream, url, read):
                    if n % every == first and (limit is None or n < limit):
                        sample.update(tags)
                        yield sample
                    n += 1
            except (OSError, EOFError, ValueError) as exn:  # TarFormatError (truncated/corrupt) is a ValueError
                problem = repr(exn)
            finally:
                stream.close()
            if problem is not None:
                self.counter.add("shard_read_error", detail=f"{url} after {n} samples: {problem}")
                if expected is not None and expected > n:
                    self.counter.add("samples_lost", expected - n, detail=url)
            elif expected is not None and n != expected:
                msg = f"shard {url} holds {n} samples but the manifest lists {expected}"
                if self.strict:
                    raise ManifestMismatchError(
                        f"{msg}; the manifest does not describe these shards (rebuild them with mine_labels.py or fix "
                        "data.weak_label.manifest)"
                    )
                self.counter.add("count_mismatch", detail=msg)
                self.counter.add("samples_lost" if n < expected else "samples_extra", abs(n - expected), detail=url)
            self._check_empty_run(n, url)

    def _check_empty_run(self, n: int, url: str) -> None:
        self.empty_run = self.empty_run + 1 if n == 0 else 0
        if self.empty_run > self.max_empty:
            raise RuntimeError(
                f"no sample could be read from {self.empty_run} shards in a row (last: {url}); "
                f"skip counts so far: {dict(self.counter.counts)}"
            )


def slot_count(entry: dict, counts: dict[str, int]) -> int:
    """Samples a shard entry contributes by the manifest (its stride share when it has a stride)."""
    n = counts.get(entry["url"], 0)
    stride = entry.get("stride")
    return len(range(stride[1], n, stride[0])) if stride else n


class ShardGroups:
    """Shard entries -> the same entries tagged with their shuffle group: ``group`` (index in the pass), ``gstart``
    (raw index of the group's first sample in the pass), ``gsize`` and ``gpos`` (the entry's first sample within
    the group), all from the manifest counts, so the position of every sample is known without reading a shard.

    A group is the consecutive entries that first reach ``target`` samples; a new round of the shard source always
    starts a new group (a non-resampled pass reads each sample of its slot once before repeating any).
    """

    def __init__(self, counts: dict[str, int], target: int) -> None:
        self.counts = counts
        self.target = max(1, target)

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        group, start, size, entries, rnd = 0, 0, 0, [], None
        for entry in src:
            if entries and (size >= self.target or entry.get("round") != rnd):
                yield from ({**e, "group": group, "gstart": start, "gsize": size} for e in entries)
                group, start, size, entries = group + 1, start + size, 0, []
            rnd = entry.get("round")
            entries.append({**entry, "gpos": size})
            size += slot_count(entry, self.counts)
        yield from ({**e, "group": group, "gstart": start, "gsize": size} for e in entries)


class GroupShuffle:
    """``webdataset.shuffle`` applied within each shuffle group (``ShardGroups``), seeded per group, then the samples
    numbered in the pass's raw stream (``__raw__ = gstart + position in the group's shuffled order``).

    Why groups: the shuffled order of a group depends only on its seed and size (both known from the manifest), so a
    resume can tell which samples of the group were already consumed (``ResumeAt``) without reading anything before
    the group. Placeholders (``__skip__``) take their place in the shuffle and are dropped here.
    """

    def __init__(self, bufsize: int, seed: int, initial: int | None = None) -> None:
        self.bufsize = max(1, bufsize)
        self.initial = min(self.bufsize, max(1, initial if initial is not None else self.bufsize // 8))
        self.seed = seed

    def shuffled(self, items: Iterator, group: int) -> Iterator:
        return wds.shuffle(self.bufsize, self.initial, seed=mix_seed(self.seed, group))(items)

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for group, samples in itertools.groupby(src, key=lambda s: s.get("__group__")):
            for i, sample in enumerate(self.shuffled(samples, group or 0)):
                if sample.pop("__skip__", False):
                    continue
                sample["__raw__"] = sample.pop("__gstart__", 0) + i
                yield sample


class ResumeAt:
    """Resume a pass at raw index ``start`` in bounded time: shard entries of groups that end before ``start`` are
    dropped unopened; in the group holding ``start`` the samples the shuffle emitted first (``GroupShuffle.shuffled``
    replayed on sample positions, no I/O) are marked ``skip`` so ``ReadShards`` passes them by their tar headers.
    The cost is at most one group's headers per worker, whatever the position in the epoch."""

    def __init__(self, start: int, shuffle: GroupShuffle, counts: dict[str, int]) -> None:
        self.start = start
        self.shuffle = shuffle
        self.counts = counts

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        consumed: tuple[int, set[int]] = (-1, set())
        for entry in src:
            gstart, gsize = entry["gstart"], entry["gsize"]
            if gstart >= self.start:
                yield entry
                continue
            if gstart + gsize <= self.start:
                continue
            if consumed[0] != entry["group"]:
                order = self.shuffle.shuffled(iter(range(gsize)), entry["group"])
                consumed = (entry["group"], set(itertools.islice(order, self.start - gstart)))
            lo, n = entry["gpos"], slot_count(entry, self.counts)
            yield {**entry, "skip": {p - lo for p in consumed[1] if lo <= p < lo + n}}


class DecodeSample:
    """Raw sample -> ``{"image", "label_ids", "label_weights", "key", "__raw__"}``; raises SampleSkip (counted) for unusable samples.

    Only JSON and PIL decoding happen here; no pickle/torch decoder is ever applied to shard content.
    """

    def __init__(
        self,
        label_space: str,
        num_classes: int,
        transform: Any,
        draft: int,
        seed: int | None,
        numpy_rng: bool = False,
        tensor_jpeg: bool | None = None,
    ) -> None:
        self.label_space = label_space
        self.num_classes = num_classes
        self.transform = transform
        self.draft = draft
        self.seed = seed  # None: evaluation, no random transform
        self.numpy_rng = numpy_rng  # the transform draws from numpy too (timm RandAugment can)
        # torchvision's JPEG decoder for evaluation (resize + center crop), where it measured faster; training keeps
        # PIL: its RandomResizedCrop resize costs less than the tensor one (benchmarks/bench_label_memory.py)
        self.tensor_jpeg = seed is None if tensor_jpeg is None else bool(tensor_jpeg)
        # A training transform that starts with DraftResizedCrop takes the undecoded image (crop-aware JPEG draft).
        first = getattr(transform, "transforms", [None])[0]
        self.lazy = isinstance(first, DraftResizedCrop)

    def labels(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(label ids int32 [n], weights float32 [n])`` of the sample (``datamodules.targets``: never dense)."""
        if "json" not in sample:
            raise SampleSkip("missing_json", sample.get("__key__", ""))
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exn:
            raise SampleSkip("bad_json", f"{sample.get('__key__')}: {exn}") from None
        ids = meta.get("labels", {}).get(self.label_space) if isinstance(meta, dict) else None
        if not isinstance(ids, list):
            raise SampleSkip("missing_labels", f"{sample.get('__key__')} has no labels.{self.label_space}")
        if not ids:
            raise SampleSkip("empty_labels", sample.get("__key__", ""))
        if not all(isinstance(i, int) and 0 <= i < self.num_classes for i in ids):
            raise SampleSkip(
                "label_out_of_vocab",
                f"{sample.get('__key__')}: {ids} outside [0, {self.num_classes}) of '{self.label_space}'",
            )
        scores = meta.get("scores", {}).get(self.label_space) if isinstance(meta.get("scores"), dict) else None
        try:
            return label_arrays(ids, scores)
        except (TypeError, ValueError) as exn:
            raise SampleSkip("bad_json", f"{sample.get('__key__')}: scores.{self.label_space}: {exn}") from None

    def image(self, sample: dict) -> Image.Image | torch.Tensor:
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if data is None:
            raise SampleSkip("missing_image", sample.get("__key__", ""))
        if self.lazy:  # the transform's DraftResizedCrop decodes it, at the scale its crop needs
            return Image.open(io.BytesIO(data))
        return decode_image(data, self.draft, tensor_jpeg=self.tensor_jpeg)

    def __call__(self, sample: dict) -> dict:
        ids, weights = self.labels(sample)  # cheap checks first
        img = self.image(sample)
        if self.seed is not None:
            seed_sample_rngs(index_seed(self.seed, sample["__raw__"]), numpy_too=self.numpy_rng)
        return {
            "image": self.transform(img),
            "label_ids": ids,
            "label_weights": weights,
            "key": sample["__key__"],
            "__raw__": sample["__raw__"],
        }


def decode_image(data: bytes, draft: int = 0, tensor_jpeg: bool = False) -> Image.Image | torch.Tensor:
    """Bytes -> RGB PIL image. ``draft`` > 0 lets a JPEG decode at a reduced DCT scale that keeps both sides >= draft
    pixels (much cheaper for large sources; PIL ignores it for other formats).

    ``tensor_jpeg``: a JPEG that PIL's draft cannot shrink (a side below ``2 * draft``) is decoded by
    ``torchvision.io.decode_jpeg`` (libjpeg-turbo) into a uint8 ``[3, H, W]`` tensor instead, which timm's transforms
    take as well (``DecodeSample`` asks for it in evaluation, where it measured faster end to end:
    benchmarks/bench_label_memory.py). PNG/WEBP and shrinkable JPEGs stay with PIL; a JPEG torchvision rejects goes
    to PIL, whose error is the counted skip."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and tensor_jpeg and (not draft or min(img.size) < 2 * draft):
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))
    return img.convert("RGB")


class Collate:
    """Stack decoded samples into ``{"image", "label_ids", "label_weights", "key", "__meta__"}`` (the contract in
    ``datamodules.targets``; labels padded to ``max_labels``); the metadata carries the logical worker, the raw-stream
    offset after the batch and the skip counts since the previous batch."""

    def __init__(self, counter: SkipCounter, lw: int, max_labels: int = 0) -> None:
        self.counter = counter
        self.lw = lw
        self.max_labels = max_labels

    def __call__(self, samples: list[dict]) -> dict:
        ids, weights = pad_labels(
            [s["label_ids"] for s in samples], [s["label_weights"] for s in samples], self.max_labels
        )
        return {
            # default_collate stacks straight into shared memory inside a worker (no copy on the way out)
            "image": default_collate([s["image"] for s in samples]),
            "label_ids": ids,
            "label_weights": weights,
            "key": [s["key"] for s in samples],
            META: {"lw": self.lw, "raw_end": samples[-1]["__raw__"] + 1, "counts": self.counter.take()},
        }


class DraftResizedCrop:
    """timm's ``RandomResizedCropAndInterpolation`` that decodes a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8)
    at which its crop still covers the output size, then crops and resizes in one PIL ``resize(box=...)``.

    Same random draws, in the same order, as the wrapped transform (crop box from the image size in the JPEG header,
    then the interpolation), so a seeded sample gets the same crop; only the pixels come from a DCT-domain
    downscale instead of a full decode plus a larger resize (at 64 px from 256-px sources most crops decode at 1/2
    or 1/4: benchmarks/bench_data.py). Any other input (PNG, an already decoded image, a tensor) goes to the wrapped
    transform unchanged. Written here because neither timm nor torchvision fuse the crop into JPEG decoding (DALI
    and FFCV do, on their own formats).
    """

    def __init__(self, crop: Any) -> None:
        self.crop = crop
        self.size = crop.size if isinstance(crop.size, tuple) else (crop.size, crop.size)  # (h, w)

    def __repr__(self) -> str:
        return f"DraftResizedCrop({self.crop!r})"

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, Image.Image) or img.format != "JPEG" or not img.tile:  # not a JPEG still to decode
            if isinstance(img, Image.Image) and img.mode != "RGB":
                img = img.convert("RGB")
            return self.crop(img)
        full_w, full_h = img.size
        i, j, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        interp = self.crop.interpolation
        interp = random.choice(interp) if isinstance(interp, (tuple, list)) else interp
        out_h, out_w = self.size
        factor = 8
        while factor > 1 and (h < factor * out_h or w < factor * out_w):
            factor //= 2
        if factor > 1:
            img.draft("RGB", (-(-full_w // factor), -(-full_h // factor)))
        img = img.convert("RGB")
        sx, sy = img.size[0] / full_w, img.size[1] / full_h
        box = (j * sx, i * sy, (j + w) * sx, (i + h) * sy)
        return img.resize((out_w, out_h), PIL_RESAMPLE[interp], box=box)


def image_transform(data_cfg: Any, train: bool, grayscale_safe: bool = False) -> Any:
    """timm transform: train = RandomResizedCrop(scale_min..1) + hflip (+ RandAugment), eval = resize + center crop;
    uint8 ``[3, H, W]`` out (timm's ``use_prefetcher`` form: ImageNet mean/std are applied on the device by
    ``datamodules.targets.BatchTransform``). ``grayscale_safe`` (small centred objects, e.g. Fashion-MNIST): the train crop keeps the whole
    image (scale and ratio 1) so the object is never cut out."""
    from timm.data import create_transform

    aug = data_cfg.augment
    if not train:
        return create_transform(
            data_cfg.img_size,
            is_training=False,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            crop_pct=1.0 if grayscale_safe else None,
            use_prefetcher=True,  # uint8 CHW out; normalized on the device (datamodules.targets)
        )
    scale = (1.0, 1.0) if grayscale_safe else (float(aug.scale_min), 1.0)
    ratio = (1.0, 1.0) if grayscale_safe else None
    transform = create_transform(
        data_cfg.img_size,
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=float(aug.hflip),
        auto_augment=None if grayscale_safe else aug.rand_augment,
        color_jitter=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        use_prefetcher=True,
    )
    if type(transform.transforms[0]).__name__ == "RandomResizedCropAndInterpolation":
        transform.transforms[0] = DraftResizedCrop(transform.transforms[0])
    return transform


def draft_size(img_size: int, scale_min: float, train: bool) -> int:
    """Smallest source side that still gives the smallest random crop (area scale_min, aspect 3/4) full resolution."""
    if not train:
        return math.ceil(img_size / DEFAULT_CROP_PCT)  # timm's eval resize before the center crop
    return math.ceil(img_size / math.sqrt(max(scale_min, 1e-3) * 0.75))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# --------------------------------------------------------------------------------------- streams


@dataclass
class StreamSpec:
    """Everything a stream needs, picklable (workers get a copy)."""

    shards: list[ShardInfo]
    label_space: str
    num_classes: int
    batch_size: int
    rank: int
    world_size: int
    num_workers: int  # DataLoader workers; 0 means the main process acts as the single worker
    seed: int
    img_size: int
    transform: Any
    draft: int
    numpy_rng: bool = False  # the train transform draws from numpy (RandAugment), so seed it per sample too
    max_labels: int = 0  # label-id padding width (datamodules.targets.pad_labels); 0: the batch's longest list

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    @property
    def counts(self) -> dict[str, int]:
        return {s.url: s.num_samples for s in self.shards}


class ShardSource(IterableDataset):
    """Infinite shard stream of the non-resampled mode: the list shuffled per round by a seed shared by all slots,
    then split by slot (rank-major); with fewer shards than slots every slot reads all shards with a sample stride.

    Written by hand rather than ``SimpleShardList + detshuffle + split_by_node + split_by_worker`` because the split is
    by *logical* worker (rotated on resume, see ``datamodules.loaders``), not the physical worker id those read, and
    because each round is tagged so shuffle groups never straddle two rounds."""

    def __init__(self, urls: list[str], seed: int, slot: int, slots: int) -> None:
        super().__init__()
        self.urls, self.seed, self.slot, self.slots = urls, seed, slot, slots

    def __iter__(self) -> Iterator[dict]:
        for rnd in range(1 << 62):
            order = list(self.urls)
            random.Random(mix_seed(self.seed, rnd)).shuffle(order)
            if len(order) >= self.slots:
                yield from ({"url": u, "round": rnd} for u in order[self.slot :: self.slots])
            else:
                yield from ({"url": u, "round": rnd, "stride": (self.slots, self.slot)} for u in order)


class TrainStream(IterableDataset):
    """Training stream of one rank (see the module docstring); ``begin`` sets the pass before each iteration.

    The pass configuration lives in a shared-memory array (open_clip's ``SharedEpoch`` idea, for the whole pass
    state), so persistent workers read the current pass when a new iteration starts instead of being re-spawned.
    """

    def __init__(self, spec: StreamSpec, resampled: bool, quota: int, shuffle_buffer: int) -> None:
        super().__init__()
        self.spec = spec
        self.resampled = resampled
        self.quota = quota  # batches per logical worker per pass
        self.shuffle_buffer = shuffle_buffer
        self.workers = max(1, spec.num_workers)
        # [epoch, pass, rotation, done[0..W-1], offsets[0..W-1]]; written by the main process before iter().
        self._shared = multiprocessing.get_context().Array("q", 3 + 2 * self.workers, lock=False)

    def begin(self, epoch: int, pass_idx: int, batches: int, offsets: list[int] | None) -> list[int]:
        """Configure the next pass: ``batches`` already consumed (round-robin over workers), raw offsets per worker."""
        workers = self.workers
        done = [batches // workers + (1 if lw < batches % workers else 0) for lw in range(workers)]
        if offsets is None:  # no record: assume nothing was skipped (exact unless a sample failed to decode)
            offsets = [d * self.spec.batch_size for d in done]
        if len(offsets) != workers:
            raise ValueError(f"a position for {len(offsets)} workers cannot resume {workers} workers")
        self._shared[:] = [epoch, pass_idx, batches % workers, *done, *offsets]
        return list(offsets)

    def pass_state(self) -> tuple[int, int, int, list[int], list[int]]:
        """(epoch, pass, rotation, done per logical worker, raw offsets per logical worker) of the current pass."""
        values = list(self._shared)
        w = self.workers
        return values[0], values[1], values[2], values[3 : 3 + w], values[3 + w :]

    def pipeline(self, lw: int, epoch: int, pass_idx: int, start: int) -> wds.DataPipeline:
        """The stages of logical worker ``lw`` for pass ``pass_idx`` of ``epoch``, skipping ``start`` raw samples."""
        s = self.spec
        slot = s.rank * self.workers + lw
        pass_seed = mix_seed(s.seed, epoch, pass_idx)
        worker_seed = mix_seed(pass_seed, s.rank, lw)
        counter = SkipCounter(where=f"weak_label rank {s.rank} worker {lw}: ", max_in_a_row=MAX_SKIPS_IN_A_ROW)
        urls = [x.url for x in s.shards]
        if self.resampled:
            source = wds.ResampledShards(urls, seed=worker_seed, deterministic=True, worker_seed=partial(int, 0))
        else:
            source = ShardSource(urls, pass_seed, slot, s.slots)
        shuffle = GroupShuffle(self.shuffle_buffer, mix_seed(worker_seed, 1))
        counts = s.counts  # built once per pass: 100k entries at web scale
        stages = [
            source,
            ShardGroups(counts, GROUP_BUFFERS * self.shuffle_buffer),
            ResumeAt(start, shuffle, counts),
            ReadShards(counts, counter, max_empty=max(50, 2 * len(urls))),
            shuffle,
            wds.map(
                NameShard(
                    DecodeSample(
                        s.label_space, s.num_classes, s.transform, s.draft, mix_seed(worker_seed, 2), s.numpy_rng
                    ),
                    counter,
                ),
                handler=counter,
            ),
            wds.batched(s.batch_size, collation_fn=Collate(counter, lw, s.max_labels), partial=False),
        ]
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[dict]:
        epoch, pass_idx, rotation, done, offsets = self.pass_state()
        worker, _ = _worker()
        lw = (worker + rotation) % self.workers
        remaining = self.quota - done[lw]
        if remaining <= 0:
            return
        # The stream under the quota is infinite (repeating shard source), so with_epoch fixes the pass length.
        yield from self.pipeline(lw, epoch, pass_idx, offsets[lw]).with_epoch(remaining)


def stream_slots(spec: StreamSpec) -> tuple[list[list[list[dict]]], str]:
    """Assign val shards to (rank, worker) slots: ``[rank][worker] -> shard entries``, and the mode used.

    Whole shards, greedily by size, when there are at least as many shards as slots and the slots end up balanced;
    otherwise every slot reads every shard and keeps every ``slots``-th sample of the concatenated split (exact and
    balanced to one sample, but each slot reads every val shard).
    """
    workers = max(1, spec.num_workers)
    slots = spec.slots
    if len(spec.shards) >= slots:
        loads = [0] * slots
        assign: list[list[dict]] = [[] for _ in range(slots)]
        for shard in sorted(spec.shards, key=lambda x: (-x.num_samples, x.url)):
            k = min(range(slots), key=lambda i: (loads[i], i))
            assign[k].append({"url": shard.url, "n": shard.num_samples})
            loads[k] += shard.num_samples
        # Whole shards only when the slots end up balanced (within a batch or 10%); else striding balances exactly.
        if max(loads) <= 1.1 * sum(loads) / slots + spec.batch_size:
            return [[assign[r * workers + w] for w in range(workers)] for r in range(spec.world_size)], "shards"
    # Stride over the global sample index g (val shards in manifest order): rank g % world, then worker
    # (g // world) % workers, so ranks differ by at most one sample and a rank's workers by at most one.
    per_rank = [[[] for _ in range(workers)] for _ in range(spec.world_size)]
    start = 0
    for shard in spec.shards:
        for r in range(spec.world_size):
            for w in range(workers):
                first = (r + spec.world_size * w - start) % slots
                n = len(range(first, shard.num_samples, slots))
                per_rank[r][w].append({"url": shard.url, "n": n, "stride": (slots, first)})
        start += shard.num_samples
    return per_rank, "stride"


class EvalStream(IterableDataset):
    """Validation stream of one rank: every val sample once over all ranks, equal batch counts per rank."""

    def __init__(self, spec: StreamSpec) -> None:
        super().__init__()
        self.spec = spec
        self.assignment, self.mode = stream_slots(spec)
        samples = [[sum(e["n"] for e in w) for w in r] for r in self.assignment]
        self.batches = equalize_batches(samples, spec.batch_size)
        self.num_batches = sum(self.batches[spec.rank])

    def __iter__(self) -> Iterator[dict]:
        s = self.spec
        worker, _ = _worker()
        entries = self.assignment[s.rank][worker]
        n = sum(e["n"] for e in entries)
        plan = split_plan(n, s.batch_size, self.batches[s.rank][worker])
        counter = SkipCounter(where=f"weak_label val rank {s.rank} worker {worker}: ")
        counts = {e["url"]: c for e in entries if (c := s.counts.get(e["url"])) is not None}
        read = ReadShards(counts, counter, max_empty=1 << 30, strict=True)(iter(entries))
        raw = ({**sample, "__raw__": j} for j, sample in enumerate(read))
        decode = DecodeSample(s.label_space, s.num_classes, s.transform, s.draft, seed=None)
        collate = Collate(counter, worker, s.max_labels)
        lost_before = counter.counts["samples_lost"]
        for size in plan:
            good = []
            for _ in range(size):
                sample = next(raw, None)
                if sample is None:
                    raise ManifestMismatchError(
                        f"val shards of rank {s.rank} worker {worker} ended before the {n} samples the manifest lists "
                        f"(skips: {dict(counter.counts)}); validation needs intact val shards"
                    )
                try:
                    good.append(decode(sample))
                except Exception as exn:  # noqa: BLE001 - counted skip
                    counter(exn)
            if not good:
                raise RuntimeError(
                    f"a val batch of rank {s.rank} worker {worker} has no decodable sample "
                    f"({dict(counter.counts)}); every rank must yield the same number of batches"
                )
            yield collate(good)
        extra = next(raw, None)
        if counter.counts["samples_lost"] > lost_before or extra is not None:
            where = f"; {extra['__url__']} holds more samples than the manifest lists" if extra is not None else ""
            raise ManifestMismatchError(
                f"val shards of rank {s.rank} worker {worker} disagree with the manifest ({dict(counter.counts)}){where}"
            )


class StreamSource(BatchSource):
    """Training batches of the weak-label stream (a ``BatchSource`` for ``PassLoader``)."""

    def __init__(self, stream: TrainStream) -> None:
        self.stream = stream
        self.batch_size = stream.spec.batch_size
        self.num_workers = stream.spec.num_workers
        self.num_batches = stream.quota * max(1, self.num_workers)
        # Persistent workers: a new pass only re-reads the shared pass state (see TrainStream).
        self.dataloader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def begin(self, epoch: int, pass_idx: int, batches: int, offsets: list[int] | None) -> list[int]:
        return self.stream.begin(epoch, pass_idx, batches, offsets)


# --------------------------------------------------------------------------------------- builders


class WeakLabelData:
    """The weak-label dataset of a run config: manifest, label space, scale subset, and its loaders.

    Construction reads only the manifest (no shard is opened).
    """

    def __init__(self, cfg: Any) -> None:
        wl = cfg.data.weak_label
        self.cfg = cfg
        self.manifest = Manifest.load(wl.manifest)
        self.label_space = str(wl.label_space)
        self.num_classes, self.label_names = self.manifest.label_space(self.label_space)
        self.train_shards = self.manifest.train_shards(float(wl.scale), wl.shards)
        self.num_train_samples = sum(s.num_samples for s in self.train_shards)
        # Fixed label-id width from the miner's cap (labels/ configs: vocab.max_labels_per_image), when recorded.
        cap = (self.manifest.data.get("pipeline_config") or {}).get("vocab", {}).get("max_labels_per_image")
        self.max_labels = int(cap) if isinstance(cap, int) and cap > 0 else 0
        self._check_local(self.train_shards, "train")

    def _check_local(self, shards: list[ShardInfo], split: str) -> None:
        """Fail early when local shards are missing, checking at most CHECK_SHARDS of them (first, last, evenly spaced
        between): start-up costs the same at 100k shards and on every one of 128 ranks. A shard missing later is a
        counted skip in training and an error in validation."""
        step = max(1, -(-len(shards) // CHECK_SHARDS))
        sample = [*shards[::step], shards[-1]] if shards else []
        missing = [s.url for s in sample if not _is_remote(s.url) and not os.path.isfile(s.url)]
        if missing:
            raise ManifestError(
                f"manifest {self.manifest.path} lists {split} shard(s) that do not exist, e.g. {missing[0]} "
                f"({len(missing)} missing of the {len(sample)} checked)"
            )

    def _spec(
        self,
        shards: list[ShardInfo],
        batch_size: int,
        rank: int,
        world: int,
        train: bool,
        num_workers: int | None = None,
    ) -> StreamSpec:
        d = self.cfg.data
        return StreamSpec(
            shards=shards,
            label_space=self.label_space,
            num_classes=self.num_classes,
            batch_size=batch_size,
            rank=rank,
            world_size=world,
            num_workers=d.num_workers if num_workers is None else num_workers,
            seed=int(self.cfg.seed),
            img_size=int(d.img_size),
            transform=image_transform(d, train),
            draft=draft_size(int(d.img_size), float(d.augment.scale_min), train),
            numpy_rng=train and bool(d.augment.rand_augment),
            max_labels=self.max_labels,
        )

    def train_source(self, rank: int, world: int) -> StreamSource:
        """Training batches for ``rank`` of ``world``: a fixed number per pass, equal on every rank."""
        d = self.cfg.data
        spec = self._spec(self.train_shards, int(d.batch_size), rank, world, train=True)
        workers = max(1, spec.num_workers)
        resampled = bool(d.weak_label.resampled)
        if len(self.train_shards) < spec.slots and rank == 0:
            warnings.warn(
                f"weak_label: {len(self.train_shards)} train shard(s) for {spec.slots} rank x worker slots; "
                + (
                    "resampled shards repeat samples across workers within an epoch"
                    if resampled
                    else "every slot reads every shard and keeps every n-th sample (more I/O)"
                )
                + "; write more, smaller shards or use fewer data.num_workers",
                stacklevel=2,
            )
        if d.augment.mixup_alpha > 0 and d.batch_size % 2:
            raise DataConfigError(f"data.batch_size={d.batch_size} must be even when data.augment.mixup_alpha > 0")
        global_batches = math.ceil(self.num_train_samples / (spec.batch_size * world))
        quota = math.ceil(global_batches / workers)
        stream = TrainStream(spec, resampled, quota, int(d.shuffle_buffer))
        return StreamSource(stream)

    def eval_stream(self, rank: int = 0, world: int = 1, num_workers: int | None = None) -> EvalStream:
        """The val split for ``rank`` of ``world`` (every val sample once across ranks)."""
        shards = self.manifest.shards("val")
        self._check_local(shards, "val")
        d = self.cfg.data
        return EvalStream(
            self._spec(
                shards, int(d.eval_batch_size or d.batch_size), rank, world, train=False, num_workers=num_workers
            )
        )

    def eval_dataloader(self, rank: int = 0, world: int = 1, num_workers: int | None = None) -> tuple[DataLoader, int]:
        """(DataLoader, number of batches) over the val split."""
        stream = self.eval_stream(rank, world, num_workers)
        workers = stream.spec.num_workers
        return DataLoader(
            stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available()
        ), stream.num_batches
