"""Sweep drill: a W&B sweep run the way `wandb agent` runs it, with kills, resumes and evaluations, then checked
with W&B's own offline reader. No W&B server is needed (runs log offline; a real agent's runs log online).

    python benchmarks/sweep_drill.py --out /tmp/drill                                   # on the mined demo data
    python benchmarks/sweep_drill.py --out /tmp/drill --manifest data/x/manifest.json --steps 12

What it does:
1. Writes a 4-run grid sweep (``optim.lr`` x ``seed``: runs that the axes alone cannot tell apart) and launches
   each run as `wandb agent` does: the sweep's ``command:`` with ``${args_no_hyphens}`` expanded by wandb's own
   ``create_sweep_command_args``, no run name, and the agent's environment (WANDB_SWEEP_ID, WANDB_RUN_ID,
   WANDB_SWEEP_PARAM_PATH, WANDB_PROJECT).
2. Kills run 2 with kill -9 twice (two steps after its first and its second checkpoint) and starts it again each time with
   the same environment, as a requeued agent run is.
3. Runs ``evaluate.py eval.checkpoint=<run dir>`` on every run (its results go to the run's W&B summary).
4. Checks: every run has its own directory and trained its own steps (global step = max steps, its own lr in its
   config); every W&B run is one run (its folders merged by id) whose history steps strictly increase; and the
   tables built from ``runs/`` and from the offline W&B folders (W&B's reader, merged per id as the server does)
   are identical.

Prints one line per run and the checks; writes ``<out>/sweep_drill.json``. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SWEEP_ID = "drill0sw"
KILLED_RUN = 1  # the second run of the grid


def sweep_config(manifest: str, steps: int, tiny: bool) -> dict[str, Any]:
    """The drill's sweep file: 2 learning rates x 2 seeds; everything else fixed by ``value:`` parameters."""
    fixed: dict[str, Any] = {
        "experiment": "demo_cpu",
        "model": "vit_demo",
        "data.weak_label.manifest": manifest,
        "trainer.max_steps": steps,
        "trainer.checkpoint_every_n_steps": 3,
        "trainer.log_every_n_steps": 1,
        "trainer.val_check_interval": steps,
        "eval.datasets": "[weak_label_val]",
        "eval.loo_queries": 16,
        "eval.linear_probe.epochs": 5,
        "data.num_workers": 0,
        "data.record_keys": "keys.jsonl",  # the batches each run consumed: when to kill (runs go one at a time)
    }
    if tiny:  # a one-block ViT at 16 px: seconds per run on one core
        fixed.update({"data.img_size": 16, "model.kwargs.depth": 1, "data.batch_size": 8, "optim.warmup_steps": 2})
    params = {k: {"value": v} for k, v in fixed.items()}
    params.update({"optim.lr": {"values": [1e-3, 3e-4]}, "seed": {"values": [0, 1]}})
    return {
        "name": "drill",
        "program": "train.py",
        "method": "grid",
        "metric": {"name": "eval/weak_label_val/backbone/float/mAP@10", "goal": "maximize"},
        "parameters": params,
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    }


