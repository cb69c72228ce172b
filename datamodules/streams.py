"""The weak-label streams: the training stream of one rank (``TrainStream``: one ``wds.DataPipeline`` of
``datamodules.stages`` per logical worker) and the validation stream (``EvalStream``); docs/ARCHITECTURE.md
"Streaming a shard set" shows the chain, ``datamodules.weak_label`` lists the guarantees.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.loaders import BatchSource, equalize_batches, mix_seed, split_plan
from datamodules.manifest import ManifestMismatchError, ShardInfo
from datamodules.stages import (
    Collate,
    DecodeSample,
    GroupShuffle,
    NameShard,
    ReadShards,
    ResumeAt,
    ShardGroups,
    ShardSource,
    SkipCounter,
)
from datamodules.storage import ShardOpener

# Samples in a row that a training worker may skip before it gives up: a stream where nothing decodes (a broken
# transform, a corpus of error pages) must end the run with the cause, not spin through shards forever.
MAX_SKIPS_IN_A_ROW = 10_000
GROUP_BUFFERS = 4  # a shuffle group holds at least this many shuffle buffers of samples (bounds the resume replay)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


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
    transform: Any
    draft: int
    numpy_rng: bool = False  # the train transform draws from numpy (RandAugment), so seed it per sample too
    max_labels: int = 0  # label-id padding width (datamodules.targets.pad_labels); 0: the batch's longest list
    opener: ShardOpener = field(default_factory=ShardOpener)  # how shards are opened (the shard cache: data.cache_*)

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    @cached_property
    def counts(self) -> dict[str, int]:
        """Manifest sample count per shard url (built once: 100k entries at web scale)."""
        return {s.url: s.num_samples for s in self.shards}


class TrainStream(IterableDataset):
    """Training stream of one rank; ``begin`` sets the pass before each iteration.

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
        counts = s.counts
        stages = [
            source,
            ShardGroups(counts, GROUP_BUFFERS * self.shuffle_buffer),
            ResumeAt(start, shuffle, counts),
            ReadShards(counts, counter, max_empty=max(50, 2 * len(urls)), opener=s.opener),
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
        read = ReadShards(counts, counter, max_empty=1 << 30, strict=True, opener=s.opener)(iter(entries))
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
