"""Find, check and load the module to evaluate: a run's checkpoint, or a random-init baseline.

Checkpoints are read with ``torch.load(weights_only=True)`` only (never unpickled): the module comes
from ``lit_modules.load_module``, and the checkpoint's ``hyper_parameters`` (the ``config`` and
``num_classes`` MultiTaskModule was built with) are compared with the evaluation config first, so a
checkpoint of another architecture or label space fails with a message naming what differs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import storage
from configs.compose import to_dict

log = logging.getLogger(__name__)

# In this order of preference inside a run directory. last.ckpt holds the final weights, which are also what
# train.py's evaluate_after_fit scores, so a sweep's metric and a later re-evaluation agree (docs/evaluation rule:
# the final weights, EMA weights when the run trained an EMA).
CHECKPOINT_NAMES = ("last.ckpt", "best.ckpt")

# Config keys that fix the weights' shapes or meaning: a difference means another model.
ARCHITECTURE_KEYS = (
    "model.name",
    "model.kwargs",
    "data.weak_label.label_space",
    "tasks.weak_label.enabled",
    "tasks.embedding.enabled",
    "tasks.embedding.dim",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose architecture or label space differs from the evaluation config."""


def resolve_checkpoint(path: os.PathLike | str) -> tuple[Path, Path]:
    """A checkpoint, or a run directory (its checkpoints/last.ckpt, else best.ckpt) -> (checkpoint, run_dir).

    A checkpoint is a ``.ckpt`` file or a sharded FSDP checkpoint folder (``last.ckpt/`` with ``.metadata`` and
    ``meta.pt``), local or a URL (``s3://bucket/runs/<run>``: both come back as ``storage.as_path`` objects). The run
    directory is the checkpoint's grandparent when it sits in ``checkpoints/``, else its parent.
    """
    from lit_modules.checkpoints import is_checkpoint

    p = storage.as_path(path)
    if is_checkpoint(p):
        ckpt = p
    elif storage.isdir(p):
        folders = [p / "checkpoints", p]
        found = [f / name for name in CHECKPOINT_NAMES for f in folders if is_checkpoint(f / name)]
        if not found:
            raise FileNotFoundError(f"eval.checkpoint={path}: run directory holds no checkpoints/{{last,best}}.ckpt")
        ckpt = found[0]
    else:
        raise FileNotFoundError(f"eval.checkpoint={path}: no such checkpoint file or run directory")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return ckpt, run_dir


def run_config_path(ckpt: Path, run_dir: Path) -> Path:
    """The resolved config.yaml saved with the run (in the run directory, or next to the checkpoint), as a local
    path: a remote run's config.yaml is read from its copy in the storage cache (``storage.local_copy``)."""
    for candidate in (run_dir / "config.yaml", ckpt.parent / "config.yaml"):
        if storage.isfile(candidate):
            return storage.local_copy(candidate)
    raise FileNotFoundError(
        f"checkpoint {ckpt}: no config.yaml in {run_dir} or {ckpt.parent} (the run's resolved config)"
    )


def checkpoint_config(ckpt: Path, run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config to evaluate ``ckpt`` with, overrides applied: the run's resolved config.yaml (``run_config_path``),
    else, for a lone checkpoint, the config its ``hyper_parameters`` hold (what the module was built with). Its
    trainer section describes the training, not this evaluation, so it is not checked against this machine.

    Raises:
        FileNotFoundError: neither a config.yaml nor a stored config (the message names both places).
    """
    from configs.compose import load_run_config

    try:
        return load_run_config(run_config_path(ckpt, run_dir), overrides, hardware=False)
    except FileNotFoundError as missing:
        stored = (read_hparams(ckpt) or {}).get("config")
        if not isinstance(stored, Mapping):
            raise FileNotFoundError(f"{missing}, and its hyper_parameters hold no config") from None
    return load_run_config(stored, overrides, hardware=False, name=f"checkpoint {ckpt} (hyper_parameters)")


def read_hparams(ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's ``hyper_parameters`` (weights_only; a file memory-mapped, a sharded folder's meta.pt), or
    None when it has none."""
    from lit_modules.checkpoints import read_checkpoint_meta

    payload = read_checkpoint_meta(ckpt)
    hparams = payload.get("hyper_parameters")
    return dict(hparams) if isinstance(hparams, Mapping) else None


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def check_compatible(
    cfg: DictConfig,
    trained_config: Mapping[str, Any] | None,
    trained_num_classes: Mapping[str, int] | None = None,
    data_num_classes: Mapping[str, int] | None = None,
    source: str = "checkpoint",
) -> None:
    """Raise CheckpointMismatchError when the checkpoint's config or label counts differ from ``cfg``'s.

    Args:
        cfg: the evaluation config.
        trained_config: the config dict the checkpoint was trained with (None: nothing to compare).
        trained_num_classes: classes per dataset the checkpoint's heads have.
        data_num_classes: classes per dataset the configured data has (e.g. the manifest's label space).
        source: how to name the checkpoint in the message.
    """
    problems = []
    if trained_config is not None:
        current = to_dict(cfg)
        for key in ARCHITECTURE_KEYS:
            was, now = _get(trained_config, key), _get(current, key)
            if was != "<absent>" and was != now:
                problems.append(f"{key}: checkpoint {was!r} vs config {now!r}")
        trained_clf = _get(trained_config, "tasks.classifiers")
        if isinstance(trained_clf, Mapping):
            was_clf = {name: _get(clf, "dataset") for name, clf in trained_clf.items()}
            now_clf = {name: clf["dataset"] for name, clf in current["tasks"]["classifiers"].items()}
            if was_clf != now_clf:
                problems.append(f"tasks.classifiers: checkpoint {was_clf} vs config {now_clf}")
    if trained_num_classes and data_num_classes:
        for ds, n in trained_num_classes.items():
            if ds in data_num_classes and int(data_num_classes[ds]) != int(n):
                problems.append(f"num_classes[{ds!r}]: checkpoint {n} vs data {data_num_classes[ds]}")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not match the config (another architecture or label space): " + "; ".join(problems)
        )


def load_checkpoint_module(cfg: DictConfig, ckpt: Path, data_num_classes: Mapping[str, int] | None = None):
    """Check the checkpoint against ``cfg``, then load it with ``lit_modules.load_module`` (weights_only), with the
    EMA weights when the run trained an EMA (``optim.ema_decay``): the weights evaluate_after_fit scores too."""
    hparams = read_hparams(ckpt)
    if hparams is None:
        log.warning("checkpoint %s has no hyper_parameters: architecture check skipped", ckpt)
    else:
        check_compatible(
            cfg, hparams.get("config"), hparams.get("num_classes"), data_num_classes, source=f"checkpoint {ckpt}"
        )
    from lit_modules import load_module  # heavy: after the cheap checks

    trained = (hparams or {}).get("config") or {}
    use_ema = bool((trained.get("optim") or {}).get("ema_decay"))
    try:
        return load_module(ckpt, use_ema=True) if use_ema else load_module(ckpt)
    except RuntimeError as err:
        if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
            raise CheckpointMismatchError(f"checkpoint {ckpt} does not fit the module: {err}") from None
        raise


def build_random_module(cfg: DictConfig, num_classes: Mapping[str, int] | None = None):
    """A random-init MultiTaskModule from the config (the baseline row); num_classes from the DataModule."""
    from lit_modules import MultiTaskModule

    if num_classes is None:
        from datamodules import build_datamodule

        num_classes = build_datamodule(cfg).num_classes
    return MultiTaskModule(to_dict(cfg), dict(num_classes))
