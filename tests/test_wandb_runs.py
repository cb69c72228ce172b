"""One W&B run per training run (issue: W&B sweeps on a cluster), checked with W&B's own offline reader
(``wandb leet inspect``): offline folders of one id merge into one run whose history steps increase, a restart
begins after what is on disk, evaluations touch only the summary; and a killed rank is named as the first failure.
The sweep drill (benchmarks/sweep_drill.py) runs all of it through `wandb agent`'s launch path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_reliability import REPO, make_dataset, subprocess_env, train_args
from tracking.wandb_offline import next_step, read_offline_runs

# A W&B process: start (or resume) run "r1" offline in ./wandb, log `steps` rows at explicit steps, then finish or
# die like kill -9 (os._exit: W&B's writer is not flushed).
SEGMENT = r"""
import os, sys, json, wandb
steps, end, extra = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
run = wandb.init(project="p", id="r1", resume="allow", dir=".", mode="offline", config=extra.get("config"))
for s in steps:
    run.log({"loss": 1.0 / (s + 1)}, step=s)
run.summary.update(extra.get("summary", {}))
if end == "kill":  # once W&B has written part of it (its writer works in blocks, behind the training loop)
    import glob, time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(map(os.path.getsize, glob.glob(f"{run.dir}/../*.wandb"))) < 100_000:
        time.sleep(0.1)
    os._exit(9)
