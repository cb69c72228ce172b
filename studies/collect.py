"""Collect runs into flat records ``{axes..., metrics...}``: offline from run directories, online from W&B.

A record holds the axes runs are compared on (no "/" in their names) and the metrics (every name has a
"/", as in docs/ARCHITECTURE.md), so tables and plots read one shape whatever the source::

    {"run_name": "demo_cpu-vit_demo-scale0.25", "source": "local", "status": "finished",
     "group": "demo_cpu", "experiment": "demo_cpu", "arch": "vit_demo", "model": "vit_tiny_patch16_224",
     "family": "vit", "scale": 0.25, "label_space": "clustered", "tasks": "weak_label", "stage": "pretrain",
     "init": "trained", "seed": 0, "img_size": 64,
     "eval/fashion_mnist/backbone/float/mAP@10": 0.41, "perf/images_per_sec": 310.0,
     "cost/wall_hours": 0.03, "cost/devices": 1, "cost/accelerator_hours": 0.03, ...}

``arch`` is the model preset's name (configs/model/<arch>.yaml) when it can be known: from the sweep
parameters the local runner recorded, from a W&B run's sweep config, or by matching the run's resolved
model config against the preset files; else the timm model name.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

import storage

log = logging.getLogger(__name__)

MODEL_PRESETS = Path(__file__).resolve().parent.parent / "configs" / "model"
# Axis keys of a record, in the order tables list them.
AXES = (
    "run_name",
    "source",
    "status",
    "group",
    "experiment",
    "arch",
    "model",
    "family",
    "scale",
    "label_space",
    "tasks",
    "stage",
    "init",
    "seed",
    "img_size",
    "wandb_id",
    "replicate",
)
# A run of evaluate.py without a checkpoint: its axes say init "random" (or model "random-init").
RANDOM_INIT = "random"
# Sweep parameters already covered by an axis (or not a comparison at all); the others become axes.
COVERED_PARAMS = (
    "experiment",
    "evaluate_after_fit",
    "model",
    "tasks",
    "seed",
    "data.weak_label.scale",
    "data.weak_label.label_space",
)
# Statuses whose metrics are final; "running" and "failed" runs are left out unless asked for.
FINAL_STATUSES = ("finished",)


def is_metric(key: str) -> bool:
    """Metric names carry a '/' (train/loss, eval/fashion_mnist/...); axis names do not."""
    return "/" in key


def is_private(key: str) -> bool:
    """Record entries that are neither axes nor metrics (``_science``: what the tables compare runs by)."""
    return key.startswith("_")


def comparison_keys(config: Mapping[str, Any], lineage: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(flat science keys plus ``lineage.<entry>`` for the lineage that changes results, replicate fingerprint):
    the same values from a run directory (config.yaml + run.json) and from its W&B run (config ``science`` +
    ``lineage``), so both give the same tables."""
    from tracking.identity import REPLICATE_LINEAGE, replicate_fingerprint

    keys = dict(config)
    keys.update({f"lineage.{k}": lineage.get(k) for k in REPLICATE_LINEAGE})
    return keys, replicate_fingerprint(config, lineage)[:8]


