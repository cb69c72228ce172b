"""LightningDataModules: weak-label shards (webdataset), Fashion-MNIST, user image folders, multi-task mixing.

Entry points: ``build_datamodule(cfg)`` for training, ``eval_loader(cfg, dataset, split)`` for evaluate.py;
contracts in docs/ARCHITECTURE.md.
"""

from datamodules.loaders import DataConfigError
from datamodules.multitask import (
    DataCountsLogger,
    MultiTaskDataModule,
    WeakLabelShardDataModule,
    build_datamodule,
    eval_loader,
    required_datasets,
)
from datamodules.weak_label import Manifest, ManifestError, ManifestMismatchError

__all__ = [
    "DataConfigError",
    "DataCountsLogger",
    "Manifest",
    "ManifestError",
    "ManifestMismatchError",
    "MultiTaskDataModule",
    "WeakLabelShardDataModule",
    "build_datamodule",
    "eval_loader",
    "required_datasets",
]
