"""The DataModule of a run: the datasets its tasks need, mixed into one training stream, with exact resume.

``build_datamodule(cfg)`` loads what the enabled tasks use (``tasks.weak_label.enabled`` -> weak_label,
``tasks.classifiers.*.dataset``, ``tasks.embedding.datasets``) and exposes ``num_classes`` / ``label_names`` right
away (manifest and constants only). Batches follow docs/ARCHITECTURE.md: ``{dataset: {"image", "target", "key"}}``
once ``on_after_batch_transfer`` (on the device) turned the loaders' uint8 images and label ids into normalized
images and dense targets and applied mixup (``datamodules.targets``).

Validation: ``val_dataloader`` returns a dict ``{dataset: EvalLoader}``, so Lightning runs them in its "sequential"
mode with ``limit_val_batches`` per dataset; every batch reaches the module as one dataset's plain batch with its
``dataloader_idx`` (the position of the dataset in ``val_loaders``).

Mixing (``data.mixing.mode``):

* ``combined``: Lightning's ``CombinedLoader(mode="max_size_cycle")``: every dataset in every step; the epoch is as
  long as the longest loader and shorter ones start their next pass (a new seeded shuffle) when they run out.
* ``interleave``: one dataset per step, drawn by ``data.mixing.ratios`` (default: proportional to the loaders'
  lengths) from a generator seeded by (seed, epoch), the same on every rank; an epoch is the sum of the lengths.

Every training loader has the same number of batches on every rank (weak-label: per-worker quota from the manifest;
map-style datasets: ``EpochSampler`` + drop_last), so no rank waits at a collective.

Mid-epoch resume: ``state_dict()`` is called by Lightning on every rank when it writes a checkpoint. It stores
``(epoch, batches)`` from ``trainer.current_epoch`` and ``fit_loop.epoch_loop.batch_progress.current.processed``
(checked empirically with Lightning 2.6: when ModelCheckpoint saves in ``on_train_batch_end``, ``processed``
already counts the current batch while ``completed`` does not, and the restored loop continues at batch index
``processed``), plus each loader's position in its pass; the weak-label raw offsets differ per rank, so they are
all-gathered into the checkpoint. ``load_state_dict`` keeps the state until the loaders are built; their first pass
then starts exactly there (see ``datamodules.loaders`` and ``datamodules.weak_label`` for what is guaranteed). A
checkpoint written after an epoch's last batch makes the loaders yield nothing for that epoch (Lightning re-enters
it once), so the next epoch starts normally.

Skip counters (corrupt images, bad labels, broken shards, ...) come back from the workers inside the batches and are
summed per loader: ``data_counts()``; ``DataCountsLogger`` sums them over ranks and logs ``data/<dataset>/<split>/
<reason>``.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from datamodules import fashion_mnist
from datamodules.fashion_mnist import collate_classification, fashion_mnist_dataset
from datamodules.image_folder import ImageFolderTask
from datamodules.loaders import (
    DataConfigError,
    EpochClock,
    EvalBatchSampler,
    EvalLoader,
    InterleavedLoader,
    MapSource,
    PassLoader,
    dist_info,
    mix_seed,
)
from datamodules.targets import BatchTransform
from datamodules.weak_label import SKIP_REASONS, WeakLabelData, image_transform
from lit_modules.strategy import all_gather_cpu, reduce_cpu

COUNT_REASONS = (*SKIP_REASONS, "unreadable_image")


def required_datasets(cfg: Any) -> list[str]:
    """Datasets the enabled tasks use, weak_label first, then Fashion-MNIST, then user tasks (config order)."""
    wanted = set()
    if cfg.tasks.weak_label.enabled:
        wanted.add("weak_label")
    wanted.update(str(c.dataset) for c in cfg.tasks.classifiers.values())
    if cfg.tasks.embedding.enabled:
        wanted.update(str(d) for d in cfg.tasks.embedding.datasets)
    order = ["weak_label", "fashion_mnist", *cfg.data.user_tasks.keys()]
    unknown = wanted - set(order)
    if unknown:
        raise DataConfigError(
            f"tasks use dataset(s) {sorted(unknown)} that are not weak_label, fashion_mnist or a "
            f"data.user_tasks entry ({sorted(cfg.data.user_tasks.keys())})"
        )
    return [name for name in order if name in wanted]


def _dataset_seed(seed: int, name: str) -> int:
    return mix_seed(seed, zlib.crc32(name.encode()))


def _eval_map_loader(dataset: Any, batch_size: int, num_workers: int, rank: int, world: int) -> tuple[DataLoader, int]:
    sampler = EvalBatchSampler(len(dataset), batch_size, rank, world)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_classification,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, len(sampler)


class MultiTaskDataModule(L.LightningDataModule):
    """Training and validation data of every task of a run config (see the module docstring).

    Args:
        cfg: the composed run config (``configs.compose.compose``).
        datasets: override which datasets to load (default: those the enabled tasks use).
    """

    def __init__(self, cfg: Any, datasets: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.dataset_names = list(datasets) if datasets is not None else required_datasets(cfg)
        if not self.dataset_names:
            raise DataConfigError("no dataset to load: enable a task (tasks.*) that uses one")
        self.num_classes: dict[str, int] = {}
        self.label_names: dict[str, list[str]] = {}
        self.weak_label: WeakLabelData | None = None
        self.user_tasks: dict[str, ImageFolderTask] = {}
        for name in self.dataset_names:
            if name == "weak_label":
                self.weak_label = WeakLabelData(cfg)
                self.num_classes[name] = self.weak_label.num_classes
                self.label_names[name] = self.weak_label.label_names
            elif name == "fashion_mnist":
                self.num_classes[name] = fashion_mnist.NUM_CLASSES
                self.label_names[name] = list(fashion_mnist.CLASSES)
            elif name in cfg.data.user_tasks:
                task = ImageFolderTask(name, cfg.data.user_tasks[name])
                self.user_tasks[name] = task
                self.num_classes[name] = task.num_classes
                self.label_names[name] = list(task.classes)
            else:
                raise DataConfigError(
                    f"unknown dataset '{name}': use weak_label, fashion_mnist or a data.user_tasks entry"
                )
        self.mode = str(cfg.data.mixing.mode)
        ratios = dict(cfg.data.mixing.ratios)
        if self.mode == "interleave" and ratios:
            extra, missing = set(ratios) - set(self.dataset_names), set(self.dataset_names) - set(ratios)
            if extra or missing:
                raise DataConfigError(
                    f"data.mixing.ratios must give a ratio for exactly the datasets "
                    f"{self.dataset_names}; extra {sorted(extra)}, missing {sorted(missing)}"
                )
            bad = [k for k, v in ratios.items() if not v > 0]
            if bad:
                raise DataConfigError(f"data.mixing.ratios.{bad[0]} must be positive")
        self.ratios = ratios
        self.batch_transform = BatchTransform(
            self.num_classes.get("weak_label"), float(cfg.data.augment.mixup_alpha), int(cfg.seed)
        )
        self.clock = EpochClock(lambda: self.trainer)
        self.train_loaders: dict[str, PassLoader] = {}
        self.val_loaders: dict[str, EvalLoader] = {}
        self._interleaved: InterleavedLoader | None = None
        self._pending_resume: dict | None = None

    # ----------------------------------------------------------------------------------- loaders

    def _rank_world(self) -> tuple[int, int]:
        return dist_info(self.trainer)

    def _train_source(self, name: str, rank: int, world: int) -> Any:
        d = self.cfg.data
        if name == "weak_label":
            return self.weak_label.train_source(rank, world)
        if name == "fashion_mnist":
            dataset = fashion_mnist_dataset(self.cfg, "train", train=True)
            balanced = bool(d.fashion_mnist.class_balanced)
            labels = dataset.labels
        else:
            dataset = self.user_tasks[name].dataset("train", image_transform(d, True), train=True)
            balanced = bool(d.user_tasks[name].class_balanced)
            labels = [label for _, label in dataset.items]
        return MapSource(
            dataset,
            int(d.batch_size),
            int(d.num_workers),
            _dataset_seed(int(self.cfg.seed), name),
            rank,
            world,
            collate_classification,
            name,
            class_labels=labels if balanced else None,
        )

    def train_dataloader(self) -> Any:
        """``CombinedLoader`` (combined) or ``InterleavedLoader`` (interleave) over every dataset's ``PassLoader``."""
        rank, world = self._rank_world()
        self.train_loaders = {
            n: PassLoader(n, self._train_source(n, rank, world), self.clock) for n in self.dataset_names
        }
        self._apply_resume(rank, world)
        if self.mode == "combined":
            self._interleaved = None
            return CombinedLoader(dict(self.train_loaders), mode="max_size_cycle")
        ratios = self.ratios or {n: float(len(loader)) for n, loader in self.train_loaders.items()}
        self._interleaved = InterleavedLoader(self.train_loaders, ratios, int(self.cfg.seed), self.clock)
        return self._interleaved

    def eval_loader(self, name: str, split: str, rank: int = 0, world: int = 1) -> EvalLoader:
        """Deterministic loader over every sample of ``split`` of dataset ``name`` (exactly once over ranks)."""
        d = self.cfg.data
        batch_size = int(d.eval_batch_size or d.batch_size)
        if name == "weak_label":
            if split != "val":
                raise DataConfigError(f"weak_label evaluation reads the 'val' split, not '{split}'")
            loader, n = self.weak_label.eval_dataloader(rank, world)
        elif name == "fashion_mnist":
            loader, n = _eval_map_loader(
                fashion_mnist_dataset(self.cfg, split, train=False), batch_size, int(d.num_workers), rank, world
            )
        elif name in self.user_tasks:
            dataset = self.user_tasks[name].dataset(split, image_transform(d, False), train=False)
            loader, n = _eval_map_loader(dataset, batch_size, int(d.num_workers), rank, world)
        else:
            raise DataConfigError(f"dataset '{name}' is not loaded by this run (loaded: {self.dataset_names})")
        return EvalLoader(name, loader, n, self.batch_transform)

    def val_dataloader(self) -> dict[str, EvalLoader]:
        """Every dataset's validation split (weak_label: val, fashion_mnist: test, user tasks: val) as
        ``{dataset: EvalLoader}``: Lightning's sequential mode, ``limit_val_batches`` per dataset; every sample once
        over all ranks, the same number of batches on every rank for each dataset."""
        rank, world = self._rank_world()
        split = {"weak_label": "val", "fashion_mnist": "test"}
        self.val_loaders = {}
        for name in self.dataset_names:
            if name == "weak_label" and "val" not in self.weak_label.manifest.data["splits"]:
                warnings.warn("weak_label: the manifest has no val split; no weak-label validation", stacklevel=2)
                continue
            self.val_loaders[name] = self.eval_loader(name, split.get(name, "val"), rank, world)
        return dict(self.val_loaders)

    def val_dataset_name(self, dataloader_idx: int) -> str:
        """The dataset of validation loader ``dataloader_idx`` (Lightning numbers the dict's loaders in order)."""
        return list(self.val_loaders)[dataloader_idx]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: uint8 -> normalized float, label ids -> dense targets, mixup for training weak-label
        batches (``datamodules.targets.BatchTransform``), for ``{dataset: batch}`` and plain batches alike."""
        trainer = self.trainer
        train = trainer is not None and trainer.training
        epoch = int(trainer.current_epoch) if trainer is not None else self.clock.manual_epoch
        return self.batch_transform.apply(batch, train=train, epoch=epoch)

    # ------------------------------------------------------------------------------- epoch, resume

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by the training loaders when no trainer is attached (scripts, benchmarks)."""
        self.clock.manual_epoch = int(epoch)

    def _consumed(self, epoch: int, batches: int) -> dict[str, int]:
        if self._interleaved is not None:
            return self._interleaved.consumed(epoch, batches)
        return {name: batches for name in self.train_loaders}

    def state_dict(self) -> dict:
        """Data position for the checkpoint (collective under DDP: Lightning calls it on every rank)."""
        trainer = self.trainer
        if trainer is None or not self.train_loaders or trainer.state.fn != "fit":
            return {}
        epoch = int(trainer.current_epoch)
        batches = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        rank, world = self._rank_world()
        loaders = {}
        for name, consumed in self._consumed(epoch, batches).items():
            loader = self.train_loaders[name]
            pos = loader.position(epoch, consumed)
            offsets = pos.pop("offsets")
            pos["offsets_by_rank"] = self._gather_offsets(offsets, loader.source.num_workers, world)
            pos["describe"] = loader.source.describe()
            loaders[name] = pos
        return {
            "version": 1,
            "epoch": epoch,
            "batches": batches,
            "num_batches": self._num_train_batches(),
            "world_size": world,
            "mode": self.mode,
            "seed": int(self.cfg.seed),
            "loaders": loaders,
        }

    def _num_train_batches(self) -> int:
        if self._interleaved is not None:
            return len(self._interleaved)
        return max(len(loader) for loader in self.train_loaders.values())

    def _gather_offsets(self, offsets: list[int] | None, num_workers: int, world: int) -> list[list[int] | None]:
        if world == 1:
            return [offsets]
        width = max(1, num_workers)
        local = torch.tensor(offsets if offsets is not None else [-1] * width, dtype=torch.long)
        gathered = all_gather_cpu(self.trainer.strategy, local).reshape(world, width)
        return [None if (row < 0).all() else row.tolist() for row in gathered]

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep a checkpoint's data position; applied when the training loaders are built."""
        if not state_dict:
            return
        if state_dict.get("version") != 1:
            warnings.warn(f"unknown data position format {state_dict.get('version')}; the epoch restarts", stacklevel=2)
            return
        self._pending_resume = state_dict
        # Lightning warns that a plain iterable cannot resume mid-epoch; this DataModule does.
        warnings.filterwarnings(
            "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended"
        )

    def _apply_resume(self, rank: int, world: int) -> None:
        state, self._pending_resume = self._pending_resume, None
        if state is None:
            return
        problems = []
        if state["world_size"] != world:
            problems.append(f"world size {state['world_size']} -> {world}")
        if state["mode"] != self.mode or state["seed"] != int(self.cfg.seed):
            problems.append("data.mixing.mode or seed changed")
        if set(state["loaders"]) != set(self.train_loaders):
            problems.append(f"datasets {sorted(state['loaders'])} -> {sorted(self.train_loaders)}")
        else:
            for name, pos in state["loaders"].items():
                if pos["describe"] != self.train_loaders[name].source.describe():
                    problems.append(f"{name}: {pos['describe']} -> {self.train_loaders[name].source.describe()}")
        if problems:
            warnings.warn(
                "the checkpoint's data position does not fit this run (" + "; ".join(problems) + "); the "
                "interrupted epoch restarts from a fresh pass, so some of its samples are seen twice",
                stacklevel=2,
            )
            return
        loaders = {
            name: {"pass": pos["pass"], "batches": pos["batches"], "offsets": pos["offsets_by_rank"][rank]}
            for name, pos in state["loaders"].items()
        }
        self.clock.set_resume(
            {
                "epoch": state["epoch"],
                "batches": state["batches"],
                "num_batches": state["num_batches"],
                "loaders": loaders,
            }
        )

    # ------------------------------------------------------------------------------------ counts

    def callbacks(self) -> list[Callback]:
        """Callbacks train.py adds to the Trainer for this data: the skip-counter logger."""
        return [DataCountsLogger()]

    def manifests(self) -> list[str]:
        """The data manifests this run reads (their bytes fingerprint the run's data: ``tracking.run_dir.lineage``)."""
        return [str(self.cfg.data.weak_label.manifest)] if self.weak_label is not None else []

    def data_counts(self) -> dict[str, dict[str, int]]:
        """Skip counters of this process: ``{"<dataset>/train" | "<dataset>/val": {reason: count}}``."""
        out = {f"{n}/train": dict(loader.counts) for n, loader in self.train_loaders.items()}
        out.update({f"{n}/val": dict(loader.counts) for n, loader in self.val_loaders.items()})
        return out


