"""The DataModule of a run: the datasets its tasks need, mixed into one training stream, with exact resume.

``build_datamodule(cfg)`` builds a ``DatasetSource`` (``datamodules.sources``) for each dataset the enabled tasks
use (``tasks.weak_label.enabled`` -> weak_label, ``tasks.classifiers.*.dataset``, ``tasks.embedding.datasets``) and
exposes ``num_classes`` / ``label_names`` right away (manifest and constants only). Batches follow
docs/ARCHITECTURE.md "Batches": ``{dataset: {"image", "target", "key"}}`` once ``on_after_batch_transfer`` (on the
device) turned the loaders' uint8 images and label ids into normalized images and dense targets and applied mixup
(``datamodules.targets``).

Training: ``train_dataloader`` returns one ``datamodules.resume.TrainLoader`` over every dataset's passes
(``data.mixing.mode``: combined or interleave, see there), the same number of batches on every rank (weak-label:
a plan of slot pieces from the manifest, ``datamodules.slots``; map-style datasets: ``EpochSampler``'s global batches), so no rank waits at a
collective. Its ``state_dict`` / ``load_state_dict`` are what Lightning saves and restores for mid-epoch resume.

Validation: ``val_dataloader`` returns ``{dataset: EvalLoader}`` over each dataset's validation split, so Lightning
runs them in its "sequential" mode with ``limit_val_batches`` per dataset; every batch reaches the module as one
dataset's plain batch with its ``dataloader_idx`` (the position of the dataset in ``val_loaders``).

Skip counters (corrupt images, bad labels, broken shards, ...) come back from the workers inside the batches and are
summed per loader: ``data_counts()``; ``DataCountsLogger`` sums them over ranks and logs ``data/<dataset>/<split>/
<reason>``.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from datamodules.loaders import EvalLoader, dist_info
from datamodules.resume import EpochClock, PassLoader, TrainLoader
from datamodules.sources import DataConfigError, build_source, dataset_names, source_class
from datamodules.stages import SKIP_REASONS
from datamodules.targets import BatchTransform
from lit_modules.strategy import all_gather_cpu, reduce_cpu

COUNT_REASONS = (*SKIP_REASONS, "unreadable_image")  # every skip reason of every dataset kind


def required_datasets(cfg: Any) -> list[str]:
    """Datasets the enabled tasks use, in ``datamodules.sources.dataset_names`` order."""
    wanted = set()
    if cfg.tasks.weak_label.enabled:
        wanted.add("weak_label")
    wanted.update(str(c.dataset) for c in cfg.tasks.classifiers.values())
    if cfg.tasks.embedding.enabled:
        wanted.update(str(d) for d in cfg.tasks.embedding.datasets)
    known = dataset_names(cfg)
    unknown = wanted - set(known)
    if unknown:
        raise DataConfigError(f"tasks use dataset(s) {sorted(unknown)} that are not one of {known}")
    return [name for name in known if name in wanted]


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
        self.sources = {name: build_source(cfg, name) for name in self.dataset_names}
        self.num_classes = {name: s.num_classes for name, s in self.sources.items()}
        self.label_names = {name: list(s.label_names) for name, s in self.sources.items()}
        self.mode = str(cfg.data.mixing.mode)  # combined | interleave (a Literal field of the schema)
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
        self.ratios = ratios if self.mode == "interleave" else {}
        self.batch_transform = BatchTransform(
            self.num_classes.get("weak_label"), float(cfg.data.augment.mixup_alpha), int(cfg.seed)
        )
        self.clock = EpochClock(lambda: self.trainer)
        self.train_loaders: dict[str, PassLoader] = {}
        self.val_loaders: dict[str, EvalLoader] = {}
        self._legacy_position: dict | None = None

    # ----------------------------------------------------------------------------------- loaders

    def train_dataloader(self) -> TrainLoader:
        """One ``TrainLoader`` over every dataset's ``PassLoader`` (see ``datamodules.resume``)."""
        rank, world = dist_info(self.trainer)
        self.train_loaders = {
            n: PassLoader(n, self.sources[n].train_source(rank, world), self.clock) for n in self.dataset_names
        }
        loader = TrainLoader(
            self.train_loaders,
            self.mode,
            self.ratios,
            int(self.cfg.seed),
            self.clock,
            rank,
            world,
            gather=lambda tensor: all_gather_cpu(self.trainer.strategy, tensor),
        )
        position, self._legacy_position = self._legacy_position, None
        if position:
            loader.load_state_dict(position)
        return loader

    def eval_loader(self, name: str, split: str, rank: int = 0, world: int = 1) -> EvalLoader:
        """Deterministic loader over every sample of ``split`` of dataset ``name`` (exactly once over ranks)."""
        if name not in self.sources:
            raise DataConfigError(f"dataset '{name}' is not loaded by this run (loaded: {self.dataset_names})")
        loader, n = self.sources[name].eval_loader(split, rank, world)
        return EvalLoader(name, loader, n, self.batch_transform)

    def val_dataloader(self) -> dict[str, EvalLoader]:
        """Every dataset's validation split (``DatasetSource.val_split``: weak_label val, fashion_mnist test, user
        tasks val) as ``{dataset: EvalLoader}``: Lightning's sequential mode, ``limit_val_batches`` per dataset;
        every sample once over all ranks, the same number of batches on every rank for each dataset."""
        rank, world = dist_info(self.trainer)
        self.val_loaders = {}
        for name, source in self.sources.items():
            if source.val_split is None:
                warnings.warn(f"{name}: the dataset has no validation split; {name} is not validated", stacklevel=2)
                continue
            self.val_loaders[name] = self.eval_loader(name, source.val_split, rank, world)
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

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by the training loaders when no trainer is attached (scripts, benchmarks)."""
        self.clock.manual_epoch = int(epoch)

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning calls this only for a checkpoint written before the data position moved into the training
        loader's own state (``datamodules.resume``); that position has the same format and is applied when the
        training loader is built."""
        self._legacy_position = state_dict or None

    # ------------------------------------------------------------------------------------ counts

    def callbacks(self) -> list[Callback]:
        """Callbacks train.py adds to the Trainer for this data: the skip-counter logger."""
        return [DataCountsLogger()]

    def manifests(self) -> list[str]:
        """The data manifests this run reads (their bytes fingerprint the run's data: ``tracking.run_dir.lineage``)."""
        return [path for source in self.sources.values() for path in source.manifests()]

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
    (normalized images, dense ``"target"``), as ``evaluation.embeddings.extract_outputs`` does. Missing data files
    raise ``FileNotFoundError`` naming the config key.

    Args:
        cfg: the composed run config.
        dataset: "fashion_mnist" (splits "train" = gallery, "test" = query), "weak_label" (split "val"; label ids
            of ``data.weak_label.label_space``) or a ``data.user_tasks`` name (splits "train", "val").
        split: see ``dataset``.
        rank, world_size: this process's share when evaluation itself is distributed.
    """
    source_class(cfg, dataset).check_files(cfg)
    return MultiTaskDataModule(cfg, datasets=[dataset]).eval_loader(dataset, split, rank, world_size)
