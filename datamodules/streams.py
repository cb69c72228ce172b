"""The weak-label streams: the training stream of one rank (``TrainStream``: one ``wds.DataPipeline`` of
``datamodules.stages`` per logical worker) and the validation stream (``EvalStream``); docs/ARCHITECTURE.md
"Streaming a shard set" shows the chain, ``datamodules.weak_label`` lists the guarantees.
"""

from __future__ import annotations

import itertools
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
from datamodules.slots import Piece, Plan, cut_plan, fresh_plan, layout_quotas, pass_batches
from datamodules.stages import (
    Collate,
    DecodeSample,
    GroupShuffle,
    NameShard,
    ReadShards,
    ResumeAt,
    ShardGroups,
    SkipCounter,
    SlotShards,
    pass_sequence,
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


HEADER = 8  # shared pass state: epoch, pass, rotation, layout ranks, layout workers, layout batches, plan size, padded
PIECE = 7  # per plan piece: slot, first, count, raw, chunk, batches done, raw index after them


def effective_slots(stream_slots: int, num_samples: int, shuffle_buffer: int) -> int:
    """Logical slots of a pass: ``data.stream_slots``, but no more than one per ``shuffle_buffer`` samples, so that a
    slot's shuffle mixes as much as one worker's did (a slot's batches come from its own range of the pass). Depends on
    the config and the manifest only, never on the world size or worker count."""
    return max(1, min(int(stream_slots), num_samples // max(1, shuffle_buffer)))


class TrainStream(IterableDataset):
    """Training stream of one rank over ``slots`` logical slots (``datamodules.slots``); ``begin`` sets the pass (its
    layout and plan) before each iteration.

    The pass state lives in a shared-memory array (open_clip's ``SharedEpoch`` idea, for the whole pass state: the
    plan is O(slots) integers), so persistent workers read the current pass when a new iteration starts instead of
    being re-spawned. Physical worker ``w`` serves logical worker ``(w + rotation) % workers``: its lane of the plan,
    piece after piece, each piece a ``wds.DataPipeline`` over its slot that starts at the piece's raw index.
    """

    def __init__(self, spec: StreamSpec, resampled: bool, shuffle_buffer: int, slots: int) -> None:
        super().__init__()
        self.spec = spec
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.slots = slots
        self.workers = max(1, spec.num_workers)
        self.num_samples = sum(spec.counts.values())
        self.total = pass_batches(self.num_samples, spec.batch_size, spec.world_size)  # batches of a fresh pass
        capacity = slots + spec.world_size * self.workers + 1  # pieces of a fresh plan: slots, or cuts of fewer slots
        self._shared = multiprocessing.get_context().Array("q", HEADER + PIECE * capacity, lock=False)
        self._begun = False

    @property
    def rank_batches(self) -> int:
        """Batches each rank yields in a fresh pass."""
        return self.total // self.spec.world_size

    def begin(self, epoch: int, pass_idx: int, pos: dict | None) -> dict:
        """Configure the next pass: fresh (``pos`` None) or continued at a saved position (``PassLoader``). A position
        saved on this world size and worker count continues its plan (rotation = plan batches % workers, so physical
        worker 0 yields the batch an uninterrupted run would have yielded next); on any other it is cut anew over this
        cluster (``slots.cut_plan``). Returns the start state ``position`` needs."""
        s = self.spec
        w = self.workers
        if pos is None:
            layout = [s.world_size, w, self.total]
            plan = fresh_plan(self.slots, s.world_size, w, self.total, s.batch_size)
            progress, done = [[0, p.raw] for p in plan.pieces], 0
        else:
            layout = [int(x) for x in pos["layout"]]
            plan = Plan.from_state(pos["plan"])
            progress = [[int(d), int(r)] for d, r in pos["progress"]]
            done = int(pos["plan_batches"])
            if (plan.ranks, plan.workers) != (s.world_size, w):
                plan = cut_plan(plan.remaining(progress), s.world_size, w, s.batch_size)
                progress, done = [[0, p.raw] for p in plan.pieces], 0
        need = HEADER + PIECE * len(plan.pieces)
        if need > len(self._shared):
            # Only a plan cut over another cluster can exceed the default size, and it is the first pass of the run:
            # the loader's workers have not started yet (they start at its first iteration, after this), so the
            # array can still be replaced. Later passes are fresh plans (at most one piece per slot).
            if self._begun:
                raise RuntimeError(
                    f"a plan of {len(plan.pieces)} pieces does not fit the pass state of running workers"
                )
            self._shared = multiprocessing.get_context().Array("q", need, lock=False)
        self._begun = True
        rows = [v for p, (d, r) in zip(plan.pieces, progress) for v in (p.slot, p.first, p.count, p.raw, p.chunk, d, r)]
        self._shared[: HEADER + len(rows)] = [epoch, pass_idx, done % w, *layout, len(plan.pieces), plan.padded, *rows]
        return {"layout": layout, "plan": plan, "progress": progress, "plan_batches": done}

    def pass_state(self) -> tuple[int, int, int, list[int], Plan, list[tuple[int, int]]]:
        """(epoch, pass, rotation, layout, plan, progress at the start) of the current pass."""
        head = list(self._shared[:HEADER])
        n = head[6]
        rows = list(self._shared[HEADER : HEADER + PIECE * n])
        pieces = tuple(Piece(*rows[i * PIECE : i * PIECE + 5]) for i in range(n))
        progress = [(rows[i * PIECE + 5], rows[i * PIECE + 6]) for i in range(n)]
        plan = Plan(self.spec.world_size, self.workers, pieces, head[7])
        return head[0], head[1], head[2], head[3:6], plan, progress

    def pipeline(self, lw: int, epoch: int, pass_idx: int, slot: int, start: int, end: int, raw: int, piece: int):
        """The stages of ``slot`` (samples ``[start, end)`` of the pass's sequence), resumed at raw index ``raw``,
        served by logical worker ``lw`` as plan piece ``piece``. Seeds depend on the slot, never on who reads it."""
        s = self.spec
        pass_seed = mix_seed(s.seed, epoch, pass_idx)
        slot_seed = mix_seed(pass_seed, slot)
        counter = SkipCounter(where=f"weak_label rank {s.rank} worker {lw}: ", max_in_a_row=MAX_SKIPS_IN_A_ROW)
        urls = [x.url for x in s.shards]
        if self.resampled:
            source = wds.ResampledShards(urls, seed=slot_seed, deterministic=True, worker_seed=partial(int, 0))
        else:
            source = SlotShards(self._sequence(pass_seed), start, end)
        shuffle = GroupShuffle(self.shuffle_buffer, mix_seed(slot_seed, 1))
        counts = s.counts
        stages = [
            source,
            ShardGroups(counts, GROUP_BUFFERS * self.shuffle_buffer),
            ResumeAt(raw, shuffle, counts),
            ReadShards(counts, counter, max_empty=max(50, 2 * len(urls)), opener=s.opener),
            shuffle,
            wds.map(
                NameShard(
                    DecodeSample(
                        s.label_space, s.num_classes, s.transform, s.draft, mix_seed(slot_seed, 2), s.numpy_rng
                    ),
                    counter,
                ),
                handler=counter,
            ),
            wds.batched(s.batch_size, collation_fn=Collate(counter, lw, s.max_labels, piece), partial=False),
        ]
        return wds.DataPipeline(*stages)

    def _sequence(self, pass_seed: int) -> tuple[list[str], list[int]]:
        """The pass's shard order and cumulative counts (``stages.pass_sequence``), cached per pass in the worker."""
        cached = getattr(self, "_seq_cache", None)
        if cached is None or cached[0] != pass_seed:
            urls = [x.url for x in self.spec.shards]
            cached = (pass_seed, pass_sequence(urls, self.spec.counts, pass_seed))
            self._seq_cache = cached
        return cached[1]

    def __iter__(self) -> Iterator[dict]:
        epoch, pass_idx, rotation, layout, plan, progress = self.pass_state()
        worker, _ = _worker()
        lw = (worker + rotation) % self.workers
        quotas = layout_quotas(self.slots, *layout)
        starts = [0, *itertools.accumulate(q * self.spec.batch_size for q in quotas)]
        for i in plan.lane(self.spec.rank, lw):
            piece = plan.pieces[i]
            done, raw = progress[i]
            left = piece.count - done
            if left <= 0:
                continue
            # The stream under the piece is infinite (a slot repeats its range), so with_epoch fixes its length.
            yield from self.pipeline(
                lw, epoch, pass_idx, piece.slot, starts[piece.slot], starts[piece.slot + 1], raw, i
            ).with_epoch(left)


def val_assignment(spec: StreamSpec) -> tuple[list[list[list[dict]]], str]:
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
        self.assignment, self.mode = val_assignment(spec)
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
    """Training batches of the weak-label stream (a ``BatchSource`` for ``PassLoader``); its positions are portable
    across world sizes and worker counts (``datamodules.slots``)."""

    def __init__(self, stream: TrainStream) -> None:
        self.stream = stream
        self.batch_size = stream.spec.batch_size
        self.num_workers = stream.spec.num_workers
        self.num_batches = stream.rank_batches
        # Persistent workers: a new pass only re-reads the shared pass state (see TrainStream).
        self.dataloader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def begin(self, epoch: int, pass_idx: int, pos: dict | None) -> tuple[dict, int]:
        start = self.stream.begin(epoch, pass_idx, pos)
        return start, start["plan"].rank_batches(self.stream.spec.rank) - start["plan_batches"]

    def position(self, start: dict, metas: list[dict]) -> dict:
        """Where the pass is after ``metas`` (the consumed batches' metadata, in order) on this rank: the layout, the
        plan and each piece's (batches done, raw index after them). Other ranks' pieces keep their start values here;
        ``TrainLoader.state_dict`` merges the ranks (``TrainLoader._merge_progress``)."""
        progress = [list(p) for p in start["progress"]]
        for meta in metas:
            piece = progress[meta["piece"]]
            piece[0] += 1
            piece[1] = meta["raw_end"]
        return {
            "layout": start["layout"],
            "plan": start["plan"].state(),
            "progress": progress,
            "plan_batches": start["plan_batches"] + len(metas),
        }

    def describe(self) -> dict:
        s = self.stream
        return {
            "batch_size": self.batch_size,
            "num_samples": s.num_samples,
            "stream_slots": s.slots,
            "shuffle_buffer": s.shuffle_buffer,
            "resampled": s.resampled,
        }
