"""A run's identity (issue: W&B sweeps on a cluster): every run of every shipped sweep gets its own directory, also
under `wandb agent`; a directory of another config or of a live process is refused, never silently resumed; a dead
"running" run is reported crashed; tables average only replicates and name the runs behind each cell."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from configs.compose import compose, save_config, to_dict
from studies.collect import collect_local, dedupe
from studies.sweep import command_args, expand, load_sweep
from studies.tables import MISSING, arch_scale_table, choose_metric
from tests.fixtures_studies import make_run_dir
from tracking.identity import config_fingerprint, science
from tracking.run_dir import RunDir, RunIdentityError, RunInUseError, effective_status

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
BB = "eval/fashion_mnist/backbone/float/mAP@10"


def _agent_runs(path: Path) -> list[dict]:
    """The runs `wandb agent` would launch for a sweep file (random search: its run_cap draws, else 4)."""
    sweep = load_sweep(path)
    return expand(sweep.config, count=None if sweep.config["method"] == "grid" else 4, seed=0)


def _agent_config(params: dict, output_dir: Path):
    # Exactly what the agent passes: ${args_no_hyphens}, no run_name (the runner's items are absent).
    return compose(command_args(params)["args_no_hyphens"] + [f"output_dir={output_dir}"], hardware=False)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_run_of_every_shipped_sweep_gets_its_own_directory(path, tmp_path, monkeypatch):
    runs = _agent_runs(path)
    # Without an agent: named by the axes plus the config fingerprint.
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    local = [RunDir.for_config(_agent_config(p, tmp_path)).path for p in runs]
    assert len(set(local)) == len(runs), f"{path.name}: {len(runs)} runs -> {len(set(local))} directories"
    # Under `wandb agent`: the environment the agent sets (one run id per run) names them.
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p1d")
    agent = []
    for i, params in enumerate(runs):
        monkeypatch.setenv("WANDB_RUN_ID", f"run{i:05d}")
        agent.append(RunDir.for_config(_agent_config(params, tmp_path)).path)
    assert len(set(agent)) == len(runs)
    assert all(p.name.endswith(f"-sw33p1d-run{i:05d}") for i, p in enumerate(agent))


def test_fingerprint_ignores_hardware_and_survives_the_saved_config(tmp_path):
    base = ["experiment=demo_cpu", "model=vit_demo"]
    cfg = compose(base, hardware=False)
    moved = compose([*base, "trainer.devices=4", "data.num_workers=7", "output_dir=/elsewhere", "logger.mode=online"])
    assert config_fingerprint(to_dict(cfg)) == config_fingerprint(to_dict(moved))
    for change in ("optim.lr=3e-4", "optim.weight_decay=0.1", "tasks.embedding.enabled=true", "eval.knn_k=5"):
        assert config_fingerprint(to_dict(compose([*base, change]))) != config_fingerprint(to_dict(cfg)), change
    save_config(cfg, tmp_path / "config.yaml")  # what a run directory holds
    assert science(yaml.safe_load((tmp_path / "config.yaml").read_text())) == science(to_dict(cfg))


def test_resume_refuses_another_config_naming_the_keys_but_accepts_other_hardware(tmp_path):
    common = ["experiment=demo_cpu", f"output_dir={tmp_path}", "run_name=same"]
    first = RunDir.for_config(compose([*common, "optim.lr=1e-3"]))
    first.start(compose([*common, "optim.lr=1e-3"]))
    first.finish("failed", error="killed")
    with pytest.raises(RunIdentityError, match=r"optim\.lr: 0\.001 -> 0\.0003"):
        RunDir(first.path).start(compose([*common, "optim.lr=3e-4"]))
    assert yaml.safe_load((first.path / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # untouched
    # The same science on other hardware continues the run; so does an explicit checkpoint under a changed config.
    again = RunDir(first.path)
    record = again.start(compose([*common, "optim.lr=1e-3", "trainer.devices=2", "data.num_workers=3"]))
    assert record["restarts"] == 1 and [s["status"] for s in record["segments"][:-1]] == ["failed"]
    again.finish()
    RunDir(first.path).start(compose([*common, "optim.lr=3e-4", "resume=/some/last.ckpt"]))


def test_a_dead_running_run_is_crashed_and_a_live_one_is_refused(tmp_path):
    cfg = compose(["experiment=demo_cpu", f"output_dir={tmp_path}", "run_name=r"])
    run = RunDir.for_config(cfg)
    run.start(cfg)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Another live process on this host holds the directory: refused.
        record = json.loads(run.run_json.read_text())
        record.update(pid=sleeper.pid, pid_start=None)
        run.run_json.write_text(json.dumps(record))
        assert effective_status(record) == "running"
        with pytest.raises(RunInUseError, match=f"in use by pid {sleeper.pid}"):
            RunDir(run.path).start(cfg)
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone (kill -9): crashed, and the next start records that segment as crashed.
    assert effective_status(record) == "crashed"
    record = RunDir(run.path).start(cfg)
    assert record["segments"][0]["status"] == "crashed" and record["status"] == "running"
    # On another host only the heartbeat tells: fresh is running, five minutes old is crashed.
    other = {"status": "running", "host": "elsewhere", "pid": 1, "heartbeat": record["heartbeat"]}
    assert effective_status(other) == "running"
    assert effective_status({**other, "heartbeat": "2020-01-01T00:00:00+00:00"}) == "crashed"


def test_two_corpora_at_different_steps_are_never_averaged(tmp_path):
    """The issue's case: a 300-image corpus at 40 steps and a 100-image corpus at 20 steps, same axes, seeds 0
    and 1, came out as one cell, n=2. Replicates (seed alone differs) still average."""
    root = tmp_path / "runs"
    make_run_dir(root, "big-s0", seed=0, eval_metrics={BB: 0.40}, config_extra={"trainer.max_steps": 40},
                 lineage={"data_fingerprint": "a" * 16, "world_size": 1, "global_batch": 32})  # fmt: skip
    make_run_dir(root, "big-s1", seed=1, eval_metrics={BB: 0.44}, config_extra={"trainer.max_steps": 40},
                 lineage={"data_fingerprint": "a" * 16, "world_size": 1, "global_batch": 32})  # fmt: skip
    make_run_dir(root, "small-s1", seed=1, eval_metrics={BB: 0.20}, config_extra={"trainer.max_steps": 20},
                 lineage={"data_fingerprint": "b" * 16, "world_size": 1, "global_batch": 32})  # fmt: skip
    records = collect_local(root)
    table = arch_scale_table(records, BB)
    cells = {label: cells[0] for label, cells in table.rows}
    assert len(cells) == 2, cells
    big = next(c for label, c in cells.items() if "trainer.max_steps=40" in label and "data aaaaaaaa" in label)
    small = next(c for label, c in cells.items() if "trainer.max_steps=20" in label and "data bbbbbbbb" in label)
    assert big.n == 2 and big.mean == pytest.approx(0.42) and small.n == 1 and small.mean == pytest.approx(0.20)
    members = list(csv.DictReader(io.StringIO(table.runs_csv())))
    assert sorted((m["run_name"], m["value"]) for m in members) == [
        ("big-s0", "0.4"),
        ("big-s1", "0.44"),
        ("small-s1", "0.2"),
    ]
    assert len({m["replicate"] for m in members if m["run_name"].startswith("big")}) == 1


def test_world_size_alone_splits_a_cell(tmp_path):
    root = tmp_path / "runs"
    for seed, world in ((0, 1), (1, 8)):
        lineage = {"data_fingerprint": "c" * 16, "world_size": world, "global_batch": 32 * world}
        make_run_dir(root, f"w{world}", seed=seed, eval_metrics={BB: 0.3 + seed}, lineage=lineage)
    labels = [label for label, _ in arch_scale_table(collect_local(root), BB).rows]
    assert len(labels) == 2 and any("world_size=8" in label for label in labels), labels


def test_a_missing_metric_is_a_marked_gap_not_another_metric(tmp_path):
    root = tmp_path / "runs"
    val = {"val/weak_label/mAP": 0.1}
    for seed in (0, 1, 2):
        make_run_dir(root, f"ok{seed}", seed=seed, metrics=val, eval_metrics={BB: 0.4})
    make_run_dir(root, "eval-failed", seed=3, scale=0.25, metrics=val)  # its evaluation never ran
    records = collect_local(root)
    assert choose_metric(records) == BB  # not val/weak_label/mAP, which all four runs hold
    table = arch_scale_table(records, BB)
    assert table.cell(table.rows[0][0], "0.25") is None and MISSING in table.to_markdown()
    assert any("eval-failed" in note and "gap" in note for note in table.notes)


def test_a_run_found_locally_and_in_wandb_counts_once(tmp_path):
    make_run_dir(tmp_path / "runs", "a", wandb_id="abc12345", eval_metrics={BB: 0.4})
    local = collect_local(tmp_path / "runs")
    synced = [{**local[0], "source": "wandb"}, {**local[0], "wandb_id": "other", "source": "wandb"}]
    assert [(r["source"], r["wandb_id"]) for r in dedupe([*local, *synced])] == [
        ("local", "abc12345"),
        ("wandb", "other"),
    ]


def test_agent_sets_online_mode_and_its_ids(monkeypatch):
    from tracking.wandb_logger import wandb_mode

    cfg = compose(["experiment=demo_cpu"])
    for var in ("WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert wandb_mode(cfg) == "offline"
    monkeypatch.setenv("WANDB_SWEEP_ID", "s")
    monkeypatch.setenv("WANDB_RUN_ID", "r")
    assert wandb_mode(cfg) == "online"  # a sweep's runs must reach the server that runs the sweep
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(cfg) == "offline"
    assert os.environ["WANDB_RUN_ID"] == "r"


def test_readme_wandb_lines_are_what_a_user_types():
    """The README's `wandb sweep` / `wandb agent` / `make_report.py --wandb` lines, checked against W&B's CLI and
    the repo: the sweep file validates, the project is the one train.py logs to, make_report parses its flags."""
    import re
    import shlex

    from configs.schema import LoggerConfig
    from studies.report import build_parser

    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.split("\n")]
    sweep = next(shlex.split(ln) for ln in lines if ln.startswith("wandb sweep "))
    agent = next(shlex.split(ln) for ln in lines if ln.startswith("wandb agent "))
    report = next(shlex.split(ln) for ln in lines if ln.startswith("python make_report.py --wandb "))
    help_text = subprocess.run(
        [sys.executable, "-m", "wandb", "sweep", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    project = sweep[sweep.index("--project") + 1]
    assert "--project" in help_text and project == LoggerConfig().project
    load_sweep(ROOT / sweep[-1])  # exists and validates against W&B's schema
    assert agent[2] == f"ENTITY/{project}/SWEEP_ID"
    args = build_parser().parse_args(report[2:])
    assert args.wandb == f"ENTITY/{project}" and args.sweep == "SWEEP_ID"
