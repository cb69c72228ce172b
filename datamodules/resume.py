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
* **data position**: ``(epoch, steps handed to the trainer this epoch)`` plus, per dataset, its pass and where the pass
  is, in units that do not depend on the world size or worker count (``BatchSource.position``): the weak-label
  stream's slot pieces and their progress (``datamodules.slots``), a map-style dataset's global batches consumed.
  So a restored run continues on any cluster: on another one the rest of the interrupted epoch is what the old
  cluster had left, ``ceil(steps left x old world / new world)`` steps (``TrainLoader.load_state_dict``).

Lightning's stateful-iterable hooks carry the position (Lightning 2.6, PR #19361): ``TrainLoader`` is the one
training iterable the Trainer sees; its fit loop calls ``TrainLoader.state_dict()`` on every rank when it writes a
checkpoint (stored under the fit loop's ``"combined_loader"`` state, ``saved_position`` reads it back) and
``load_state_dict()`` on a restored run after ``train_dataloader()`` and before the first ``iter()``. The position
counts the steps the loader handed to Lightning: a sized loader is never fetched ahead (Lightning's fetcher
prefetches only when the length is unknown), so when a checkpoint is written in ``on_train_batch_end`` the count
includes that batch, exactly the batches the restored loop will not redo. Each rank advances only its own slot
pieces, so ``state_dict`` all-gathers their progress and keeps the element-wise maximum (a collective: every rank
calls it).

Epoch: Lightning never calls ``set_epoch`` on an iterable loader, and (checked with Lightning 2.6) it calls
``on_train_epoch_start`` only after the first ``iter()`` of a fit and not at all when it resumes mid-epoch, so a
callback pushing the epoch would be too late exactly when it matters. Instead the ``EpochClock`` reads
``trainer.current_epoch`` when a pass starts (at the first ``next()``: Lightning also calls ``iter()`` once just to
probe a loader) and the loader writes (epoch, pass, plan, progress) into the dataset's shared-memory pass state before
its persistent workers start the pass: open_clip's ``SharedEpoch``, extended to the whole pass state. Without a
trainer (scripts, benchmarks) the epoch comes from ``MultiTaskDataModule.set_epoch``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from datamodules.loaders import META, BatchSource, mix_seed

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass of a loader has handed out so far (main process), enough to compute a resume position."""

    epoch: int
    pass_idx: int
    start: Any  # the source's start state (``BatchSource.begin``)
    length: int  # batches this iteration of the pass yields on this rank
    metas: list[dict] = field(default_factory=list)  # metadata of each batch handed out, in order


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
        start, length = self.source.begin(epoch, pass_idx, pos)
        record = PassRecord(epoch, pass_idx, start, length)
        self._records = [*self._records[-1:], record]  # the current and the previous pass (prefetch may cross)
        return self._batches(record)

    def _batches(self, record: PassRecord) -> Iterator[dict]:
        before = sum(self.counts.values())
        # Workers are persistent: a new iter() resets them to the pass just configured by ``begin`` (a pass left
        # unfinished is drained by the DataLoader itself).
        for batch in self.source.dataloader:
            meta = batch.pop(META)
            record.metas.append(meta)
            self.counts.update(meta.get("counts", {}))
            yield batch
        if len(record.metas) != record.length:
            raise RuntimeError(
                f"{self.name}: pass {record.pass_idx} of epoch {record.epoch} yielded {len(record.metas)} batches on "
                f"this rank, {record.length} planned; ranks would wait on each other at the next collective"
            )
        if sum(self.counts.values()) > before:
            log.warning(
                "%s pass %d of epoch %d: skipped so far %s", self.name, record.pass_idx, record.epoch, dict(self.counts)
            )

    def position(self, epoch: int, pass_idx: int, batches: int | None = None) -> dict:
        """Resume position of pass ``pass_idx`` of ``epoch`` after the batches handed out so far (or its first
        ``batches`` of them): the source's position, or the next pass when this one was handed out whole."""
        for record in reversed(self._records):
            if record.epoch == epoch and record.pass_idx == pass_idx:
                metas = record.metas if batches is None else record.metas[:batches]
                if len(metas) >= record.length:
                    return {"pass": pass_idx + 1}
                return {"pass": pass_idx, **self.source.position(record.start, metas)}
        return {"pass": pass_idx}


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
        self._changed: tuple[int, int, int] | None = None  # (epoch, length, steps before) of an epoch resumed elsewhere
        self._passes: dict[str, int] = {}  # the pass each dataset is in, in the epoch being iterated

    @property
    def steps_per_epoch(self) -> int:
        """Steps of an epoch on this cluster (every epoch but one resumed on another world size)."""
        lengths = [len(loader) for loader in self.loaders.values()]
        return max(lengths) if self.mode == "combined" else sum(lengths)

    def __len__(self) -> int:
        # An epoch resumed on another world size has its own length (``load_state_dict``); Lightning reads it once a
        # fit (lit_modules.trainer.EpochLength gives it back the usual one at the next epoch).
        if self._changed is not None and self._changed[0] == self.clock.epoch():
            return self._changed[1]
        return self.steps_per_epoch

    def draws(self, epoch: int) -> np.ndarray:
        """Index (into ``names``) of the dataset used at each step of ``epoch`` (interleave). The steps of an epoch
        resumed on another world size after its ``k``-th step are drawn anew (another stream, seeded by ``k``)."""
        rng = np.random.default_rng(mix_seed(self.seed, epoch, 0x1A7E))
        normal = rng.choice(len(self.names), size=self.steps_per_epoch, p=self.probs)
        if self._changed is None or self._changed[0] != epoch:
            return normal
        k, length = self._changed[2], self._changed[1]
        rest = np.random.default_rng(mix_seed(self.seed, epoch, 0x1A7E, k)).choice(
            len(self.names), size=length - k, p=self.probs
        )
        return np.concatenate([normal[:k], rest])

    def __iter__(self) -> Iterator[dict]:
        # A generator, so iter() alone (Lightning probes with it) starts nothing.
        epoch = self.clock.epoch()
        if self._exhausted == epoch:
            return
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] != epoch:
            resume = None
        start = resume["batches"] if resume else 0
        self._epoch, self._steps, self._passes = epoch, start, {}
        yield from self._run(epoch, start, resume["loaders"] if resume else {})

    def _run(self, epoch: int, start: int, positions: dict[str, dict]) -> Iterator[dict]:
        draws = self.draws(epoch) if self.mode == "interleave" else None
        iterators: dict[str, Iterator] = {}
        for step in range(start, len(self)):
            step_batch = {}
            for name in self.names if draws is None else [self.names[draws[step]]]:
                loader = self.loaders[name]
                if name not in iterators:
                    pos = positions.get(name)
                    self._passes[name] = pos["pass"] if pos else 0
                    fresh = pos is None or len(pos) == 1  # {"pass": p}: the pass starts at its beginning
                    iterators[name] = loader.run_pass(epoch, self._passes[name], None if fresh else pos)
                try:
                    step_batch[name] = next(iterators[name])
                except StopIteration:
                    self._passes[name] += 1
                    iterators[name] = loader.run_pass(epoch, self._passes[name])
                    step_batch[name] = next(iterators[name])
            self._steps = step + 1  # handed to the trainer: consumed once a checkpoint is written after it
            yield step_batch

    # ------------------------------------------------------------------------------- position

    def state_dict(self) -> dict:
        """The data position after the steps handed out so far (collective under DDP: every rank calls it). Each
        dataset's position is in units that do not depend on the world size (``BatchSource.position``)."""
        if self._epoch is None and self._loaded is not None:
            return self._loaded  # restored and not iterated since (the same on every rank): still that position
        epoch = self._epoch if self._epoch is not None else self.clock.epoch()
        steps = self._steps if self._epoch is not None else 0
        loaders = {}
        for name, loader in self.loaders.items():
            pass_idx = self._passes.get(name, 0) if self._epoch is not None else 0
            pos = loader.position(epoch, pass_idx) if self._epoch is not None else {"pass": 0}
            if "progress" in pos:
                pos["progress"] = self._merge_progress(pos["progress"])
            pos["describe"] = loader.source.describe()
            pos["num_workers"] = loader.source.num_workers
            loaders[name] = pos
        state = {
            "version": 2,
            "epoch": epoch,
            "batches": steps,
            "num_batches": len(self),
            "world_size": self.world,
            "mode": self.mode,
            "seed": self.seed,
            "loaders": loaders,
        }
        if self._changed is not None and self._changed[0] == epoch:
            state["changed_at"] = self._changed[2]  # an epoch resumed elsewhere: its own length, its draws from here
        return state

    def _merge_progress(self, progress: list[list[int]]) -> list[list[int]]:
        """Every rank advanced only its own pieces of the plan from the same start: the element-wise maximum over the
        ranks is the whole plan's progress (O(slots) integers per rank)."""
        if self.world == 1:
            return progress
        local = torch.tensor(progress, dtype=torch.long).reshape(-1, 2)
        gathered = self.gather(local.reshape(-1)).reshape(self.world, -1, 2)
        return gathered.max(dim=0).values.tolist()

    def load_state_dict(self, state: dict) -> None:
        """Continue at a checkpoint's data position: the next ``iter()`` in its epoch starts there, on this world size
        and worker count whatever the checkpoint's (each dataset continues its pass where it stopped,
        ``BatchSource.begin``). A position that does not fit this run (mode, seed, datasets or their batching changed)
        warns and the interrupted epoch restarts from a fresh pass.

        On another world size the rest of the interrupted epoch is what the old cluster had left, cut over this one:
        ``ceil((num_batches - batches) x old world / world)`` more steps (``__len__`` says so for that epoch). A position
        saved inside such an epoch says so (``changed_at``), so a resume on the same cluster keeps that length."""
        if not state:
            return
        if state.get("version") != 2:
            warnings.warn(
                f"data position format {state.get('version')} is not this version's (2); the interrupted epoch "
                "restarts from a fresh pass, so some of its samples are seen twice",
                stacklevel=2,
            )
            return
        problems = []
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
        k = int(state["batches"])
        topology = [(pos.get("num_workers"), self.loaders[n].source.num_workers) for n, pos in state["loaders"].items()]
        if state["world_size"] != self.world or any(a != b for a, b in topology):
            left = math.ceil((int(state["num_batches"]) - k) * int(state["world_size"]) / self.world)
            self._changed = (int(state["epoch"]), k + left, k)
            rank_zero_info(
                f"data position saved on {state['world_size']} rank(s), resumed on {self.world}: the interrupted epoch "
                f"{state['epoch']} continues where it stopped, {left} more steps"
            )
        elif "changed_at" in state:
            # Saved inside an epoch that was itself resumed on another cluster, and resumed on that cluster again: the
            # epoch keeps the length (and interleave draws) that resume gave it, not a fresh epoch's.
            self._changed = (int(state["epoch"]), int(state["num_batches"]), int(state["changed_at"]))
        self._resume = {
            "epoch": state["epoch"],
            "batches": k,
            "loaders": {
                name: {k_: v for k_, v in pos.items() if k_ not in ("describe", "num_workers")}
                for name, pos in state["loaders"].items()
            },
        }


def saved_position(checkpoint: dict) -> dict:
    """The data position a Lightning checkpoint holds (what ``TrainLoader.state_dict`` returned when it was written;
    empty when it holds none)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    return states[0]
