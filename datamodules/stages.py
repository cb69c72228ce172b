"""The stages of the weak-label stream, in pipeline order (docs/ARCHITECTURE.md "Streaming a shard set"):
``SlotShards`` -> ``ShardGroups`` -> ``ResumeAt`` -> ``ReadShards`` -> ``GroupShuffle`` -> ``DecodeSample`` ->
``Collate``, plus the skip counting they share. ``datamodules.streams`` chains them.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, default_collate

import storage
from datamodules.loaders import META, index_seed, mix_seed, seed_sample_rngs
from datamodules.manifest import ManifestMismatchError
from datamodules.storage import ShardOpener
from datamodules.tar_reader import TarFormatError, iter_members
from datamodules.targets import label_arrays, pad_labels
from datamodules.transforms import DraftResizedCrop, decode_image

log = logging.getLogger(__name__)

MAX_UNREACHABLE = 3  # shards in a row failing at the storage retry deadline before the store counts as down

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
READ_EXTS = frozenset((*IMAGE_EXTS, "json"))
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
        self.in_a_row = 0  # skips since the last sample that decoded

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

    def decoded(self) -> None:
        """A sample decoded: the run of skips in a row ends."""
        self.in_a_row = 0

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
            self.counter.decoded()
        return out


class SlotShards(IterableDataset):
    """Shard entries of one slot of a non-resampled pass (``datamodules.slots``): the pass's shard list shuffled by the
    pass seed (the same for every slot, rank and cluster) and laid end to end is the pass's sample sequence (manifest
    counts); the slot reads its range ``[start, end)`` of it, as ``{"url", "range": (lo, hi), "round"}`` entries (a range
    past the sequence's end wraps to its start: the round-up of the last batches). Later rounds repeat the same range
    (what a slot reads past its quota: the pads that keep ranks equal). ``sequence`` is ``pass_sequence``'s.

    Written by hand rather than ``SimpleShardList + detshuffle + split_by_node + split_by_worker`` because a slot is a
    range of samples, not a set of shards (any number of slots on any number of shards, every sample once per pass),
    and because each round is tagged so shuffle groups never straddle two rounds."""

    def __init__(self, sequence: tuple[list[str], list[int]], start: int, end: int) -> None:
        super().__init__()
        self.sequence, self.start, self.end = sequence, start, end

    def __iter__(self) -> Iterator[dict]:
        order, ends = self.sequence
        total = ends[-1] if ends else 0
        if total == 0 or self.end <= self.start:
            return
        for rnd in range(1 << 62):
            pos = self.start
            while pos < self.end:
                g = pos % total
                i = bisect.bisect_right(ends, g)
                lo = g - (ends[i - 1] if i else 0)
                take = min(ends[i] - g, self.end - pos)
                # A wrap past the sequence's end is its own round: its repeats are shuffled after every first read.
                yield {"url": order[i], "range": (lo, lo + take), "round": (rnd, pos // total)}
                pos += take


def pass_sequence(urls: list[str], counts: dict[str, int], seed: int) -> tuple[list[str], list[int]]:
    """A pass's sample sequence for ``SlotShards``: the shard order (shuffled by ``seed``; shards the manifest counts as
    empty left out) and the cumulative sample count at the end of each shard."""
    order = [u for u in urls if counts.get(u, 0) > 0]
    random.Random(seed).shuffle(order)
    return order, list(itertools.accumulate(counts[u] for u in order))


class ReadShards:
    """Tar shards -> raw samples ``{"__key__", "__url__", "jpg", "json", ...}`` (bytes), checked against the manifest.

    Shard entries are ``{"url"}`` plus, optionally, ``"stride": (n, i)`` (keep only samples ``j % n == i``) or ``"range":
    (lo, hi)`` (keep samples ``lo <= j < hi``; stop reading at ``hi``), ``"skip"``
    (kept-sample indices a resumed pass already consumed: yielded as ``{"__skip__": True}`` placeholders whose payload
    is never read, see ``datamodules.tar_reader``) and the shuffle-group fields of ``ShardGroups``, copied onto each
    sample. Samples are grouped by webdataset's key rule inline (``base_plus_ext``: the key is the path up to the first
    dot of the file name, the extension the rest, lower-cased), because the generic ``group_by_keys`` costs more per
    sample than the rest of the tar reading; ``tarfile_to_samples`` cannot skip payloads, hence this stage.

    Bad shards never stop training: a shard that cannot be opened (missing, or a remote read still failing at the
    retry deadline of ``datamodules.storage``), is corrupt or truncated is logged and counted
    (``shard_read_error``, ``samples_lost`` for what the manifest listed but was not read) after the samples read
    before the break; a complete shard whose count differs from the manifest is counted (``count_mismatch``, naming
    the shard) and only its first manifest-count samples are used (``samples_extra`` for the rest), so sample numbers
    stay within what the manifest assigns to it. With ``strict`` (validation) a count mismatch raises
    ``ManifestMismatchError`` instead.
    """

    def __init__(
        self,
        counts: dict[str, int],
        counter: SkipCounter,
        max_empty: int,
        strict: bool = False,
        opener: ShardOpener | None = None,
    ) -> None:
        self.counts = counts
        self.opener = opener or ShardOpener()  # local, fsspec URL (retried) or pipe:; the optional shard cache
        self.counter = counter
        self.max_empty = max_empty
        self.strict = strict
        self.empty_run = 0  # shards in a row that gave no sample: a run of them means the data is gone
        self.unreachable_run = 0  # shards in a row whose reads kept failing transiently until the retry deadline

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
            lo, hi = shard.get("range") or (0, None)
            # A range that ends before the shard does stops reading there (its count is checked by the slot that reads
            # the shard's end); otherwise the whole shard is read, payloads past the kept samples skipped by header.
            stop = hi if hi is not None and expected is not None and hi < expected else None
            skip = shard.get("skip") or ()
            tags = {f"__{k}__": shard[k] for k in ("group", "gstart") if k in shard}

            def kept(j: int, every=every, first=first, lo=lo, hi=hi, limit=limit) -> int | None:
                """Index of sample ``j`` among the entry's samples, None when the entry does not use it."""
                if j % every != first or j < lo or (hi is not None and j >= hi) or (limit is not None and j >= limit):
                    return None
                return j // every if every > 1 else j - lo

            def read(j: int, kept=kept, skip=skip) -> bool:
                k = kept(j)
                return k is not None and k not in skip

            n = 0
            try:
                stream = self.opener(url)
            except Exception as exn:  # noqa: BLE001 - any opener failure is a counted skip
                self._check_unreachable(exn, url)
                self.counter.add("shard_read_error", detail=f"{url}: {exn!r}")
                self.counter.add("samples_lost", (stop or expected or 0) - lo, detail=url)
                self._check_empty_run(0, url)
                continue
            problem = None
            try:
                for sample in self._samples(stream, url, read):
                    if kept(n) is not None:
                        sample.update(tags)
                        yield sample
                    n += 1
                    if stop is not None and n >= stop:
                        break
            except (OSError, EOFError, ValueError) as exn:  # TarFormatError (truncated/corrupt) is a ValueError
                problem = repr(exn)
                self._check_unreachable(exn, url)
            finally:
                stream.close()
            end = stop if stop is not None else expected
            if problem is not None:
                self.counter.add("shard_read_error", detail=f"{url} after {n} samples: {problem}")
                if end is not None and end > max(n, lo):
                    self.counter.add("samples_lost", end - max(n, lo), detail=url)
            elif stop is not None and n < stop or stop is None and expected is not None and n != expected:
                msg = f"shard {url} holds {n} samples but the manifest lists {expected}"
                if self.strict:
                    raise ManifestMismatchError(
                        f"{msg}; the manifest does not describe these shards (rebuild them with mine_labels.py or fix "
                        "data.weak_label.manifest)"
                    )
                self.counter.add("count_mismatch", detail=msg)
                if n < end:
                    self.counter.add("samples_lost", end - max(n, lo), detail=url)
                else:
                    self.counter.add("samples_extra", n - end, detail=url)
            if problem is None:
                self.unreachable_run = 0
            self._check_empty_run(max(0, n - lo), url)

    def _check_unreachable(self, exn: BaseException, url: str) -> None:
        """A shard whose reads failed transiently until the retry deadline (``storage.StorageError``) is a counted
        skip; ``MAX_UNREACHABLE`` such shards in a row mean the store itself is away, and the run ends naming it
        rather than waiting out one deadline per shard of the epoch."""
        self.unreachable_run = self.unreachable_run + 1 if isinstance(exn, storage.StorageError) else 0
        if self.unreachable_run >= MAX_UNREACHABLE:
            raise RuntimeError(
                f"the shard store is unreachable: {self.unreachable_run} shards in a row kept failing until the retry "
                f"deadline, the last {url}: {exn}"
            ) from exn

    def _check_empty_run(self, n: int, url: str) -> None:
        self.empty_run = self.empty_run + 1 if n == 0 else 0
        if self.empty_run > self.max_empty:
            raise RuntimeError(
                f"no sample could be read from {self.empty_run} shards in a row (last: {url}); "
                f"skip counts so far: {dict(self.counter.counts)}"
            )


def slot_count(entry: dict, counts: dict[str, int]) -> int:
    """Samples a training shard entry contributes by the manifest (its range when it has one; strides are val-only)."""
    n = counts.get(entry["url"], 0)
    lo, hi = entry.get("range") or (0, n)
    return max(0, min(hi, n) - lo)


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


class Collate:
    """Stack decoded samples into ``{"image", "label_ids", "label_weights", "key", "__meta__"}`` (the contract in
    ``datamodules.targets``; labels padded to ``max_labels``); the metadata carries the logical worker, the plan piece,
    the raw-stream offset after the batch and the skip counts since the previous batch."""

    def __init__(self, counter: SkipCounter, lw: int, max_labels: int = 0, piece: int | None = None) -> None:
        self.counter = counter
        self.lw = lw
        self.max_labels = max_labels
        self.piece = piece  # the plan piece (``datamodules.slots``) a training batch belongs to

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
            META: {
                "lw": self.lw,
                "piece": self.piece,
                "raw_end": samples[-1]["__raw__"] + 1,
                "counts": self.counter.take(),
            },
        }
