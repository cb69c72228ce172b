"""Shared fixtures of the studies tests: generated run directories and a fake training program."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tracking.textio import read_jsonl

# Resolved model sections as train.py would save them (configs/model presets on the schema's defaults).
MODEL_CONFIGS = {
    "vit_demo": {"name": "vit_tiny_patch16_224", "family": "vit", "kwargs": {"patch_size": 8, "depth": 6}},
    "resnet_demo": {"name": "resnet18", "family": "resnet", "kwargs": {}},
    "vit_ti16": {"name": "vit_tiny_patch16_224", "family": "vit", "kwargs": {}},
}
_MODEL_DEFAULTS = {"drop_path_rate": 0.0, "grad_checkpointing": False, "channels_last": False, "compile": False}


def make_run_dir(
    root: Path,
    name: str,
    preset: str = "vit_demo",
    scale: float = 1.0,
    metrics: dict[str, float] | None = None,
    eval_metrics: dict[str, float] | None = None,
    status: str = "finished",
    experiment: str = "demo_cpu",
    label_space: str = "clustered",
    tasks: str = "weak_label",
    stage: str = "pretrain",
    seed: int = 0,
    init: str = "trained",
    group: str | None = None,
    devices: Any = 1,
    num_nodes: int = 1,
    started: str = "2024-01-01T00:00:00+00:00",
    ended: str | None = "2024-01-01T00:30:00+00:00",
    sweep_params: dict[str, Any] | None = None,
    config_extra: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    wandb_id: str | None = None,
) -> Path:
    """Write a run directory in the format of docs/ARCHITECTURE.md; returns its path."""
    model = {**_MODEL_DEFAULTS, **MODEL_CONFIGS[preset]}
    path = root / name
    (path / "eval").mkdir(parents=True, exist_ok=True)
    axes = {
        "experiment": experiment,
        "arch": model["name"],
        "model": model["name"],
        "family": model["family"],
        "scale": scale,
        "label_space": label_space,
        "tasks": tasks,
        "stage": stage,
        "img_size": 64,
        "seed": seed,
        "init": init,
    }
    run = {"run_name": name, "experiment": experiment, "status": status, "axes": axes, "started": started}
    if lineage is not None:
        run["lineage"] = lineage
    if wandb_id is not None:
        run["wandb_id"] = wandb_id
    if ended:
        run["ended"] = ended
    (path / "run.json").write_text(json.dumps(run))
    config = {
        "experiment": experiment,
        "run_name": name,
        "model": model,
        "trainer": {"devices": devices, "num_nodes": num_nodes, "accelerator": "cpu"},
        "logger": {"group": group, "wandb": True},
        "seed": seed,
    }
    for dotted, value in (config_extra or {}).items():  # e.g. {"trainer.max_steps": 40}
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if eval_metrics is not None:
        payload = {"metrics": eval_metrics, "dataset": "fashion_mnist", "checkpoint": None, "config_hash": "x"}
        (path / "eval" / "fashion_mnist.json").write_text(json.dumps(payload))
    if sweep_params is not None:
        (path / "sweep.json").write_text(json.dumps({"sweep": group or experiment, "params": sweep_params}))
    return path


# A stand-in for train.py: records its call, writes run.json like tracking.run_dir (running, then
# finished), and fails when FAKE_FAIL names its run.
FAKE_PROGRAM = r"""
import json, os, sys, time
from pathlib import Path

args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
run_dir = Path(args["output_dir"]) / args["run_name"]
previous = None
if (run_dir / "run.json").is_file():
    previous = json.loads((run_dir / "run.json").read_text()).get("status")
with open(Path(args["output_dir"]) / "calls.jsonl", "a") as log:
    log.write(json.dumps({"args": args, "previous": previous, "wandb_mode": os.environ.get("WANDB_MODE"),
                          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "run.json").write_text(json.dumps({"run_name": args["run_name"], "status": "running"}))
print("training", args["run_name"])
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
if os.environ.get("FAKE_FAIL") == args["run_name"]:
    sys.exit(3)
(run_dir / "run.json").write_text(json.dumps({"run_name": args["run_name"], "status": "finished"}))
"""


def write_fake_sweep(tmp_path: Path, values: list[str], method: str = "grid", style: str = "args_no_hyphens") -> Path:
    """A sweep file whose program is FAKE_PROGRAM; parameter ``model`` takes ``values``."""
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE_PROGRAM)
    sweep = {
        "name": "fake",
        "program": str(program),
        "method": method,
        "metric": {"name": "eval/x", "goal": "maximize"},
        "parameters": {"model": {"values": values}, "optim.lr": {"value": 0.001}},
        "command": ["${env}", "${interpreter}", "${program}", "${" + style + "}"],
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def read_calls(output_dir: Path) -> list[dict]:
    """The calls FAKE_PROGRAM recorded, in order."""
    path = output_dir / "calls.jsonl"
    if not path.is_file():
        return []
    return list(read_jsonl(path))  # split on "\n" only, as every JSONL reader in the repo