run.finish()
"""


def _segment(cwd: Path, steps, end: str = "finish", **extra) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own W&B service, as a new process has
    env["WANDB_SILENT"] = "true"
    proc = subprocess.run(
        [sys.executable, "-c", SEGMENT, json.dumps(list(steps)), end, json.dumps(extra)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == (9 if end == "kill" else 0), proc.stderr[-2000:]


@pytest.mark.slow
def test_offline_folders_of_one_id_merge_as_one_run_with_the_killed_tail_left_to_the_restart(tmp_path):
    _segment(tmp_path, range(0, 2000), "kill", config={"lr": 0.1, "science": {"optim.lr": 0.1}})
    on_disk = next_step("r1", tmp_path / "wandb")
    assert 0 < on_disk < 2000  # W&B wrote the early rows in blocks; the tail died with the process
    _segment(tmp_path, range(on_disk, 2100), "finish")  # the restart begins where the disk ends
    _segment(tmp_path, [], "finish", summary={"eval/x": 0.5})  # evaluate.py: summary only
    runs = read_offline_runs(tmp_path / "wandb")
    assert list(runs) == ["r1"]
    run = runs["r1"]
    assert len(run.segments) == 3 and run.state == "finished"
    assert run.steps == list(range(2100)) and run.monotonic
    assert run.config["lr"] == 0.1 and run.summary["eval/x"] == 0.5 and run.summary["loss"] == pytest.approx(1 / 2100)
    # Without the rule, a restart from its checkpoint repeats steps the server already keys: not monotonic.
    _segment(tmp_path, range(1500, 1600), "finish")
    assert not read_offline_runs(tmp_path / "wandb")["r1"].monotonic


def test_step_keyed_logger_drops_what_an_earlier_start_sent_and_records_each_new_step(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from configs.compose import compose
    from tracking.run_dir import RunDir
    from tracking.wandb_logger import build_wandb_logger

    monkeypatch.chdir(tmp_path)
    cfg = compose(["experiment=demo_cpu", f"output_dir={tmp_path}", "run_name=r", "logger.mode=offline"])
    run_dir = RunDir.for_config(cfg)
    run_dir.start(cfg)
    run_dir.update(wandb_id="abc", wandb_next_step=5)
    logger = build_wandb_logger(cfg, run_dir)
    sent = []
    # The logic under test is ours (W&B's writer is tested above): a stand-in run, so no W&B state is created here.
    logger._experiment = SimpleNamespace(log=lambda row, step: sent.append((step, row)))
    for step in (3, 4, 5, 5, 6):
        logger.log_metrics({"train/loss": float(step)}, step=step)
    assert [s for s, _ in sent] == [5, 5, 6] and logger.dropped == 2
    assert sent[0][1] == {"train/loss": 5.0, "trainer/global_step": 5}
    assert run_dir.read_run()["wandb_next_step"] == 6
    run_dir.finish()


def _ranks_of(token: str) -> dict[int, int]:
    """{local rank: pid} of the processes whose environment holds ``token`` (this test's torchrun workers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(
                item.split("=", 1) for item in (entry / "environ").read_bytes().decode().split("\0") if "=" in item
            )
        except (OSError, ValueError):
            continue
        if env.get("DRILL_TOKEN") == token and "LOCAL_RANK" in env and "TORCHELASTIC_RUN_ID" in env:
            parent = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[1]
            # A rank's parent is torchrun; its DataLoader workers (same environment) are children of the rank.
            if b"train.py" in (entry / "cmdline").read_bytes() and b"torch.distributed.run" in _cmdline(parent):
                found[int(env["LOCAL_RANK"])] = int(entry.name)
    return found


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_kill_9_of_rank_1_is_recorded_as_the_first_failure(tmp_path):
    """torchrun starts 2 gloo ranks; rank 1 is killed with kill -9 mid-training; torchrun then stops rank 0 with
    SIGTERM. run.json must blame rank 1, not the SIGTERM consequences rank 0 sees."""
    data = make_dataset(tmp_path / "data", n_train=160, n_val=16, shard_size=16, scales=(1.0,), img_size=16)
    token = f"t{os.getpid()}{time.time_ns()}"
    args = train_args(
        data["manifest"],
        tmp_path / "runs",
        "ddp",
        "trainer=ddp_cpu",
        "trainer.max_steps=400",
        "data.num_workers=1",
        f"data.record_keys={tmp_path / 'keys.jsonl'}",
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29671"]
    proc = subprocess.Popen(
        [*command, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=subprocess_env(DRILL_TOKEN=token),
        stdout=(tmp_path / "log.txt").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (tmp_path / "keys.jsonl").is_file():
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)  # a few steps in, both ranks in the loop
        ranks = _ranks_of(token)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    record = json.loads((tmp_path / "runs" / "ddp" / "run.json").read_text())
    assert proc.returncode != 0 and record["status"] == "failed", record
    assert record["error"].startswith(f"rank 1 (pid {ranks[1]}"), record["error"]
    assert "died without an error" in record["error"]


@pytest.mark.slow
def test_sweep_drill_under_wandb_agents_launch_path(tmp_path):
    """benchmarks/sweep_drill.py in its tiny form: 4 runs launched as `wandb agent` launches them, one killed twice
    and resumed, evaluate.py on each; every check of the drill must pass."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from sweep_drill import drill
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    data = make_dataset(tmp_path / "data", n_train=96, n_val=16, shard_size=16, scales=(1.0,), img_size=16)
    result = drill(tmp_path / "drill", data["manifest"], steps=12, tiny=True)
    assert result["checks"] == {name: True for name in result["checks"]}, json.dumps(result, indent=1)
    assert len(result["checks"]) == 6 and result["kills"] == 2
    killed = result["runs"][1]
    assert killed["segments"] == ["crashed", "crashed", "finished"] and killed["global_step"] == 12
    assert {r["lr"] for r in result["runs"]} == {1e-3, 3e-4}


@pytest.mark.slow
def test_lineage_in_run_json_and_wandb_and_artifacts_when_asked(tmp_path):
    """run.json and the W&B config carry the data fingerprint, git commit, world size and global batch; with
    logger.log_artifacts the final checkpoint and the manifest are W&B artifacts (offline: in the run's folder)."""
    import hashlib

    from tests.fixtures_reliability import run_train

    data = make_dataset(tmp_path / "data", n_train=32, n_val=8, shard_size=16, scales=(1.0,), img_size=16)
    args = [
        a for a in train_args(data["manifest"], tmp_path / "runs", "lin", "trainer.max_steps=3") if a != "logger=none"
    ]
    rc, out = run_train([*args, "logger=wandb", "logger.log_artifacts=true"], tmp_path / "log.txt", cwd=tmp_path)
    assert rc == 0, out[-3000:]
    record = json.loads((tmp_path / "runs" / "lin" / "run.json").read_text())
    lineage = record["lineage"]
    manifest_hash = hashlib.sha256(Path(data["manifest"]).read_bytes()).hexdigest()[:16]
    assert lineage["data_fingerprint"] == manifest_hash and lineage["world_size"] == 1
    assert lineage["global_batch"] == 8 and lineage["git_commit"]
    run = read_offline_runs(tmp_path / "wandb")[record["wandb_id"]]  # ./wandb of the run's working directory
    assert run.config["lineage"] == lineage and run.config["science"]["optim.lr"] is None
    artifacts = [r["artifact"] for s in run.segments for r in s.records if r.get("type") == "artifact"]
    assert sorted((a["type"], a["name"]) for a in artifacts) == [
        ("dataset", f"data-{manifest_hash}"),
        ("model", f"model-{record['wandb_id']}"),
    ]
