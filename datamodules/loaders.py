"""Loader pieces every dataset shares: seeds, the evaluation batch plans, the batch-source interface, evaluation
loaders, and the map-style path (Fashion-MNIST, image folders: ``EpochSampler`` + ``MapSource``).

Passes, data positions and resume live in ``datamodules.resume``. Workers are separate processes, so their skip
counters travel back inside each batch (``batch["__meta__"]``), stripped by the loaders before Lightning sees the
batch.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, default_collate

from datamodules.sources import DataConfigError

META = "__meta__"  # per-batch metadata key added by workers and removed by the loaders below


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (stable across processes, unlike ``hash`` of tuples of str)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(int(part).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def seed_sample_rngs(seed: int, numpy_too: bool = True) -> None:
    """Seed the RNGs torchvision/timm transforms draw from: python ``random``, torch CPU and (unless told it is not
    used, it is the costliest to seed) numpy."""
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if numpy_too:
        np.random.seed(seed & 0xFFFFFFFF)


def index_seed(base: int, index: int) -> int:
    """Seed of item ``index`` under a hashed ``base`` (``mix_seed``): cheap enough to call per sample."""
    return (base ^ (index * 0x9E3779B97F4A7C15)) & ((1 << 63) - 1)


def dist_info(trainer: Any = None) -> tuple[int, int]:
    """(rank, world_size) from an attached trainer, else torch.distributed, else (0, 1)."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def split_plan(num_samples: int, batch_size: int, num_batches: int) -> list[int]:
    """Batch sizes covering ``num_samples`` in exactly ``num_batches`` batches of at most ``batch_size``.

    Starts from full batches plus a remainder, then halves the largest batch until the count is reached, so a rank
    or worker with fewer samples can still yield as many batches as the others (equal counts per rank under DDP).
    """
    sizes = [batch_size] * (num_samples // batch_size) + (
        [num_samples % batch_size] if num_samples % batch_size else []
    )
    if len(sizes) > num_batches:
        raise ValueError(f"{num_samples} samples need {len(sizes)} batches of {batch_size}, more than {num_batches}")
    while len(sizes) < num_batches:
        i = int(np.argmax(sizes)) if sizes else -1
        if i < 0 or sizes[i] < 2:
            raise ValueError(f"cannot split {num_samples} samples into {num_batches} non-empty batches")
        half = sizes[i] // 2
        sizes[i : i + 1] = [sizes[i] - half, half]
    return sizes


