"""Run directories: the files every run leaves behind so results tabulate without a W&B server.

Layout (docs/ARCHITECTURE.md):
    <output_dir>/<run_name>/config.yaml, run.json, metrics.json, checkpoints/, eval/<dataset>.json
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from configs.compose import save_config


def git_commit(repo: Path | None = None) -> str | None:
    """The current git commit (with '-dirty' when the tree has changes), or None outside git."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def model_family(cfg: DictConfig) -> str:
    """'vit', 'resnet', ... from model.family, else guessed from the timm name."""
    if cfg.model.family:
        return str(cfg.model.family)
    name = cfg.model.name
    for family in ("vit", "deit", "resnext", "resnet", "convnext", "swin", "efficientnet"):
        if name.startswith(family):
            return "resnet" if family == "resnext" else family
    return name.split("_")[0]


def task_set(cfg: DictConfig) -> str:
    """A short name for the enabled tasks, e.g. 'weak_label+embedding+clf:fashion'."""
    parts = []
    if cfg.tasks.weak_label.enabled:
        parts.append("weak_label")
    if cfg.tasks.embedding.enabled:
        parts.append("embedding")
    parts.extend(f"clf:{name}" for name in sorted(cfg.tasks.classifiers))
    return "+".join(parts)


def axes(cfg: DictConfig, init: str = "trained") -> dict[str, Any]:
    """The axes people compare runs on; W&B config/tags and the tables read the same keys."""
    arch = Path(str(cfg.model.name)).name
    return {
        "experiment": cfg.experiment,
        "arch": arch,
        "model": arch,
        "family": model_family(cfg),
        "scale": float(cfg.data.weak_label.scale),
        "label_space": cfg.data.weak_label.label_space,
        "tasks": task_set(cfg),
        "stage": cfg.stage,
        "img_size": int(cfg.data.img_size),
        "seed": int(cfg.seed),
        "init": init,
    }


def default_run_name(cfg: DictConfig) -> str:
    """experiment-arch-s<scale>-<label_space>-<stage>-seed<seed>, filesystem-safe."""
    a = axes(cfg)
    name = f"{a['experiment']}-{a['arch']}-s{a['scale']:g}-{a['label_space']}-{a['stage']}-seed{a['seed']}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, NaN/inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class RunDir:
    """Paths and bookkeeping files of one run."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: DictConfig) -> RunDir:
        return cls(Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg)))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def read_run(self) -> dict[str, Any]:
        if not self.run_json.is_file():
            return {}
        return json.loads(self.run_json.read_text())

    def start(self, cfg: DictConfig, wandb_id: str | None = None, init: str = "trained") -> None:
        """Write config.yaml and run.json (status 'running'); keeps an existing wandb_id on resume."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / "config.yaml")
        previous = self.read_run()
        record = {
            "run_name": self.name,
            "experiment": cfg.experiment,
            "status": "running",
            "git_commit": git_commit(),
            "axes": axes(cfg, init=init),
            "wandb_id": wandb_id or previous.get("wandb_id"),
            "started": previous.get("started", _now()),
            "restarts": previous.get("restarts", -1) + 1,
        }
        write_json_atomic(self.run_json, record)

    def finish(self, status: str = "finished", **extra: Any) -> None:
        record = self.read_run()
        record.update(status=status, ended=_now(), **extra)
        write_json_atomic(self.run_json, record)

    def write_metrics(self, metrics: Mapping[str, Any], name: str = "metrics.json") -> dict[str, Any]:
        clean = {k: _clean(v) for k, v in sorted(metrics.items())}
        write_json_atomic(self.path / name, clean)
        return clean


RUN_SPEC_PREFIX = "run:"


def _axis_matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) == wanted
    try:
        return float(value) == float(wanted)
    except ValueError:
        return False


def resolve_init_from(init_from: str, output_dir: os.PathLike | str, seed: int | None = None) -> str:
    """The checkpoint ``init_from`` names, whatever runner (local sweep runner or ``wandb agent``) named the
    stage-one run directory.

    Args:
        init_from: a checkpoint (``.ckpt`` file or sharded FSDP folder); a run directory (its
            ``checkpoints/last.ckpt``); or a run spec ``run:<axis>=<value>,...`` over the axes every run records in
            its ``run.json`` (``tracking.run_dir.axes``: experiment, arch, scale, label_space, stage, seed, ...),
            e.g. ``run:experiment=scale_arch,arch=vit_base_patch16_224,scale=1.0,stage=pretrain``. A spec is
            looked up over ``<output_dir>/*/run.json`` among finished runs with a last.ckpt; when several match,
            the one whose seed is ``seed`` wins.
        output_dir: the folder holding run directories (``cfg.output_dir``).
        seed: the current run's seed (tie-break for a spec).

    Returns:
        The checkpoint path (returned unchanged when it is neither a run directory nor a spec).

    Raises:
        FileNotFoundError: a spec that matches no finished run, or several (listed) even after the seed rule.
    """
    from lit_modules.checkpoints import is_checkpoint

    if not init_from.startswith(RUN_SPEC_PREFIX):
        path = Path(init_from)
        if not is_checkpoint(path) and (path / "checkpoints" / "last.ckpt").exists():
            return str(path / "checkpoints" / "last.ckpt")
        return init_from
    wanted = {}
    for item in filter(None, init_from[len(RUN_SPEC_PREFIX) :].split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"init_from={init_from}: '{item}' is not <axis>=<value>")
        wanted[key.strip()] = value.strip()
    matches = []
    for run_json in sorted(Path(output_dir).glob("*/run.json")):
        record = json.loads(run_json.read_text())
        recorded = record.get("axes") or {}
        last = run_json.parent / "checkpoints" / "last.ckpt"
        if record.get("status") != "finished" or not is_checkpoint(last):
            continue
        if all(k in recorded and _axis_matches(recorded[k], v) for k, v in wanted.items()):
            matches.append((run_json.parent, recorded))
    if len(matches) > 1 and seed is not None:
        same_seed = [m for m in matches if m[1].get("seed") == seed]
        matches = same_seed or matches
    if len(matches) != 1:
        found = [m[0].name for m in matches]
        raise FileNotFoundError(
            f"init_from={init_from}: {'no' if not matches else len(matches)} finished run(s) with a last.ckpt in "
            f"{output_dir} match {wanted}" + (f": {found}; add an axis (e.g. seed=...) to choose" if found else "")
        )
    return str(matches[0][0] / "checkpoints" / "last.ckpt")
