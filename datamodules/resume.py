"""Training passes and the data position: the one place that owns where the training stream is and how a restored
run continues there.

Vocabulary used across ``datamodules/``:

* **pass**: one full iteration of one dataset's loader, a fixed number of batches (``len(loader)``), the same on
  every rank. Under ``data.mixing.mode=combined`` a short dataset is cycled, so it may run several passes in one
  trainer epoch; pass ``p`` of epoch ``e`` is seeded by ``(seed, epoch, pass)`` (plus rank and worker inside the
  loader), so every pass is a new, reproducible shuffle.
* **logical worker**: data-loader worker ``w`` plays logical worker ``(w + rotation) % num_workers``. Batch ``g`` of a
  pass always comes from logical worker ``g % num_workers`` (the DataLoader round-robins its workers), so after a
  resume that skipped ``k`` batches, ``rotation = k % num_workers`` makes physical worker 0 produce exactly the batch
  an uninterrupted run would have produced next.
* **data position**: ``(epoch, steps handed to the trainer this epoch)``, turned into per-dataset ``(pass, batches
  consumed in the pass, per-logical-worker raw-sample offsets)``; see ``PassLoader.position``.

Lightning's stateful-iterable hooks carry the position (Lightning 2.6, PR #19361): ``TrainLoader`` is the one
training iterable the Trainer sees; its fit loop calls ``TrainLoader.state_dict()`` on every rank when it writes a
checkpoint (stored under the fit loop's ``"combined_loader"`` state, ``saved_position`` reads it back) and
``load_state_dict()`` on a restored run after ``train_dataloader()`` and before the first ``iter()``. The position
counts the steps the loader handed to Lightning: a sized loader is never fetched ahead (Lightning's fetcher
prefetches only when the length is unknown), so when a checkpoint is written in ``on_train_batch_end`` the count
includes that batch, exactly the batches the restored loop will not redo. The weak-label raw offsets differ per rank,
so ``state_dict`` all-gathers them into the checkpoint (a collective: every rank calls it).

Epoch: Lightning never calls ``set_epoch`` on an iterable loader, and (checked with Lightning 2.6) it calls
``on_train_epoch_start`` only after the first ``iter()`` of a fit and not at all when it resumes mid-epoch, so a
callback pushing the epoch would be too late exactly when it matters. Instead the ``EpochClock`` reads
``trainer.current_epoch`` when a pass starts (at the first ``next()``: Lightning also calls ``iter()`` once just to
probe a loader) and the loader writes (epoch, pass, resume offsets) into the dataset's shared-memory pass state before
its persistent workers start the pass: open_clip's ``SharedEpoch``, extended to the whole pass state. Without a
trainer (scripts, benchmarks) the epoch comes from ``MultiTaskDataModule.set_epoch``.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from datamodules.loaders import META, BatchSource, mix_seed

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass of a loader has handed out so far (main process), enough to compute a resume position."""

    epoch: int
    pass_idx: int
    start: int  # batches skipped at the start (a resumed pass), logical batch index of the first yielded batch
    offsets: list[int] | None  # raw-sample offset per logical worker at ``start`` (streams only)
    ends: list[tuple[int | None, int | None]] = field(default_factory=list)  # (logical worker, raw end) per batch

    def position(self, batches: int) -> dict:
        """Resume position after ``batches`` batches of this pass were consumed by the trainer."""
        if batches < self.start or batches - self.start > len(self.ends):
            raise RuntimeError(
                f"data position {batches} is outside what pass {self.pass_idx} of epoch {self.epoch} handed out "
                f"({self.start}..{self.start + len(self.ends)})"
            )
        offsets = list(self.offsets) if self.offsets is not None else None
        for lw, end in self.ends[: batches - self.start]:
            if offsets is not None and lw is not None and end is not None:
                offsets[lw] = end
        return {"pass": self.pass_idx, "batches": batches, "offsets": offsets}


class EpochClock:
    """The epoch of the next training pass: the attached trainer's ``current_epoch``, else ``manual_epoch``."""

    def __init__(self, trainer_getter: Callable[[], Any] = lambda: None) -> None:
        self.trainer_getter = trainer_getter
        self.manual_epoch = 0

    def epoch(self) -> int:
        trainer = self.trainer_getter()
        return int(trainer.current_epoch) if trainer is not None else self.manual_epoch


