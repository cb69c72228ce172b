"""Run directories: the files every run leaves behind so results tabulate without a W&B server.

Layout (docs/ARCHITECTURE.md):
    <output_dir>/<run_name>/config.yaml, run.json, metrics.json, checkpoints/, eval/<dataset>.json

A directory is one run's: its name carries the run's identity (``default_run_name``), ``RunDir.check`` refuses a
directory holding another configuration or a live process, and run.json records every start and end (segments),
a heartbeat while the run is alive, and the run's lineage (git commit, data fingerprint, world size, global batch).

``output_dir`` may be a local folder or an object-store URL (``s3://bucket/runs``, ``gs://...``): every file goes
through ``storage`` (atomic writes: a reader never sees a torn run.json; remote operations retried on transient
errors until ``STORAGE_RETRY_DEADLINE_S``, then a ``storage.StorageError`` naming the URL).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

import storage
from configs.compose import to_dict
from tracking.identity import (
    agent_ids,
    config_fingerprint,
    data_fingerprint,
    differences,
    fingerprint,
    replicate_fingerprint,
    science,
)


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
    """The run directory's name when ``run_name`` is not given: the compared axes
    (``experiment-arch-s<scale>-<label_space>-<stage>-seed<seed>``) and what makes the run one of a kind: under
    `wandb agent` the sweep and run ids it was given, else a short fingerprint of the config without its operational
    keys (``tracking.identity``), so two configurations never share a directory."""
    a = axes(cfg)
    name = f"{a['experiment']}-{a['arch']}-s{a['scale']:g}-{a['label_space']}-{a['stage']}-seed{a['seed']}"
    agent = agent_ids()
    suffix = f"{agent[0]}-{agent[1]}" if agent else config_fingerprint(to_dict(cfg))[:8]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{name}-{suffix}")


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, NaN/inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _age_s(stamp: Any) -> float | None:
    try:
        return (_dt.datetime.now(_dt.UTC) - _dt.datetime.fromisoformat(str(stamp))).total_seconds()
    except (TypeError, ValueError):
        return None


def write_json_atomic(path: storage.PathLike, payload: Mapping[str, Any]) -> None:
    """Write JSON to a local path or URL atomically (``storage.write_text``: a temporary file and a rename locally,
    one PUT on an object store), so a crash never leaves half a file."""
    storage.write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------- liveness

# A live run rewrites run.json's "heartbeat" this often; a "running" run silent for STALE_AFTER_S is a dead one
# (killed with kill -9, its node lost) and is reported as "crashed".
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def _process_start(pid: int) -> str | None:
    """The start time of a live local process (field 22 of /proc/<pid>/stat), to tell it from a later one with its
    pid; None when there is no such process or it has ended (a zombie its parent has not reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def agent_params() -> dict[str, Any]:
    """The parameters `wandb agent` gave this run (its WANDB_SWEEP_PARAM_PATH file: ``{key: {"value": v}}``), flat;
    the same values W&B puts into the run's config, recorded in run.json so both sources name runs alike."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    try:
        loaded = yaml.safe_load(Path(path).read_text()) if path else None
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(loaded, Mapping):
        return {}
    return {
        str(k): (v.get("value") if isinstance(v, Mapping) else v) for k, v in loaded.items() if k != "wandb_version"
    }


def this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid())}


def process_alive(record: Mapping[str, Any]) -> bool | None:
    """Whether the process a run record names is alive: True/False on its own host, None on another host."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return None
    started = _process_start(int(record["pid"]))
    return started is not None and (record.get("pid_start") is None or started == record.get("pid_start"))


def effective_status(record: Mapping[str, Any]) -> str:
    """A run's status as it is now: "crashed" for a "running" record whose process is gone (on this host), whose
    heartbeat is older than ``STALE_AFTER_S``, or that has no heartbeat at all (written by something that keeps
    none); the recorded status otherwise."""
    status = str(record.get("status") or "unknown")
    if status != "running":
        return status
    alive = process_alive(record)
    age = _age_s(record.get("heartbeat"))
    if alive is False or (alive is None and (age is None or age > STALE_AFTER_S)):
        return "crashed"
    return status


class RunIdentityError(ValueError):
    """A run directory that holds another configuration than the run asked to use it."""


class RunInUseError(RuntimeError):
    """A run directory a live process is training in."""


class RunDir:
    """Paths and bookkeeping files of one run; ``start`` checks that the directory is this run's (identity and
    liveness) and keeps a heartbeat in run.json until ``finish``.

    ``path`` is a ``pathlib.Path`` for a local directory and a ``upath.UPath`` for a URL (``storage.as_path``);
    ``str(path)`` is what to hand to other programs (Lightning, evaluate.py)."""

    def __init__(self, path: storage.PathLike):
        self.path = storage.as_path(path)
        self._lock = threading.Lock()
        self._beat: threading.Event | None = None

    @classmethod
    def for_config(cls, cfg: DictConfig) -> RunDir:
        return cls(storage.join(str(cfg.output_dir), cfg.run_name or default_run_name(cfg)))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_remote(self) -> bool:
        return storage.is_remote(self.path)

    @property
    def checkpoints(self) -> Any:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Any:
        return self.checkpoints / "last.ckpt"

    @property
    def run_json(self) -> Any:
        return self.path / "run.json"

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(storage.read_text(self.run_json))
        except FileNotFoundError:
            return {}

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into run.json (read, update, atomic write; one writer thread at a time)."""
        with self._lock:
            record = self.read_run()
            record.update(fields)
            write_json_atomic(self.run_json, record)
            return record

    def check(self, cfg: DictConfig) -> dict[str, Any]:
        """Refuse a directory that is not this run's to continue; returns the run.json found (``{}`` for none).

        Raises:
            RunIdentityError: the directory holds a run of another configuration (the differing keys are named).
                ``resume=<checkpoint>`` is the explicit way to continue a run under changed settings.
            RunInUseError: a live process is training in it (same host: its pid; another host: a fresh heartbeat).
        """
        previous = self.read_run()
        saved = self.path / "config.yaml"
        try:
            old_text = storage.read_text(saved)
        except FileNotFoundError:
            old_text = None
        if not previous and old_text is None:
            return previous
        new = science(to_dict(cfg))
        stored_fp = previous.get("config_fingerprint")
        old = science(yaml.safe_load(old_text) or {}) if old_text is not None else None
        if stored_fp is None and old is not None:
            stored_fp = fingerprint(old)
        explicit = cfg.resume not in ("auto", "never")
        if stored_fp is not None and stored_fp != fingerprint(new) and not explicit:
            changed = differences(old, new) if old is not None else [f"config fingerprint {stored_fp}"]
            raise RunIdentityError(
                f"run directory {self.path} holds a run of another configuration; differing keys:\n  "
                + "\n  ".join(changed)
                + "\nGive this run its own directory (another run_name, or none: the default name carries a config "
                "fingerprint), or continue that run deliberately with resume=<its checkpoint>."
            )
        if previous.get("status") == "running" and effective_status(previous) == "running":
            here = this_process()
            if (previous.get("host"), previous.get("pid")) != (here["host"], here["pid"]):
                age = _age_s(previous.get("heartbeat"))
                raise RunInUseError(
                    f"run directory {self.path} is in use by pid {previous.get('pid')} on {previous.get('host')} "
                    f"(heartbeat {age:.0f} s ago)"
                    + (f"; if that process is gone, it counts as crashed after {STALE_AFTER_S:.0f} s" if age else "")
                )
        return previous

    def start(self, cfg: DictConfig, init: str = "trained", **fields: Any) -> dict[str, Any]:
        """Claim the directory for this process (``check``), write config.yaml and run.json ("running"), and keep a
        heartbeat until ``finish``. A previous segment left "running" by a dead process is recorded as crashed.
        The W&B id, the start time and the list of segments carry over from an earlier start."""
        previous = self.check(cfg)
        storage.makedirs(self.path)
        storage.write_text(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # as save_config, atomic
        segments = list(previous.get("segments") or [])
        if previous.get("status") == "running" and segments and "ended" not in segments[-1]:
            segments[-1].update(status="crashed", ended=previous.get("heartbeat"), error="no heartbeat: process gone")
        now = _now()
        record = {
            "run_name": self.name,
            "experiment": cfg.experiment,
            "status": "running",
            "git_commit": git_commit(),
            "axes": axes(cfg, init=init),
            "config_fingerprint": config_fingerprint(to_dict(cfg)),
            "wandb_id": previous.get("wandb_id"),
            "started": previous.get("started", now),
            "restarts": len(segments),
            "heartbeat": now,
            "segments": [*segments, {"started": now, **this_process()}],
            **this_process(),
        }
        if agent_ids():
            record["wandb_sweep_id"] = agent_ids()[0]
            record["sweep_params"] = agent_params()
        record.update(fields)
        with self._lock:
            write_json_atomic(self.run_json, record)
        self._start_heartbeat()
        return record

    def _start_heartbeat(self) -> None:
        if self._beat is not None:
            return
        self._beat = threading.Event()

        def beat(stop: threading.Event) -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError, ValueError):
                    self.update(heartbeat=_now())

        threading.Thread(target=beat, args=(self._beat,), name="run-heartbeat", daemon=True).start()

    def finish(self, status: str = "finished", **extra: Any) -> None:
        """Record the end of this segment (status, time, ``extra`` such as ``error``) and stop the heartbeat."""
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        with self._lock:
            record = self.read_run()
            now = _now()
            record.update(status=status, ended=now, heartbeat=now, **extra)
            segments = record.get("segments") or []
            if segments and "ended" not in segments[-1]:
                segments[-1].update(status=status, ended=now, **({"error": extra["error"]} if "error" in extra else {}))
            write_json_atomic(self.run_json, record)

    def elapsed_hours(self) -> float:
        """Wall time of every segment of the run so far (a crashed one up to its last heartbeat), in hours."""
        total = 0.0
        for seg in self.read_run().get("segments") or []:
            end = seg.get("ended") or _now()
            start_age, end_age = _age_s(seg.get("started")), _age_s(end)
            if start_age is not None and end_age is not None:
                total += max(0.0, start_age - end_age)
        return total / 3600.0

    def write_metrics(self, metrics: Mapping[str, Any], name: str = "metrics.json") -> dict[str, Any]:
        clean = {k: _clean(v) for k, v in sorted(metrics.items())}
        write_json_atomic(self.path / name, clean)
        return clean


def lineage(
    cfg: DictConfig, manifests: Sequence[str] = (), world_size: int | None = None, accumulate: int | None = None
) -> dict[str, Any]:
    """Where a run's results come from, recorded in run.json and the W&B config: the git commit, the fingerprint of
    the data manifests it reads, the world size and global batch it trained with, its precision, and its config and
    replicate fingerprints (``tracking.identity``). ``accumulate``: the trainer's accumulation when it is not the
    config's (a resume on another world size, ``lit_modules.trainer.adapt_topology``)."""
    from lit_modules.optim import global_batch_size

    t = cfg.trainer
    record = {
        "git_commit": git_commit(),
        "data_fingerprint": data_fingerprint(manifests),
        "world_size": world_size,
        "global_batch": None
        if world_size is None
        else global_batch_size(cfg.data.batch_size, world_size, accumulate or t.accumulate_grad_batches),
        "precision": str(t.precision),
        "config_fingerprint": config_fingerprint(to_dict(cfg)),
    }
    record["replicate_fingerprint"] = replicate_fingerprint(science(to_dict(cfg)), record)
    return record


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
        init_from: a checkpoint (``.ckpt`` file or sharded FSDP folder, local or a URL); a run directory (its
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
        path = storage.as_path(init_from)
        if not is_checkpoint(path) and storage.exists(path / "checkpoints" / "last.ckpt"):
            return str(path / "checkpoints" / "last.ckpt")
        return init_from
    wanted = {}
    for item in filter(None, init_from[len(RUN_SPEC_PREFIX) :].split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"init_from={init_from}: '{item}' is not <axis>=<value>")
        wanted[key.strip()] = value.strip()
    matches = []
    for run_json in storage.glob(str(output_dir), "*/run.json"):
        record = json.loads(storage.read_text(run_json))
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
