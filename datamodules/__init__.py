"""LightningDataModules: weak-label shards (webdataset), Fashion-MNIST, user image folders, multi-task mixing.

Entry points: ``build_datamodule(cfg)`` for training, ``eval_loader(cfg, dataset, split)`` for evaluate.py;
contracts in docs/ARCHITECTURE.md.
"""

import importlib
from typing import Any

# Exported names resolve on first use (PEP 562): ``import datamodules.tar_reader`` (the label miner's workers) then
# loads neither torch nor Lightning, which cost seconds per process.
_EXPORTS = {
    "DataConfigError": "datamodules.loaders",
    "DataCountsLogger": "datamodules.multitask",
    "MultiTaskDataModule": "datamodules.multitask",
    "WeakLabelShardDataModule": "datamodules.multitask",
    "build_datamodule": "datamodules.multitask",
    "eval_loader": "datamodules.multitask",
    "required_datasets": "datamodules.multitask",
    "Manifest": "datamodules.weak_label",
    "ManifestError": "datamodules.weak_label",
    "ManifestMismatchError": "datamodules.weak_label",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datamodules' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


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