class PassLoader:
    """Iterable over one dataset's training batches; each ``iter()`` is one pass of ``len(self)`` batches, numbered
    after the previous pass of the same epoch.

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
        # A generator: the pass starts at the first next(), not at iter() (Lightning probes loaders with iter()).
        epoch = self.clock.epoch()
        last = self._records[-1] if self._records else None
        yield from self.run_pass(epoch, last.pass_idx + 1 if last is not None and last.epoch == epoch else 0)

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
            record.ends.append((meta.get("lw"), meta.get("raw_end")))
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


class TrainLoader:
    """The training iterable the Trainer sees: every dataset's ``PassLoader`` mixed into steps ``{name: batch}``, and
    the data position (Lightning's ``state_dict`` / ``load_state_dict`` hooks, see the module docstring).

    Mixing (``data.mixing.mode``):

    * ``combined``: every dataset in every step; the epoch is as long as the longest loader and shorter ones start
      their next pass when they run out (what Lightning's ``CombinedLoader(mode="max_size_cycle")`` does).
    * ``interleave``: one dataset per step, drawn by ``ratios`` from a generator seeded by ``(seed, epoch)``, the same
      on every rank (DDP needs the same parameters used everywhere); an epoch is the sum of the lengths and a dataset
      drawn more often than it has batches starts its next pass.

    A restored run continues with the same steps: each dataset at its own saved position (interleave: after
    replaying the draws up to the position).

    Args:
        loaders: ``{dataset: PassLoader}``, in the order batches are fetched within a step.
        mode: ``combined`` or ``interleave`` (the schema's ``data.mixing.mode``).
        ratios: interleave draw weights per dataset (empty: proportional to the loaders' lengths).
        seed: the run seed.
        clock: the epoch source.
        rank, world: this process's place.
        gather: all-gathers a CPU tensor over ranks (``lit_modules.strategy.all_gather_cpu``); needed when world > 1.
    """

    def __init__(
        self,
        loaders: dict[str, PassLoader],
        mode: str,
        ratios: dict[str, float],
        seed: int,
        clock: EpochClock,
        rank: int = 0,
        world: int = 1,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.loaders = loaders
        self.names = list(loaders)
        self.mode = mode
        weights = ratios or {n: float(len(loader)) for n, loader in loaders.items()}
        total = sum(weights[n] for n in self.names)
        self.probs = np.array([weights[n] / total for n in self.names])
        self.seed = seed
        self.clock = clock
        self.rank, self.world, self.gather = rank, world, gather
        self._epoch: int | None = None  # the epoch being iterated, and the steps handed out in it
        self._steps = 0
        self._resume: dict | None = None
        self._loaded: dict | None = None  # the position restored, until the loader moves on from it
        self._exhausted: int | None = None  # an epoch a restored run must not iterate again

    def __len__(self) -> int:
        lengths = [len(loader) for loader in self.loaders.values()]
        return max(lengths) if self.mode == "combined" else sum(lengths)

    def draws(self, epoch: int) -> np.ndarray:
        """Index (into ``names``) of the dataset used at each step of ``epoch`` (interleave)."""
        rng = np.random.default_rng(mix_seed(self.seed, epoch, 0x1A7E))
        return rng.choice(len(self.names), size=len(self), p=self.probs)

    def consumed(self, epoch: int, steps: int) -> dict[str, int]:
        """Batches of each dataset used by the first ``steps`` steps of ``epoch``."""
        if self.mode == "combined":
            return {name: steps for name in self.names}
        counts = np.bincount(self.draws(epoch)[:steps], minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts)}

    def __iter__(self) -> Iterator[dict]:
        # A generator, so iter() alone (Lightning probes with it) starts nothing.
        epoch = self.clock.epoch()
        if self._exhausted == epoch:
            return
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] != epoch:
            resume = None
        start = resume["batches"] if resume else 0
        self._epoch, self._steps = epoch, start
        yield from self._run(epoch, start, resume["loaders"] if resume else {})

    def _run(self, epoch: int, start: int, positions: dict[str, dict]) -> Iterator[dict]:
        draws = self.draws(epoch) if self.mode == "interleave" else None
        iterators: dict[str, Iterator] = {}
        passes: dict[str, int] = {}
        for step in range(start, len(self)):
            step_batch = {}
            for name in self.names if draws is None else [self.names[draws[step]]]:
                loader = self.loaders[name]
                if name not in iterators:
                    pos = positions.get(name)
                    passes[name] = pos["pass"] if pos else 0
                    iterators[name] = loader.run_pass(epoch, passes[name], pos)
                try:
                    step_batch[name] = next(iterators[name])
                except StopIteration:
                    passes[name] += 1
                    iterators[name] = loader.run_pass(epoch, passes[name])
                    step_batch[name] = next(iterators[name])
            self._steps = step + 1  # handed to the trainer: consumed once a checkpoint is written after it
            yield step_batch

    # ------------------------------------------------------------------------------- position

    def state_dict(self) -> dict:
        """The data position after the steps handed out so far (collective under DDP: every rank calls it)."""
        if self._epoch is None and self._loaded is not None:
            return self._loaded  # restored and not iterated since (the same on every rank): still that position
        epoch = self._epoch if self._epoch is not None else self.clock.epoch()
        steps = self._steps if self._epoch is not None else 0
        loaders = {}
        for name, consumed in self.consumed(epoch, steps).items():
            loader = self.loaders[name]
            pos = loader.position(epoch, consumed)
            pos["offsets_by_rank"] = self._gather_offsets(pos.pop("offsets"), loader.source.num_workers)
            pos["describe"] = loader.source.describe()
            loaders[name] = pos
        return {
            "version": 1,
            "epoch": epoch,
            "batches": steps,
            "num_batches": len(self),
            "world_size": self.world,
            "mode": self.mode,
            "seed": self.seed,
            "loaders": loaders,
        }

    def _gather_offsets(self, offsets: list[int] | None, num_workers: int) -> list[list[int] | None]:
        if self.world == 1:
            return [offsets]
        width = max(1, num_workers)
        local = torch.tensor(offsets if offsets is not None else [-1] * width, dtype=torch.long)
        gathered = self.gather(local).reshape(self.world, width)
        return [None if (row < 0).all() else row.tolist() for row in gathered]

    def load_state_dict(self, state: dict) -> None:
        """Continue at a checkpoint's data position: the next ``iter()`` in its epoch starts there. A position that
        does not fit this run (world size, mode, seed, datasets or their batching changed) warns and the interrupted
        epoch restarts from a fresh pass."""
        if not state:
            return
        if state.get("version") != 1:
            warnings.warn(f"unknown data position format {state.get('version')}; the epoch restarts", stacklevel=2)
            return
        problems = []
        if state["world_size"] != self.world:
            problems.append(f"world size {state['world_size']} -> {self.world}")
        if state["mode"] != self.mode or state["seed"] != self.seed:
            problems.append("data.mixing.mode or seed changed")
        if set(state["loaders"]) != set(self.loaders):
            problems.append(f"datasets {sorted(state['loaders'])} -> {sorted(self.loaders)}")
        else:
            for name, pos in state["loaders"].items():
                now = self.loaders[name].source.describe()
                if pos["describe"] != now:
                    problems.append(f"{name}: {pos['describe']} -> {now}")
        if problems:
            warnings.warn(
                "the checkpoint's data position does not fit this run (" + "; ".join(problems) + "); the "
                "interrupted epoch restarts from a fresh pass, so some of its samples are seen twice",
                stacklevel=2,
            )
            return
        self._loaded = state
        if state["batches"] >= state["num_batches"]:
            # Saved after the epoch's last batch (e.g. on_train_epoch_end): Lightning may re-enter that epoch once
            # more, so it must yield nothing until the next epoch starts.
            self._exhausted, self._resume = state["epoch"], None
            return
        self._exhausted = None
        self._resume = {
            "epoch": state["epoch"],
            "batches": state["batches"],
            "loaders": {
                name: {"pass": pos["pass"], "batches": pos["batches"], "offsets": pos["offsets_by_rank"][self.rank]}
                for name, pos in state["loaders"].items()
            },
        }


def saved_position(checkpoint: dict) -> dict:
    """The data position a Lightning checkpoint holds (what ``TrainLoader.state_dict`` returned when it was written;
    empty when it holds none)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    return states[0]