def agent_command(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command `wandb agent` runs for ``params`` (wandb's macro expansion; no runner items)."""
    from studies.sweep import build_command

    return build_command(config, params, python=sys.executable)


def agent_env(out: Path, run_id: str, params: dict[str, Any]) -> dict[str, str]:
    """The environment `wandb agent` gives a run (wandb/wandb_agent.py), offline here: no server."""
    param_path = out / f"sweep-params-{run_id}.yaml"
    param_path.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # each run starts its own W&B service
    return {
        **inherited,
        "WANDB_SWEEP_ID": SWEEP_ID,
        "WANDB_RUN_ID": run_id,
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
        "WANDB_PROJECT": "billion-scale-vit",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


def run_dir_of(out: Path, run_id: str) -> Path:
    found = [p for p in (out / "runs").glob(f"*-{SWEEP_ID}-{run_id}") if p.is_dir()]
    if len(found) != 1:
        raise AssertionError(f"run {run_id}: expected one directory, found {found}")
    return found[0]


def launch(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=str(log.parent), env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_at_line(proc: subprocess.Popen, keys: Path, lines: int, run_id: str, timeout: float) -> None:
    """kill -9 ``proc`` (its whole session) as soon as its run has consumed ``lines`` training batches (the lines of
    its ``data.record_keys`` file, which a restart first cuts back to its checkpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (keys.parent / "drill.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"run {run_id} ended (rc {proc.returncode}) before it could be killed:\n{tail}")
        try:
            with keys.open("rb") as f:
                seen = sum(1 for line in f if line.endswith(b"\n"))
        except FileNotFoundError:
            seen = 0
        if seen >= lines:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"run {run_id}: fewer than {lines} batches in {timeout} s")


def tables_of(records: list[dict], out_dir: Path) -> dict[str, str]:
    from studies.report import write_report

    report = write_report(records, out_dir, metric=None, title="drill")
    return {t.name: t.to_markdown() for t in report.tables}


def drill(out: Path, manifest: str, steps: int, tiny: bool, timeout: float = 600) -> dict[str, Any]:
    """Run the drill (see the module docstring); returns its figures and checks."""
    if steps < 12:
        raise ValueError("--steps must be at least 12: the killed run is killed at steps 5 and 8, before its end")
    from studies.collect import collect_local, collect_wandb_offline
    from studies.sweep import expand
    from tracking.wandb_offline import read_offline_runs

    out.mkdir(parents=True, exist_ok=True)
    for link in ("train.py", "evaluate.py"):  # the agent runs `python train.py` from the working directory
        if not (out / link).exists():
            (out / link).symlink_to(REPO / link)
    config = sweep_config(manifest, steps, tiny)
    (out / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    runs = expand(config)
    log = out / "drill.log"
    started = time.monotonic()
    run_ids = [f"drillrun{i}" for i in range(len(runs))]
    kills = 0
    for i, (run_id, params) in enumerate(zip(run_ids, runs)):
        command = [*agent_command(config, params), "output_dir=runs"]
        env = agent_env(out, run_id, params)
        if i == KILLED_RUN:
            # Killed twice, two steps past a new checkpoint (steps 3 and 6: checkpoints every 3), started again each
            # time; the rows the killed processes sent after their checkpoint are trained and logged again.
            (out / "keys.jsonl").unlink(missing_ok=True)  # the earlier runs' batches
            for lines in (5, 8):
                kill_at_line(launch(command, env, log), out / "keys.jsonl", lines, run_id, timeout)
                kills += 1
        proc = launch(command, env, log)
        if proc.wait(timeout=timeout) != 0:
            raise AssertionError(
                f"run {run_id} failed (rc {proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
            )
        evaluation = launch([sys.executable, "evaluate.py", f"eval.checkpoint={run_dir_of(out, run_id)}"], env, log)
        if evaluation.wait(timeout=timeout) != 0:
            raise AssertionError(f"evaluate.py on run {run_id} failed; see {log}")
    seconds = time.monotonic() - started

    offline = read_offline_runs(out / "wandb")
    rows, checks = [], {}
    for run_id in run_ids:
        path = run_dir_of(out, run_id)
        record = json.loads((path / "run.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        w = offline.get(record.get("wandb_id"))
        rows.append(
            {
                "run": path.name,
                "wandb_id": record.get("wandb_id"),
                "lr": cfg["optim"]["lr"],
                "seed": cfg["seed"],
                "global_step": metrics.get("trainer/global_step"),
                "segments": [s.get("status") for s in record.get("segments", [])],
                "wandb_folders": len(w.segments) if w else 0,
                "wandb_steps": len(w.steps) if w else 0,
                "wandb_monotonic": bool(w and w.monotonic),
                "wandb_state": w.state if w else None,
            }
        )
    checks["distinct_run_directories"] = len({r["run"] for r in rows}) == len(runs)
    checks["each_run_trained_its_own_steps"] = all(
        r["global_step"] == steps and r["lr"] == p["optim.lr"] and r["seed"] == p["seed"] for r, p in zip(rows, runs)
    )
    checks["killed_run_has_three_segments"] = rows[KILLED_RUN]["segments"] == ["crashed", "crashed", "finished"]
    checks["one_wandb_run_per_training_run"] = sorted(offline) == sorted(r["wandb_id"] for r in rows)
    checks["wandb_steps_monotonic"] = all(r["wandb_monotonic"] and r["wandb_steps"] > 0 for r in rows)
    local = tables_of(collect_local(out / "runs"), out / "tables_runs")
    from_wandb = tables_of(collect_wandb_offline(out / "wandb"), out / "tables_wandb")
    checks["tables_identical"] = bool(local) and local == from_wandb
    result = {
        "runs": rows,
        "checks": checks,
        "kills": kills,
        "seconds": round(seconds, 1),
        "tables": sorted(local),
        "steps": steps,
    }
    (out / "sweep_drill.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="an empty working folder (runs/, wandb/ land here)")
    parser.add_argument("--manifest", default=str(REPO / "data" / "openclipart" / "manifest.json"))
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (checkpoints every 3; >= 12)")
    parser.add_argument("--full-size", action="store_true", help="the demo's model and resolution, not a tiny ViT")
    args = parser.parse_args(argv)
    result = drill(args.out.resolve(), str(Path(args.manifest).resolve()), args.steps, tiny=not args.full_size)
    for row in result["runs"]:
        print(
            f"{row['run']}: lr {row['lr']:g} seed {row['seed']} step {row['global_step']} segments {row['segments']} "
            f"W&B {row['wandb_id']}: {row['wandb_folders']} folders, {row['wandb_steps']} rows, "
            f"monotonic {row['wandb_monotonic']}, {row['wandb_state']}"
        )
    for name, ok in result["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"{result['kills']} kills, {result['seconds']} s; tables {result['tables']}; {args.out / 'sweep_drill.json'}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
