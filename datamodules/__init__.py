"""LightningDataModules and dataset sources: weak-label shards (webdataset), Fashion-MNIST, user image folders,
multi-task mixing.

Entry points: ``build_datamodule(cfg)`` for training, ``eval_loader(cfg, dataset, split)`` for evaluate.py; dataset
kinds in ``datamodules.sources``; contracts in docs/ARCHITECTURE.md.
"""

import importlib
from typing import Any

# Exported names resolve on first use (PEP 562): ``import datamodules.tar_reader`` (the label miner's workers) or
# ``datamodules.sources`` (the config checks) then loads neither torch nor Lightning, which cost seconds per process.
_EXPORTS = {
    "DataConfigError": "datamodules.sources",
    "DatasetSource": "datamodules.sources",
    "DataCountsLogger": "datamodules.datamodule",
    "MultiTaskDataModule": "datamodules.datamodule",
    "WeakLabelShardDataModule": "datamodules.datamodule",
    "build_datamodule": "datamodules.datamodule",
    "eval_loader": "datamodules.datamodule",
    "required_datasets": "datamodules.datamodule",
    "Manifest": "datamodules.manifest",
    "ManifestError": "datamodules.manifest",
    "ManifestMismatchError": "datamodules.manifest",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datamodules' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "DataConfigError",
    "DataCountsLogger",
    "DatasetSource",
    "Manifest",
    "ManifestError",
    "ManifestMismatchError",
    "MultiTaskDataModule",
    "WeakLabelShardDataModule",
    "build_datamodule",
    "eval_loader",
    "required_datasets",
]