def equalize_batches(samples_per_slot: list[list[int]], batch_size: int) -> list[list[int]]:
    """Number of batches per (rank, worker) slot so every rank yields the same total.

    Args:
        samples_per_slot: ``[rank][worker]`` sample counts.
        batch_size: the largest batch.

    Returns:
        ``[rank][worker]`` batch counts; each rank's sum is the largest rank's natural batch count.
    """
    natural = [[-(-n // batch_size) for n in ranks] for ranks in samples_per_slot]
    target = max(sum(r) for r in natural)
    for rank, (counts, plan) in enumerate(zip(samples_per_slot, natural)):
        deficit = target - sum(plan)
        if deficit > sum(counts) - sum(plan):
            raise DataConfigError(
                f"rank {rank} holds {sum(counts)} evaluation samples, too few for the {target} batches every rank "
                "must yield under DDP; use fewer ranks/workers or a larger evaluation split"
            )
        while deficit > 0:  # one more (smaller) batch for the worker with the most samples per batch
            w = max(range(len(counts)), key=lambda i: (counts[i] - plan[i], -i))
            plan[w] += 1
            deficit -= 1
    return natural


class BatchSource:
    """One dataset's training batches: a DataLoader plus how to set it up for a pass.

    ``num_batches``: batches each rank yields in a fresh pass. ``begin(epoch, pass, pos)`` configures the dataset or
    sampler for a pass, fresh (``pos`` None) or continued at a position ``position`` returned (possibly saved on another
    world size or worker count), and returns ``(start state, batches this rank yields from there)``.
    ``position(start, metas)`` is where the pass is after the batches whose metadata ``metas`` holds were consumed, in
    units that do not depend on the world size (``datamodules.resume``).
    """

    dataloader: DataLoader
    num_batches: int
    batch_size: int
    num_workers: int

    def begin(self, epoch: int, pass_idx: int, pos: dict | None) -> tuple[Any, int]:
        raise NotImplementedError

    def position(self, start: Any, metas: list[dict]) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        """What must match between the run that saved a position and the run that restores it (never the world size
        or the worker count: positions are portable)."""
        return {"batch_size": self.batch_size}


class EvalLoader:
    """Iterable over evaluation batches (deterministic, every sample once); strips metadata, counts skips.

    ``batch_transform`` (``datamodules.targets.BatchTransform``) is what a consumer applies once a batch is on its
    device (normalization, dense targets); Lightning does it through the DataModule's ``on_after_batch_transfer``,
    ``evaluation.embeddings.extract_outputs`` reads it from here.
    """

    def __init__(self, name: str, dataloader: DataLoader, num_batches: int, batch_transform: Any = None) -> None:
        self.name = name
        self.dataloader = dataloader
        self.num_batches = num_batches
        self.batch_transform = batch_transform
        self.counts: Counter = Counter()

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataloader:
            meta = batch.pop(META)
            self.counts.update(meta.get("counts", {}))
            yield batch


# --------------------------------------------------------------------------------- map-style data


class EpochSampler(Sampler[int]):
    """Training sampler for map-style datasets: a seeded permutation per (seed, epoch, pass), cut into global batches
    that the ranks take in turn (rank ``r`` takes global batches ``g0 + r``, ``g0 + r + world``, ...).

    A pass is ``num_samples // batch_size`` global batches whatever the world size, so a position is the number of
    global batches consumed (``g0``) and a restored run continues there on any world size. Every rank takes the same
    number of batches: the last ``< world`` global batches of a pass (and the last partial one) are left out, different
    samples each pass. ``set_pass`` picks the pass before the loader iterates (Lightning never sees this sampler: it
    iterates ``datamodules.resume``'s loaders, not the DataLoader inside).

    ``class_labels`` (one class id per sample) switches to class-balanced sampling, as metric-learning recipes
    train their proxy datasets: a pass is ``num_samples`` draws with replacement, each class equally likely and
    uniform within its class (``torch.utils.data.WeightedRandomSampler``'s rule with weights 1 / class count; written
    here because that sampler has no per-(epoch, pass) seed, rank split or resume offset).
    """

    def __init__(
        self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, class_labels: Any = None
    ) -> None:
        self.total, self.batch_size, self.rank, self.world_size, self.seed = (
            num_samples,
            batch_size,
            rank,
            world_size,
            seed,
        )
        self.global_batches = num_samples // batch_size
        self.epoch_pass = (0, 0)
        self.start = 0  # global batches of the pass consumed before this iteration
        self.pad = False  # complete the pass's last round (a pass resumed on another world size, MapSource.begin)
        self.weights = None
        if class_labels is not None:
            labels = np.asarray(class_labels, dtype=np.int64)
            if labels.shape != (num_samples,):
                raise ValueError(f"class_labels has shape {labels.shape}, expected ({num_samples},)")
            weights = 1.0 / np.bincount(labels)[labels]
            self.weights = weights / weights.sum()

    def rank_batches(self, start: int = 0, pad: bool = False) -> int:
        """Batches each rank takes from global batch ``start`` to the end of the pass: the global batches left over
        that cannot go to every rank are left out, or, with ``pad``, the last round is completed with the pass's first
        global batches (read again)."""
        left = max(0, self.global_batches - start)
        return -(-left // self.world_size) if pad else left // self.world_size

    def set_pass(self, epoch: int, pass_idx: int, start: int = 0, pad: bool = False) -> None:
        self.epoch_pass = (epoch, pass_idx)
        self.start = start
        self.pad = pad

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(mix_seed(self.seed, *self.epoch_pass))
        if self.weights is None:
            draws = rng.permutation(self.total)
        else:
            draws = rng.choice(self.total, size=self.total, replace=True, p=self.weights)
        b = self.batch_size
        for i in range(self.rank_batches(self.start, self.pad)):
            g = (self.start + self.rank + i * self.world_size) % self.global_batches  # past the end only when padding
            yield from draws[g * b : (g + 1) * b].tolist()

    def __len__(self) -> int:
        return self.rank_batches(self.start, self.pad) * self.batch_size


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches for map-style datasets: rank ``r`` takes indices ``r, r + world, ...`` (each sample exactly
    once over all ranks, no padding), cut into the same number of batches on every rank (``split_plan``)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        counts = [[len(range(r, num_samples, world_size))] for r in range(world_size)]
        self.num_batches = equalize_batches(counts, batch_size)[rank][0]
        self.indices = list(range(rank, num_samples, world_size))
        self.sizes = split_plan(len(self.indices), batch_size, self.num_batches)

    def __iter__(self) -> Iterator[list[int]]:
        pos = 0
        for size in self.sizes:
            yield self.indices[pos : pos + size]
            pos += size

    def __len__(self) -> int:
        return self.num_batches


def collate_classification(samples: Sequence[dict | None]) -> dict:
    """Stack ``{"image", "target", "key"}`` samples; ``None`` entries (unreadable, already counted by the dataset
    as ``{"__skip__": reason}``) are dropped. Adds the ``__meta__`` the loaders strip."""
    counts: dict[str, int] = {}
    good = []
    for s in samples:
        if s is None or "__skip__" in s:
            reason = s["__skip__"] if s is not None else "unreadable_image"
            counts[reason] = counts.get(reason, 0) + 1
        else:
            counts.update({k: counts.get(k, 0) + v for k, v in s.get("__counts__", {}).items()})
            good.append(s)
    if not good:
        raise RuntimeError(
            f"every sample of a batch was skipped ({counts}); every rank must yield the same number "
            "of batches, so an all-unreadable batch cannot be dropped"
        )
    return {
        "image": default_collate([s["image"] for s in good]),  # into shared memory inside a worker
        "target": torch.tensor([s["target"] for s in good], dtype=torch.long),
        "key": [s["key"] for s in good],
        META: {"counts": counts},
    }


class MapSource(BatchSource):
    """Training batches of a map-style dataset of ``{"image", "target", "key"}`` items under ``EpochSampler``.

    Args:
        name: the dataset (named in errors; its sampler seed mixes ``seed`` with the name).
        dataset: the map-style dataset.
        data_cfg: the run's ``data`` config (``batch_size``, ``num_workers``).
        seed: the run seed.
        rank, world_size: this process's share.
        class_labels: one class id per sample, for class-balanced sampling (``EpochSampler``).
    """

    def __init__(
        self,
        name: str,
        dataset: Any,
        data_cfg: Any,
        seed: int,
        rank: int,
        world_size: int,
        class_labels: Any = None,
    ) -> None:
        seed = mix_seed(seed, zlib.crc32(name.encode()))
        self.batch_size = int(data_cfg.batch_size)
        self.sampler = EpochSampler(len(dataset), self.batch_size, rank, world_size, seed, class_labels)
        self.num_workers = int(data_cfg.num_workers)
        self.num_samples = len(dataset)
        self.num_batches = self.sampler.rank_batches()
        if self.num_batches == 0:
            raise DataConfigError(
                f"{name}: {len(dataset)} training samples over {world_size} rank(s) fill no batch of "
                f"data.batch_size={self.batch_size}"
            )
        # Persistent workers: the sampler lives in this process, so a new pass needs no new workers.
        self.dataloader = DataLoader(
            dataset,
            batch_sampler=BatchSampler(self.sampler, self.batch_size, drop_last=True),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_classification,
            pin_memory=torch.cuda.is_available(),
        )

    def begin(self, epoch: int, pass_idx: int, pos: dict | None) -> tuple[tuple[int, bool], int]:
        """A pass continued on another world size than the one that saved its position is padded (its last round
        completed with re-read global batches), as ``datamodules.resume.TrainLoader`` counts the steps left of an epoch
        resumed elsewhere (rounded up, like the stream's cut plans); a position saved in such a pass keeps it."""
        world = self.sampler.world_size
        start = int(pos["global_batches"]) if pos else 0
        pad = bool(pos) and (bool(pos.get("pad")) or int(pos.get("world", world)) != world)
        self.sampler.set_pass(epoch, pass_idx, start, pad)
        return (start, pad), self.sampler.rank_batches(start, pad)

    def position(self, start: tuple[int, bool], metas: list[dict]) -> dict:
        first, pad = start
        world = self.sampler.world_size
        return {"global_batches": first + len(metas) * world, "world": world, **({"pad": True} if pad else {})}

    def describe(self) -> dict:
        return {"batch_size": self.batch_size, "num_samples": self.num_samples}


def map_eval_loader(dataset: Any, data_cfg: Any, rank: int, world: int) -> tuple[DataLoader, int]:
    """(DataLoader, batches) over a map-style dataset: every item once over ranks, equal batch counts
    (``EvalBatchSampler``), batch size ``data.eval_batch_size`` (else ``data.batch_size``)."""
    sampler = EvalBatchSampler(len(dataset), int(data_cfg.eval_batch_size or data_cfg.batch_size), rank, world)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=int(data_cfg.num_workers),
        collate_fn=collate_classification,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, len(sampler)