def is_random_init(record: Mapping[str, Any]) -> bool:
    """Whether a record is a random-init baseline (no pretraining)."""
    return record.get("init") == RANDOM_INIT or record.get("model") == "random-init"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_json(path: Any) -> dict | None:
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except storage.StorageError:  # the store kept failing: not a bad file, and a run left out would change the tables
        raise
    except (OSError, ValueError) as err:
        log.warning("skipping unreadable %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Any) -> dict | None:
    try:
        data = yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        return None
    except storage.StorageError:  # the store kept failing: not a bad file, and a run left out would change the tables
        raise
    except (OSError, yaml.YAMLError) as err:
        log.warning("skipping unreadable %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


@lru_cache(maxsize=4)
def _model_presets(folder: str) -> tuple[tuple[str, dict], ...]:
    presets = []
    for path in sorted(Path(folder).glob("*.yaml")):
        data = _read_yaml(path)
        if data and "name" in data:
            presets.append((path.stem, data))
    return tuple(presets)


def model_preset(model_config: Mapping[str, Any] | None, folder: os.PathLike = MODEL_PRESETS) -> str | None:
    """The configs/model preset a resolved model config came from: every key the preset sets must match
    (``kwargs`` exactly); among several matches the most specific wins. None when none matches."""
    if not isinstance(model_config, Mapping) or "name" not in model_config:
        return None
    best, best_keys = None, -1
    for stem, preset in _model_presets(str(folder)):
        ok = all(
            (dict(model_config.get(k) or {}) == dict(v or {})) if k == "kwargs" else model_config.get(k) == v
            for k, v in preset.items()
        )
        if ok and (model_config.get("kwargs") or {}) == (preset.get("kwargs") or {}) and len(preset) > best_keys:
            best, best_keys = stem, len(preset)
    return best


def _hours(started: Any, ended: Any) -> float | None:
    try:
        start = _dt.datetime.fromisoformat(str(started))
        end = _dt.datetime.fromisoformat(str(ended))
    except (TypeError, ValueError):
        return None
    seconds = (end - start).total_seconds()
    return seconds / 3600.0 if seconds >= 0 else None


def device_count(trainer: Mapping[str, Any] | None) -> int | None:
    """Accelerators a run used: devices x num_nodes from its trainer config; None when "auto"/unknown."""
    if not isinstance(trainer, Mapping):
        return None
    devices = trainer.get("devices")
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        count = int(devices)
    else:
        return None
    nodes = trainer.get("num_nodes") or 1
    return count * int(nodes)


def make_record(
    axes: Mapping[str, Any],
    metrics: Mapping[str, Any],
    run_name: str,
    source: str,
    status: str | None,
    group: str | None = None,
    arch: str | None = None,
    wall_hours: float | None = None,
    devices: int | None = None,
    params: Mapping[str, Any] | None = None,
    wandb_id: str | None = None,
    science: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    sweep_metric: str | None = None,
) -> dict[str, Any]:
    """The one record shape of both sources. Non-numeric and non-finite metrics are dropped (a missing
    metric is absent, never zero); ``cost/*`` metrics are derived from wall time and devices; swept
    parameters not covered by an axis (e.g. ``tasks.embedding.dim``) become axes under their own name.
    ``science`` and ``lineage`` give the run's comparison keys (``_science``) and replicate fingerprint
    (``replicate``): runs with different fingerprints are never averaged."""
    record: dict[str, Any] = {
        "run_name": run_name,
        "source": source,
        "status": status or "unknown",
        "group": group or axes.get("experiment"),
        "experiment": axes.get("experiment"),
        "arch": arch or axes.get("arch") or axes.get("model"),
        "model": axes.get("model") or axes.get("arch"),
        "family": axes.get("family"),
        "scale": _finite(axes.get("scale")),
        "label_space": axes.get("label_space"),
        "tasks": axes.get("tasks"),
        "stage": axes.get("stage"),
        "init": RANDOM_INIT if is_random_init(axes) else (axes.get("init") or "trained"),
        "seed": axes.get("seed"),
        "img_size": axes.get("img_size"),
        "wandb_id": wandb_id,
    }
    keys, record["replicate"] = comparison_keys(science or {}, lineage or {})
    record["_science"] = keys
    if sweep_metric:
        record["_sweep_metric"] = sweep_metric
    for key, value in axes.items():  # axes a later writer adds still come through
        if key not in record and not is_metric(key) and not is_private(key):
            record[key] = value
    for key, value in (params or {}).items():
        if key not in COVERED_PARAMS and key not in record and not is_metric(key) and not is_private(key):
            record[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    for key, value in metrics.items():
        number = _finite(value)
        if is_metric(str(key)) and number is not None:
            record[str(key)] = number
    # The run's own figure (train.py: every segment's wall time) when it has one; else the source's clock.
    wall_hours = record.get("cost/wall_hours", wall_hours)
    devices = (lineage or {}).get("world_size") or devices
    if wall_hours is not None:
        record["cost/wall_hours"] = wall_hours
    if devices is not None:
        record["cost/devices"] = float(devices)
    if wall_hours is not None and devices is not None:
        record["cost/accelerator_hours"] = wall_hours * devices
    return record


# ---------------------------------------------------------------------------------- offline


def read_run_dir(path: os.PathLike) -> dict[str, Any] | None:
    """One record from a run directory (run.json, metrics.json, eval/*.json, config.yaml, sweep.json), local or a
    URL (``s3://bucket/runs/<run>``).

    Returns:
        The record, or None when the folder holds no readable run.json (not a run).
    """
    path = storage.as_path(path)
    run = _read_json(path / "run.json")
    if run is None:
        return None
    config = _read_yaml(path / "config.yaml") or {}
    sweep = _read_json(path / "sweep.json") or {}
    metrics: dict[str, Any] = dict(_read_json(path / "metrics.json") or {})
    for eval_file in storage.glob(path / "eval", "*.json"):
        result = _read_json(eval_file)
        if result and isinstance(result.get("metrics"), dict):
            metrics.update(result["metrics"])  # evaluate.py's latest word wins over the copy in metrics.json
    from tracking.identity import science
    from tracking.run_dir import effective_status

    axes = dict(run.get("axes") or {})
    axes.setdefault("experiment", run.get("experiment"))
    params = sweep.get("params") or run.get("sweep_params") or {}  # the local runner's, else `wandb agent`'s
    arch = params.get("model") if isinstance(params.get("model"), str) else model_preset(config.get("model"))
    group = (config.get("logger") or {}).get("group") or sweep.get("sweep") or run.get("experiment")
    return make_record(
        axes,
        metrics,
        run_name=str(run.get("run_name") or path.name),
        source="local",
        status=effective_status(run),
        group=group,
        arch=arch,
        wall_hours=_hours(run.get("started"), run.get("ended")),
        devices=device_count(config.get("trainer")),
        params=params,
        wandb_id=run.get("wandb_id"),
        science=science(config),
        lineage=run.get("lineage") or {},
        sweep_metric=sweep.get("metric"),
    )


def collect_local(
    runs_dir: os.PathLike,
    group: str | None = None,
    include_unfinished: bool = False,
) -> list[dict[str, Any]]:
    """Records of every run directory under ``runs_dir`` (one level deep), sorted by run name.

    Args:
        runs_dir: the parent of the run directories (train.py's output_dir), a local folder or a URL
            (``s3://bucket/runs``: one listing of the prefix, then each run's few small files).
        group: keep runs whose W&B group, sweep name or experiment equals this.
        include_unfinished: keep runs whose status is not "finished" (running, failed) too.
    """
    if not storage.isdir(runs_dir):
        raise FileNotFoundError(f"runs directory not found: {runs_dir}")
    records = []
    for child in storage.listdir(runs_dir):
        if not storage.is_remote(child) and not child.is_dir():  # remotely a non-run just has no run.json
            continue
        record = read_run_dir(child)
        if record is None:
            continue
        sweep = (_read_json(child / "sweep.json") or {}).get("sweep")
        if group and group not in (record.get("group"), record.get("experiment"), sweep):
            continue
        if not include_unfinished and record["status"] not in FINAL_STATUSES:
            continue
        records.append(record)
    return records


# ----------------------------------------------------------------------------------- online


def record_from_wandb_run(run: Any) -> dict[str, Any]:
    """One record from a ``wandb.apis.public.Run`` (or anything with name, state, group, config, summary).

    Axes come from the run config's "axes" (train.py logs them); a sweep parameter ``model`` that W&B
    kept as a string is the preset's name; wall time is the summary's ``_runtime``.
    """
    from tracking.identity import science

    config = dict(getattr(run, "config", {}) or {})
    summary = getattr(run, "summary", {}) or {}
    summary = dict(getattr(summary, "_json_dict", None) or summary)
    axes = dict(config.get("axes") or {})
    # train.py logs its flat science keys under "science": a sweep's group choices replace config sections.
    keys = config.get("science") if isinstance(config.get("science"), Mapping) else science(config)
    model_cfg = config.get("model")
    arch = model_cfg if isinstance(model_cfg, str) else model_preset(model_cfg)
    runtime = _finite(summary.get("_runtime"))
    state = getattr(run, "state", None)
    # Sweep parameters sit flat in a W&B run's config: dotted keys, or a group choice kept as a string.
    params = {k: v for k, v in config.items() if "." in k or (k in ("data", "optim", "trainer") and isinstance(v, str))}
    return make_record(
        axes,
        summary,
        run_name=str(getattr(run, "name", "") or getattr(run, "id", "")),
        source="wandb",
        status="finished" if state == "finished" else state,
        group=getattr(run, "group", None),
        arch=arch,
        wall_hours=runtime / 3600.0 if runtime is not None else None,
        devices=device_count(config.get("trainer")),
        params=params,
        wandb_id=getattr(run, "id", None),
        science=keys,
        lineage=config.get("lineage") if isinstance(config.get("lineage"), Mapping) else {},
    )


def wandb_filters(sweep: str | None = None, group: str | None = None, tags: Sequence[str] = ()) -> dict:
    """The W&B API (MongoDB-style) filter for runs of a sweep, a group and/or any of some tags."""
    filters: dict[str, Any] = {}
    if sweep:
        filters["sweep"] = sweep
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$in": list(tags)}
    return filters


def collect_wandb(
    path: str,
    sweep: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    include_unfinished: bool = False,
    api: Any = None,
) -> list[dict[str, Any]]:
    """Records of the runs of a W&B project (online; needs ``wandb login``).

    Args:
        path: "ENTITY/PROJECT".
        sweep, group, tags: filters (see ``wandb_filters``).
        include_unfinished: keep runs whose state is not "finished".
        api: a ``wandb.Api`` (default: a new one).
    """
    if api is None:
        import wandb  # lazily: offline use never needs it

        api = wandb.Api()
    records = [record_from_wandb_run(run) for run in api.runs(path, filters=wandb_filters(sweep, group, tags))]
    if not include_unfinished:
        records = [r for r in records if r["status"] in FINAL_STATUSES]
    return sorted(records, key=lambda r: r["run_name"])


def dedupe(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per W&B run: a run found in run directories and in W&B (synced, or its offline folders) is kept
    once, from the first source listed (collect local records first: they hold the run directory's files)."""
    seen: set[str] = set()
    kept = []
    for record in records:
        wandb_id = record.get("wandb_id")
        if wandb_id and wandb_id in seen:
            continue
        if wandb_id:
            seen.add(wandb_id)
        kept.append(record)
    return kept


def collect_wandb_offline(
    wandb_dir: os.PathLike | str = "wandb",
    group: str | None = None,
    include_unfinished: bool = False,
) -> list[dict[str, Any]]:
    """Records of the offline W&B runs under ``wandb_dir`` (not yet synced), read with W&B's own reader and merged
    per run id as the server merges resumed runs (``tracking.wandb_offline``): the same records ``collect_wandb``
    gives after `wandb sync`.

    Args:
        group: keep runs whose W&B group, sweep name or experiment equals this.
        include_unfinished: keep runs whose state is not "finished".
    """
    from tracking.wandb_offline import read_offline_runs

    records = []
    for run in read_offline_runs(wandb_dir).values():
        record = record_from_wandb_run(run)
        record["source"] = "wandb-offline"
        if group and group not in (record.get("group"), record.get("experiment")):
            continue
        if include_unfinished or record["status"] in FINAL_STATUSES:
            records.append(record)
    return sorted(records, key=lambda r: r["run_name"])


def metric_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every metric name in a set of records, sorted."""
    return sorted({k for r in records for k in r if is_metric(k)})