class WeakLabelShardDataModule(MultiTaskDataModule):
    """The weak-label shards alone (stage-one pretraining), whatever tasks the config enables."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg, datasets=["weak_label"])


class DataCountsLogger(Callback):
    """Logs the data skip counters summed over ranks as ``data/<dataset>/<split>/<reason>`` (non-zero ones): training
    ones every ``trainer.log_every_n_steps`` batches (config ``trainer.log_every_n_steps``) and at each epoch end,
    validation ones at each validation end. Safe under DDP: every rank reduces a fixed-size vector."""

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, MultiTaskDataModule):
            return
        names = sorted(dm.dataset_names)
        counts = dm.data_counts()
        keys = [f"{n}/{split}" for n in names]
        vec = torch.tensor([[counts.get(k, {}).get(r, 0) for r in COUNT_REASONS] for k in keys], dtype=torch.float64)
        total = reduce_cpu(trainer.strategy, vec, "sum")
        metrics = {
            f"data/{k}/{r}": float(total[i, j])
            for i, k in enumerate(keys)
            for j, r in enumerate(COUNT_REASONS)
            if total[i, j] > 0
        }
        if metrics:
            pl_module.log_dict(metrics, rank_zero_only=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Every trainer.log_every_n_steps batches, the same batch on every rank so the reduce is matched: a one-epoch
        # run would otherwise log its skips once, at the end.
        if (batch_idx + 1) % max(1, int(trainer.log_every_n_steps or 1)) == 0:
            self._log(trainer, pl_module, "train")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")


def build_datamodule(cfg: Any) -> MultiTaskDataModule:
    """The DataModule of a composed run config (``num_classes`` / ``label_names`` available at once)."""
    return MultiTaskDataModule(cfg)


def eval_loader(cfg: Any, dataset: str, split: str, rank: int = 0, world_size: int = 1) -> EvalLoader:
    """Loader for evaluate.py: deterministic, unshuffled, every sample of ``split`` exactly once (over ``world_size``
    ranks), eval transforms, plain batches in the loader form (uint8 ``"image"``; ``"target"`` or, for weak_label,
    ``"label_ids"``/``"label_weights"``); ``loader.batch_transform.to_device(batch, device)`` gives the model form
    (normalized images, dense ``"target"``), as ``evaluation.embeddings.extract_outputs`` does.

    Args:
        cfg: the composed run config.
        dataset: "fashion_mnist" (splits "train" = gallery, "test" = query), "weak_label" (split "val"; label ids
            of ``data.weak_label.label_space``) or a ``data.user_tasks`` name (splits "train", "val").
        split: see ``dataset``.
        rank, world_size: this process's share when evaluation itself is distributed.
    """
    return MultiTaskDataModule(cfg, datasets=[dataset]).eval_loader(dataset, split, rank, world_size)
