"""The local sweep runner: runs a fake training program, skips finished runs, re-runs half-done ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies.sweep import load_sweep, main, plan, run_status
from tests.fixtures_studies import read_calls, write_fake_sweep


def _write_status(run_dir: Path, status: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"run_name": run_dir.name, "status": status}))


def test_runner_resumes_a_half_done_sweep_without_rerunning_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sweep_file = write_fake_sweep(tmp_path, ["a", "b", "c"])
    out = tmp_path / "runs"
    _write_status(out / "fake-a", "finished")  # done before the interruption
    _write_status(out / "fake-b", "running")  # killed mid-run: must be started again
    (out / "fake-b" / "checkpoints").mkdir()
    (out / "fake-b" / "checkpoints" / "last.ckpt").write_text("step 50")

    assert main([str(sweep_file), "--output-dir", str(out)]) == 0
    calls = read_calls(out)
    assert [c["args"]["run_name"] for c in calls] == ["fake-b", "fake-c"]
    assert calls[0]["previous"] == "running" and calls[1]["previous"] is None
    for call in calls:  # the runner's items and the sweep's parameters reach the program
        assert call["args"]["logger.group"] == "fake"
        assert call["args"]["output_dir"] == str(out)
        assert call["args"]["optim.lr"] == "0.001"
        assert call["wandb_mode"] == "offline"  # W&B offline by default
    assert (out / "fake-b" / "checkpoints" / "last.ckpt").read_text() == "step 50"  # kept for resume=auto
    assert all(run_status(out / f"fake-{m}") == "finished" for m in "abc")
    text = capsys.readouterr().out
    assert "skip fake-a: finished earlier" in text
    assert "sweep fake: 3 runs (1 skipped, 2 finished)" in text
    summary = json.loads((out / "fake.sweep.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["skipped", "finished", "finished"]
    recorded = json.loads((out / "fake-c" / "sweep.json").read_text())
    assert recorded["params"] == {"model": "c", "optim.lr": 0.001} and recorded["sweep"] == "fake"

    capsys.readouterr()
    assert main([str(sweep_file), "--output-dir", str(out)]) == 0  # all finished: nothing runs again
    assert len(read_calls(out)) == 2
    assert "overrides differ" not in capsys.readouterr().out
    assert main([str(sweep_file), "--output-dir", str(out), "--", "seed=3"]) == 0  # a changed plan: warned
    assert len(read_calls(out)) == 2
    assert "skip fake-c: finished, but its config differs from this plan" in capsys.readouterr().out
    # --rerun redoes the changed runs (fake-a holds no record of its overrides: kept); their old directories are
    # moved aside, never deleted.
    assert main([str(sweep_file), "--output-dir", str(out), "--rerun", "--", "seed=3"]) == 0
    assert [c["args"]["run_name"] for c in read_calls(out)[2:]] == ["fake-b", "fake-c"]
    assert all(c["args"]["seed"] == "3" and c["previous"] is None for c in read_calls(out)[2:])
    replaced = sorted(p.name.rsplit("-", 1)[0] for p in (out / ".replaced").iterdir())
    assert replaced == ["fake-b", "fake-c"]


def test_failed_run_is_reported_and_rerun_next_time(tmp_path, monkeypatch, capsys):
    sweep_file = write_fake_sweep(tmp_path, ["a", "b"])
    out = tmp_path / "runs"
    monkeypatch.setenv("FAKE_FAIL", "fake-a")
    assert main([str(sweep_file), "--output-dir", str(out), "--wandb-mode", "disabled"]) == 1
    text = capsys.readouterr().out
    assert "failed fake-a" in text and "exit code 3" in text
    # run.json still says "running" but its process is gone: the run counts as crashed, and is run again.
    assert run_status(out / "fake-a") == "crashed" and run_status(out / "fake-b") == "finished"
    assert read_calls(out)[0]["wandb_mode"] == "disabled"

    monkeypatch.delenv("FAKE_FAIL")
    assert main([str(sweep_file), "--output-dir", str(out)]) == 0
    assert [c["args"]["run_name"] for c in read_calls(out)] == ["fake-a", "fake-b", "fake-a"]


def test_fail_fast_starts_no_new_run(tmp_path, monkeypatch):
    sweep_file = write_fake_sweep(tmp_path, ["a", "b", "c"])
    out = tmp_path / "runs"
    monkeypatch.setenv("FAKE_FAIL", "fake-a")
    assert main([str(sweep_file), "--output-dir", str(out), "--fail-fast"]) == 1
    assert [c["args"]["run_name"] for c in read_calls(out)] == ["fake-a"]
    statuses = [r["status"] for r in json.loads((out / "fake.sweep.json").read_text())["runs"]]
    assert statuses == ["failed", "not started", "not started"]


def test_dry_run_prints_the_runs_and_runs_nothing(tmp_path, capsys):
    sweep_file = write_fake_sweep(tmp_path, ["a", "b"])
    out = tmp_path / "runs"
    _write_status(out / "fake-a", "finished")
    assert main([str(sweep_file), "--output-dir", str(out), "--dry-run", "--", "seed=3"]) == 0
    text = capsys.readouterr().out
    assert "2 runs, method grid" in text
    assert "skip     fake-a: finished earlier" in text and "run      fake-b: new" in text
    assert "model=b optim.lr=0.001 logger.group=fake run_name=fake-b" in text and "seed=3" in text
    assert read_calls(out) == []


@pytest.mark.slow
def test_parallel_runs_with_gpu_slots_and_log_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.3")
    sweep_file = write_fake_sweep(tmp_path, ["a", "b", "c", "d"], style="args")
    out = tmp_path / "runs"
    assert main([str(sweep_file), "--output-dir", str(out), "--parallel", "2", "--gpus", "0,1,2,3"]) == 0
    calls = read_calls(out)
    assert sorted(c["args"]["run_name"] for c in calls) == ["fake-a", "fake-b", "fake-c", "fake-d"]
    assert {c["cuda"] for c in calls} <= {"0,1", "2,3"}  # each run holds one slot's devices
    for m in "abcd":
        assert "training fake-" + m in (out / f"fake-{m}" / "sweep.log").read_text()


def test_shards_split_the_runs_between_agents(tmp_path):
    sweep = load_sweep(write_fake_sweep(tmp_path, ["a", "b", "c", "d", "e"]))
    everything = [r.name for r in plan(sweep)]
    shards = [[r.name for r in plan(sweep, shard=(i, 2))] for i in range(2)]
    assert shards == [everything[0::2], everything[1::2]]
    assert main([str(tmp_path / "fake.yaml"), "--shard", "2/2", "--dry-run"]) == 2
    assert main([str(tmp_path / "fake.yaml"), "--parallel", "2", "--gpus", "0,1,2", "--output-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_ctrl_c_writes_the_summary_and_exits_130_without_a_traceback(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep_file = write_fake_sweep(tmp_path, ["a", "b", "c"])
    out = tmp_path / "runs"
    env = {**os.environ, "FAKE_SLEEP": "30"}
    runner = Path(__file__).resolve().parent.parent / "run_sweep.py"
    proc = subprocess.Popen(
        [sys.executable, str(runner), str(sweep_file), "--output-dir", str(out)],
        cwd=runner.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell without job control (CI, `cmd &`) starts its background jobs with SIGINT ignored, and the runner would
        # inherit that: give it the default a terminal gives, so the Ctrl-C below reaches it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not read_calls(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the runner and its run
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "sweep.py" not in stderr and "concurrent/futures" not in stderr  # no traceback of the runner
    statuses = [r["status"] for r in json.loads((out / "fake.sweep.json").read_text())["runs"]]
    assert statuses == ["interrupted", "not started", "not started"], statuses
    assert "sweep fake: 3 runs" in stdout
