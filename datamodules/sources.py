"""Dataset kinds: the one place that maps a dataset name to the code that reads it.

A run names datasets (``tasks.classifiers.*.dataset``, ``tasks.embedding.datasets``, ``eval.datasets``); each
name is one ``DatasetSource``: ``weak_label`` (the mined shards), ``fashion_mnist``, or a ``data.user_tasks.<name>``
image folder. The DataModule, evaluate.py's runner and the config checks ask this module, never ``if name == ...``
(big_vision's evaluator registry, open_clip's ``get_dataset_fn``). Adding a kind: one module with a
``DatasetSource`` subclass, plus its entry in ``KINDS``.

Importing this module loads neither torch nor the data code (configs/compose.py checks dataset names with it); a
kind's module is imported when the kind is first built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from datamodules.loaders import BatchSource

# Dataset name -> "module:class" of its source, in the order the DataModule loads them.
KINDS = {
    "weak_label": "datamodules.weak_label:WeakLabelSource",
    "fashion_mnist": "datamodules.fashion_mnist:FashionMNISTSource",
}
USER_TASK = "datamodules.image_folder:ImageFolderSource"  # every data.user_tasks.<name>


class DataConfigError(ValueError):
    """A data config value or data file that cannot work; the message names the key or file."""


class DatasetSource:
    """One dataset of a run: its classes, its training batches and its evaluation loaders.

    Construction reads only what ``num_classes`` / ``label_names`` need (a manifest, a folder listing, constants),
    never the images. Subclasses set the attributes below and implement ``train_source`` and ``eval_loader``.
    """

    # evaluate.py's retrieval datasets this kind provides: eval name -> (gallery split, query split, or None for
    # leave-one-out on the gallery)
    retrieval: ClassVar[dict[str, tuple[str, str | None]]] = {}
    name: str
    num_classes: int
    label_names: list[str]
    val_split: str | None  # the split training-time validation reads (None: the dataset has none)

    @classmethod
    def check_files(cls, cfg: Any) -> None:
        """Before an evaluation builds the source: raise ``FileNotFoundError`` naming the config key whose files are
        missing (the constructor's own checks cover training)."""

    def manifests(self) -> list[str]:
        """Files whose bytes identify this dataset's content (``tracking.run_dir.lineage`` fingerprints them)."""
        return []

    def train_source(self, rank: int, world: int) -> BatchSource:
        """Training batches for ``rank`` of ``world``: a fixed number per pass, equal on every rank."""
        raise NotImplementedError

    def eval_loader(self, split: str, rank: int, world: int) -> tuple[DataLoader, int]:
        """(DataLoader, batches) over every sample of ``split`` exactly once across ranks, the same number of batches
        on every rank, eval transforms, no shuffle."""
        raise NotImplementedError


def dataset_names(cfg: Any) -> list[str]:
    """Every dataset a run config can use, in load order: the built-in kinds, then ``data.user_tasks`` (config order;
    a task named like a built-in kind is listed twice, which configs/compose.py refuses)."""
    return [*KINDS, *(str(name) for name in cfg.data.user_tasks.keys())]


def _load(path: str) -> type[DatasetSource]:
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


def source_class(cfg: Any, name: str) -> type[DatasetSource]:
    """The ``DatasetSource`` class that reads dataset ``name`` of this config."""
    if name in KINDS:
        return _load(KINDS[name])
    if name in cfg.data.user_tasks:
        return _load(USER_TASK)
    raise DataConfigError(f"unknown dataset '{name}': use one of {dataset_names(cfg)} (data.user_tasks adds more)")


def build_source(cfg: Any, name: str) -> DatasetSource:
    """Dataset ``name`` of a composed run config (``num_classes`` / ``label_names`` available at once)."""
    return source_class(cfg, name)(cfg, name)


def retrieval_datasets() -> dict[str, tuple[str, str, str | None]]:
    """evaluate.py's retrieval datasets: eval name -> (dataset, gallery split, query split or None)."""
    out = {}
    for name, path in KINDS.items():
        out.update({ev: (name, gallery, query) for ev, (gallery, query) in _load(path).retrieval.items()})
    return out
