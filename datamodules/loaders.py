"""Loader machinery shared by every dataset: passes, data positions, mid-epoch resume, mixing.

Vocabulary used across ``datamodules/``:

* **pass**: one full iteration of one dataset's loader, a fixed number of batches (``len(loader)``), the same on
  every rank. Under ``data.mixing.mode=combined`` a short dataset is cycled, so it may run several passes in one
  trainer epoch; pass ``p`` of epoch ``e`` is seeded by ``(seed, epoch, pass)`` (plus rank and worker inside the
  loader), so every pass is a new, reproducible shuffle.
* **logical worker**: data-loader worker ``w`` plays logical worker ``(w + rotation) % num_workers``. Batch ``g`` of a
  pass always comes from logical worker ``g % num_workers`` (the DataLoader round-robins its workers), so after a
  resume that skipped ``k`` batches, ``rotation = k % num_workers`` makes physical worker 0 produce exactly the batch
  an uninterrupted run would have produced next.
* **data position**: ``(epoch, batches consumed this epoch)`` from Lightning's counters, turned into per-loader
  ``(pass, batches consumed in the pass, per-logical-worker raw-sample offsets)``; see ``PassLoader.position``.

Epoch: Lightning never calls ``set_epoch`` on an iterable loader, and (checked with Lightning 2.6) it calls
``on_train_epoch_start`` only after the first ``iter()`` of a fit and not at all when it resumes mid-epoch, so a
callback pushing the epoch would be too late exactly when it matters. Instead the ``EpochClock`` reads
``trainer.current_epoch`` when a loader starts a pass (at the first ``next()``: Lightning also calls ``iter()`` once
just to probe a loader) and the loader writes (epoch, pass, resume offsets) into the dataset's shared-memory pass
state before its persistent workers start the pass: open_clip's ``SharedEpoch``, extended to the whole pass state.
Without a trainer (scripts, benchmarks) the epoch comes from ``MultiTaskDataModule.set_epoch``.

Workers are separate processes, so their skip counters travel back inside each batch (``batch["__meta__"]``, stripped
here before Lightning sees the batch) and are summed per loader in ``counts``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

log = logging.getLogger(__name__)

META = "__meta__"  # per-batch metadata key added by workers and removed by the loaders below


class DataConfigError(ValueError):
    """A data config value or data file that cannot work; the message names the key or file."""


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


# ------------------------------------------------------------------------------------- positions


@dataclass
class PassRecord:
    """What one pass of a loader has handed out so far (main process), enough to compute a resume position."""

    epoch: int
    pass_idx: int
    start: int  # batches skipped at the start (a resumed pass), logical batch index of the first yielded batch
    offsets: list[int] | None  # raw-sample offset per logical worker at ``start`` (streams only)
    lws: list[int | None] = field(default_factory=list)
    raw_ends: list[int | None] = field(default_factory=list)

    def position(self, batches: int) -> dict:
        """Resume position after ``batches`` batches of this pass were consumed by the trainer."""
        if batches < self.start or batches - self.start > len(self.lws):
            raise RuntimeError(
                f"data position {batches} is outside what pass {self.pass_idx} of epoch {self.epoch} handed out "
                f"({self.start}..{self.start + len(self.lws)})"
            )
        offsets = list(self.offsets) if self.offsets is not None else None
        for i in range(batches - self.start):
            lw, end = self.lws[i], self.raw_ends[i]
            if offsets is not None and lw is not None and end is not None:
                offsets[lw] = end
        return {"pass": self.pass_idx, "batches": batches, "offsets": offsets}


class BatchSource:
    """One dataset's training batches: a DataLoader plus how to set it up for a pass.

    Subclasses implement ``begin`` (configure dataset/sampler for ``(epoch, pass)`` starting ``batches`` into the pass)
    and return the per-logical-worker raw offsets at that point (``None`` for map-style datasets).
    """

    dataloader: DataLoader
    num_batches: int
    batch_size: int
    num_workers: int

    def begin(self, epoch: int, pass_idx: int, batches: int, offsets: list[int] | None) -> list[int] | None:
        raise NotImplementedError

    def describe(self) -> dict:
        """What must match between the run that saved a position and the run that restores it."""
        return {"num_batches": self.num_batches, "batch_size": self.batch_size, "num_workers": self.num_workers}


class EpochClock:
    """Tells each training loader which (epoch, pass) its next iteration is, and where a restored run starts.

    The epoch comes from the attached trainer (``trainer.current_epoch``) or, without one, from ``set_epoch``.
    """

    def __init__(self, trainer_getter: Callable[[], Any] = lambda: None) -> None:
        self.trainer_getter = trainer_getter
        self.manual_epoch = 0
        self._last: dict[str, tuple[int, int]] = {}
        self.resume: dict | None = None
        self._exhausted_epoch: int | None = None

    def epoch(self) -> int:
        trainer = self.trainer_getter()
        return int(trainer.current_epoch) if trainer is not None else self.manual_epoch

    def set_resume(self, state: dict | None) -> None:
        self.resume = state
        self._last.clear()
        self._exhausted_epoch = None
        if state is not None and state["batches"] >= state["num_batches"]:
            # Saved after the epoch's last batch (e.g. on_train_epoch_end): Lightning re-enters that epoch once more,
            # so its loaders must yield nothing until the next epoch starts.
            self._exhausted_epoch = state["epoch"]
            self.resume = None

    def exhausted(self, epoch: int) -> bool:
        return self._exhausted_epoch == epoch

    def take_resume(self, epoch: int, name: str) -> dict | None:
        """The saved position of loader ``name`` if the run resumes inside ``epoch``; consumed on read."""
        if self.resume is None or self.resume["epoch"] != epoch or name not in self.resume["loaders"]:
            return None
        pos = self.resume["loaders"].pop(name)
        if not self.resume["loaders"]:
            self.resume = None
        return pos

    def begin(self, name: str) -> tuple[int, int, dict | None]:
        """(epoch, pass, saved position or None) for the next iteration of loader ``name``."""
        epoch = self.epoch()
        pos = self.take_resume(epoch, name)
        if pos is not None:
            self._last[name] = (epoch, pos["pass"])
            return epoch, pos["pass"], pos
        last = self._last.get(name)
        pass_idx = last[1] + 1 if last is not None and last[0] == epoch else 0
        self._last[name] = (epoch, pass_idx)
        return epoch, pass_idx, None


class PassLoader:
    """Iterable over one dataset's training batches; each ``iter()`` is one pass of ``len(self)`` batches.

    Strips the workers' metadata from each batch, adds their skip counts to ``counts`` and records what it handed
    out so ``position`` can tell where a restored run must continue.
    """

    def __init__(self, name: str, source: BatchSource, clock: EpochClock) -> None:
        self.name = name
        self.source = source
        self.clock = clock
        self.counts: Counter = Counter()
        self._records: list[PassRecord] = []

    def __len__(self) -> int:
        return self.source.num_batches

    def __iter__(self) -> Iterator[dict]:
        # A generator: the pass starts at the first next(), not at iter(). Lightning calls iter() once just to check
        # that the loader is iterable (_check_dataloader_iterable), which must not consume a pass or a resume.
        epoch, pass_idx, pos = self.clock.begin(self.name)
        if not self.clock.exhausted(epoch):
            yield from self.run_pass(epoch, pass_idx, pos)

    def run_pass(self, epoch: int, pass_idx: int, pos: dict | None = None) -> Iterator[dict]:
        """Start pass ``pass_idx`` of ``epoch`` (at a saved position when given) and return its batch iterator."""
        start = int(pos["batches"]) if pos else 0
        offsets = self.source.begin(epoch, pass_idx, start, pos.get("offsets") if pos else None)
        record = PassRecord(epoch, pass_idx, start, offsets)
        self._records = [*self._records[-1:], record]  # the current and the previous pass (prefetch may cross)
        return self._batches(record)

    def _batches(self, record: PassRecord) -> Iterator[dict]:
        before = sum(self.counts.values())
        # Workers are persistent: a new iter() resets them to the pass just configured by ``begin`` (a pass left
        # unfinished is drained by the DataLoader itself).
        for batch in self.source.dataloader:
            meta = batch.pop(META)
            record.lws.append(meta.get("lw"))
            record.raw_ends.append(meta.get("raw_end"))
            self.counts.update(meta.get("counts", {}))
            yield batch
        if sum(self.counts.values()) > before:
            log.warning(
                "%s pass %d of epoch %d: skipped so far %s", self.name, record.pass_idx, record.epoch, dict(self.counts)
            )

    def position(self, epoch: int, consumed: int) -> dict:
        """Resume position after ``consumed`` batches of this loader in ``epoch`` (across its passes)."""
        pass_idx, batches = divmod(consumed, self.source.num_batches)
        if batches == 0:
            return {"pass": pass_idx, "batches": 0, "offsets": None}
        for record in self._records:
            if record.epoch == epoch and record.pass_idx == pass_idx:
                return record.position(batches)
        warnings.warn(
            f"{self.name}: no record of pass {pass_idx} of epoch {epoch}; the saved position assumes no sample of "
            "that pass was skipped",
            stacklevel=2,
        )
        return {"pass": pass_idx, "batches": batches, "offsets": None}


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


class InterleavedLoader:
    """Training under ``data.mixing.mode=interleave``: one dataset per step, drawn by ratio, tagged ``{name: batch}``.

    The draws come from a generator seeded by ``(seed, epoch)``, identical on every rank, so all ranks train the same
    task at each step (DDP needs the same parameters used everywhere). An epoch has ``sum(len(loader))`` steps; a
    dataset drawn more often than it has batches starts its next pass. A restored run replays the draws up to its
    position, so it continues with the same dataset sequence and each dataset at its own saved position.
    """

    def __init__(self, loaders: dict[str, PassLoader], ratios: dict[str, float], seed: int, clock: EpochClock) -> None:
        self.loaders = loaders
        self.names = list(loaders)
        total = sum(ratios[n] for n in self.names)
        self.probs = np.array([ratios[n] / total for n in self.names])
        self.seed = seed
        self.clock = clock

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def draws(self, epoch: int) -> np.ndarray:
        """Index (into ``names``) of the dataset used at each step of ``epoch``."""
        rng = np.random.default_rng(mix_seed(self.seed, epoch, 0x1A7E))
        return rng.choice(len(self.names), size=len(self), p=self.probs)

    def consumed(self, epoch: int, steps: int) -> dict[str, int]:
        """Batches of each dataset used by the first ``steps`` steps of ``epoch``."""
        counts = np.bincount(self.draws(epoch)[:steps], minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts)}

    def __iter__(self) -> Iterator[dict]:
        # A generator, so iter() alone (Lightning probes with it) starts nothing; see PassLoader.__iter__.
        epoch = self.clock.epoch()
        if self.clock.exhausted(epoch):
            return
        start = 0
        positions: dict[str, dict] = {}
        if self.clock.resume is not None and self.clock.resume["epoch"] == epoch:
            start = int(self.clock.resume["batches"])
            positions = {n: p for n in self.names if (p := self.clock.take_resume(epoch, n)) is not None}
            self.clock.resume = None
        yield from self._steps(epoch, start, positions)

    def _steps(self, epoch: int, start: int, positions: dict[str, dict]) -> Iterator[dict]:
        draws = self.draws(epoch)
        iterators: dict[str, Iterator] = {}
        passes: dict[str, int] = {}
        for step in range(start, len(draws)):
            name = self.names[draws[step]]
            loader = self.loaders[name]
            if name not in iterators:
                pos = positions.get(name)
                passes[name] = pos["pass"] if pos else 0
                iterators[name] = loader.run_pass(epoch, passes[name], pos)
            try:
                batch = next(iterators[name])
            except StopIteration:
                passes[name] += 1
                iterators[name] = loader.run_pass(epoch, passes[name])
                batch = next(iterators[name])
            yield {name: batch}


# --------------------------------------------------------------------------------- map-style data


class EpochSampler(DistributedSampler):
    """Training sampler for map-style datasets: a seeded permutation per (seed, epoch, pass), strided over ranks.

    Every rank gets ``len(dataset) // world_size`` indices (at most ``world_size - 1`` samples, different ones each
    pass, are left out), so with ``drop_last`` batching every rank has the same number of batches. ``start_at`` skips
    the indices a restored run already consumed. It subclasses ``DistributedSampler`` so Lightning leaves it in
    place; Lightning's ``set_epoch`` is ignored because the loader sets the pass itself before iterating.

    ``class_labels`` (one class id per sample) switches to class-balanced sampling, as metric-learning recipes
    train their proxy datasets: a pass is ``num_samples`` draws with replacement, each class equally likely and
    uniform within its class (``torch.utils.data.WeightedRandomSampler``'s rule with weights 1 / class count; written
    here because that sampler has no per-(epoch, pass) seed, rank split or resume offset).
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, class_labels: Any = None) -> None:
        # DistributedSampler.__init__ only reads len(dataset) and validates rank; the pass is set by set_pass.
        super().__init__(
            range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.total = num_samples
        self.per_rank = num_samples // world_size
        self.epoch_pass = (0, 0)
        self.start = 0
        self.weights = None
        if class_labels is not None:
            labels = np.asarray(class_labels, dtype=np.int64)
            if labels.shape != (num_samples,):
                raise ValueError(f"class_labels has shape {labels.shape}, expected ({num_samples},)")
            counts = np.bincount(labels)
            weights = 1.0 / counts[labels]
            self.weights = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:  # noqa: D102 - see class docstring
        pass

    def set_pass(self, epoch: int, pass_idx: int, start: int = 0) -> None:
        self.epoch_pass = (epoch, pass_idx)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(mix_seed(self.seed, *self.epoch_pass))
        if self.weights is None:
            draws = rng.permutation(self.total)
        else:
            draws = rng.choice(self.total, size=self.total, replace=True, p=self.weights)
        order = draws[self.rank : self.per_rank * self.num_replicas : self.num_replicas]
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


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


class MapSource(BatchSource):
    """Training batches of a map-style dataset (Fashion-MNIST, image folders) under ``EpochSampler``."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world_size: int,
        collate_fn: Callable,
        name: str,
        class_labels: Any = None,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), rank, world_size, seed, class_labels)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_batches = self.sampler.per_rank // batch_size
        if self.num_batches == 0:
            raise DataConfigError(
                f"{name}: {len(dataset)} training samples over {world_size} rank(s) fill no batch of "
                f"data.batch_size={batch_size}"
            )
        self._dataset = dataset
        self._collate = collate_fn
        self.dataloader = self._make_loader()

    def _make_loader(self) -> DataLoader:
        batches = torch.utils.data.BatchSampler(self.sampler, self.batch_size, drop_last=True)
        # Persistent workers: the sampler lives in this process, so a new pass needs no new workers.
        return DataLoader(
            self._dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self._collate,
            pin_memory=torch.cuda.is_available(),
        )

    def begin(self, epoch: int, pass_idx: int, batches: int, offsets: list[int] | None) -> None:
        self.sampler.set_pass(epoch, pass_idx, batches * self.batch_size)
        return None
