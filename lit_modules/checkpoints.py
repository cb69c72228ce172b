"""Safe checkpoint reading and the checks that a checkpoint fits a model.

Checkpoints are only ever read with ``torch.load(weights_only=True)``: a file holding pickled Python
objects other than tensors and plain containers is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "InitReport", "read_checkpoint", "compatibility_problems"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, is not one of this repo, or does not fit the model."""


@dataclass
class InitReport:
    """What ``init_from`` loaded into a model (all lists of state-dict keys, sorted)."""

    path: str
    loaded: list[str] = field(default_factory=list)  # copied from the checkpoint
    new: list[str] = field(default_factory=list)  # in the model, freshly initialised
    mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # (key, ckpt, model shape)
    resampled: list[str] = field(default_factory=list)  # position embeddings resized to this img_size
    skipped_label_space: list[str] = field(default_factory=list)  # heads over another label space
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON / W&B friendly)."""
        return asdict(self)

    def summary(self) -> str:
        """One line per category with counts and the first few keys."""

        def head(keys: list, n: int = 6) -> str:
            shown = [k if isinstance(k, str) else f"{k[0]} {k[1]}->{k[2]}" for k in keys[:n]]
            return ", ".join(shown) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")

        lines = [f"init_from {self.path}: {len(self.loaded)} tensors loaded, {len(self.new)} new"]
        for name in ("new", "mismatched", "resampled", "skipped_label_space", "unused"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {head(keys)}")
        return "\n".join(lines)


def read_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this repo with ``weights_only=True`` and check its structure.

    Args:
        path: a ``.ckpt`` file written by Lightning for a ``MultiTaskModule``.
        map_location: passed to ``torch.load``.

    Returns:
        The checkpoint dict; it has ``state_dict`` and ``hyper_parameters`` with ``config`` and
        ``num_classes``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a pickle payload (refused), an unreadable file, a sharded FSDP directory, or
            a checkpoint that is not one of this repo; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").exists() or (path / "meta.pt").exists():
            raise CheckpointError(
                f"{path} is a sharded FSDP checkpoint directory: consolidate it first with "
                f"`python -m lightning.pytorch.utilities.consolidate_checkpoint {path}`"
            )
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is truncated or foreign.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save zip archive; truncated?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler error" in ln]
        reason = lines[0].split(". Please use")[0] if lines else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds pickled Python objects beyond tensors and plain "
            f"containers, and checkpoints are only read with torch.load(weights_only=True) ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format): {err}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' mapping)")
    hp = ckpt.get("hyper_parameters")
    if (
        not isinstance(hp, dict)
        or not isinstance(hp.get("config"), dict)
        or not isinstance(hp.get("num_classes"), dict)
    ):
        raise CheckpointError(
            f"{path}: not a checkpoint of this repo's MultiTaskModule (hyper_parameters lack 'config' / 'num_classes')"
        )
    return ckpt


def _model_arch(config: Mapping[str, Any]) -> tuple[str, dict]:
    model = config.get("model") or {}
    return str(model.get("name")), dict(model.get("kwargs") or {})


def compatibility_problems(
    saved: Mapping[str, Any], current: Mapping[str, Any], check_tasks: bool = True, check_img_size: bool = True
) -> list[str]:
    """Why a checkpoint's weights cannot be restored into the current module (empty list: they can).

    Args:
        saved: the checkpoint's ``hyper_parameters`` (``config`` and ``num_classes``).
        current: the current module's hyper-parameters, same form.
        check_tasks: also require the same task heads (resuming); ``init_from`` only checks the backbone.
        check_img_size: require the same ``data.img_size`` (position embeddings of ViTs are sized by it).
    """
    problems: list[str] = []
    s_cfg, c_cfg = saved["config"], current["config"]
    s_arch, c_arch = _model_arch(s_cfg), _model_arch(c_cfg)
    if s_arch != c_arch:
        problems.append(
            f"backbone differs: checkpoint model.name={s_arch[0]} kwargs={s_arch[1]}, "
            f"this run model.name={c_arch[0]} kwargs={c_arch[1]}"
        )
    if not check_tasks:
        return problems
    s_size, c_size = s_cfg.get("data", {}).get("img_size"), c_cfg.get("data", {}).get("img_size")
    if check_img_size and s_size != c_size:
        problems.append(f"data.img_size differs: checkpoint {s_size}, this run {c_size}")
    s_nc, c_nc = dict(saved["num_classes"]), dict(current["num_classes"])
    for ds in sorted(set(s_nc) | set(c_nc)):
        if s_nc.get(ds) != c_nc.get(ds):
            problems.append(
                f"label space of '{ds}' differs: checkpoint {s_nc.get(ds)} classes, this run {c_nc.get(ds)}"
            )
    s_space = s_cfg.get("data", {}).get("weak_label", {}).get("label_space")
    c_space = c_cfg.get("data", {}).get("weak_label", {}).get("label_space")
    if s_space != c_space and "weak_label" in c_nc:
        problems.append(f"data.weak_label.label_space differs: checkpoint '{s_space}', this run '{c_space}'")
    from lit_modules.heads import task_specs

    s_tasks = [t.name for t in task_specs(s_cfg.get("tasks", {}))]
    c_tasks = [t.name for t in task_specs(c_cfg.get("tasks", {}))]
    if s_tasks != c_tasks:
        problems.append(f"tasks differ: checkpoint {s_tasks}, this run {c_tasks}")
    if bool(s_cfg.get("optim", {}).get("ema_decay")) != bool(c_cfg.get("optim", {}).get("ema_decay")):
        problems.append("optim.ema_decay is set in only one of the checkpoint and this run")
    return problems


def describe(path: os.PathLike | str | None) -> str:
    """``checkpoint <path>`` or ``the checkpoint`` when the path is unknown."""
    return f"checkpoint {path}" if path else "the checkpoint"
