"""A run resumed on another world size (issue 25): 2 gloo ranks (torchrun) killed after their first checkpoint, resumed
on 1 rank. The optimizer follows ``optim.on_world_size_change`` and the LR W&B records is the one the optimizer used
(LearningRateMonitor reads the optimizer's param groups); each-sample-once data (``resampled=false``) continues the
interrupted epoch on the new world size, every sample once."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest

from lit_modules.checkpoints import read_checkpoint_meta
from lit_modules.optim import TopologyChangeError, plan_topology_change, resolve_lr, warmup_cosine
from tests.fixtures_reliability import REPO, kill_when, make_dataset, run_train, subprocess_env, train_args
from tracking.sample_keys import read_records
from tracking.wandb_offline import read_offline_runs

STEPS, EVERY, WARMUP, MIN_LR = 16, 4, 5, 1e-6  # TINY's warmup; the cosine ends at step 16
COMMON = [
    f"trainer.max_steps={STEPS}",
    f"trainer.checkpoint_every_n_steps={EVERY}",
    "data.weak_label.resampled=false",
    "trainer.limit_val_batches=1",
    f"optim.min_lr={MIN_LR}",
]
OPTIM = {"name": "adamw", "lr_base": 1e-3, "lr_base_size": 4096}  # configs/optim/adamw.yaml + demo_cpu


def rule_lr(global_batch: int, step: int) -> float:
    """The LR of optimizer step ``step`` by the repo's rule: lr_base scaled by the global batch, warmup, cosine."""
    peak, _ = resolve_lr(OPTIM, global_batch)
    return peak * warmup_cosine(step, WARMUP, STEPS, MIN_LR / peak)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A 2-rank run (global batch 2 x 8 = 16) SIGKILLed after its first checkpoint; returns data and checkpoint copy."""
    tmp = tmp_path_factory.mktemp("topology")
    data = make_dataset(tmp / "data", n_train=96, n_val=8, shard_size=8, scales=(1.0,), img_size=16)
    keys = tmp / "keys.jsonl"
    args = train_args(data["manifest"], tmp / "runs", "two", "trainer=ddp_cpu", *COMMON, f"data.record_keys={keys}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29683"]
    proc = subprocess.Popen(
        [*command, str(REPO / "train.py"), *args],
        cwd=tmp,
        env=subprocess_env(),
        stdout=(tmp / "two.txt").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    kill_when(proc, keys, EVERY + 2)  # rank 0 recorded step 6: last.ckpt is step 4's (or 8's on a slow machine)
    ckpt = tmp / "step4.ckpt"
    shutil.copy(tmp / "runs" / "two" / "checkpoints" / "last.ckpt", ckpt)
    return {"data": data, "ckpt": ckpt, "tmp": tmp}


def _resume_on_one_rank(killed, name: str, *overrides: str) -> tuple[str, object]:
    tmp = killed["tmp"]
    args = train_args(
        killed["data"]["manifest"], tmp / "runs", name, "trainer=cpu", *COMMON, "logger=wandb", *overrides
    )
    rc, out = run_train([*args, f"resume={killed['ckpt']}"], tmp / f"{name}.txt", cwd=tmp)
    assert rc == 0, out[-3000:]
    (run,) = [r for r in read_offline_runs(tmp / "wandb").values() if r.name == name or name in r.name]
    return out, run


def _logged_lr(run) -> dict[int, float]:
    rows = {}
    for row in run.history:
        key = next((k for k in row if k.startswith("lr-")), None)
        if key is not None:
            rows[int(row["_step"])] = float(row[key])
    return rows


@pytest.mark.slow
def test_keep_global_batch_resume_on_fewer_ranks_keeps_global_batch_and_lr(killed):
    out, run = _resume_on_one_rank(killed, "keep")  # the default: optim.on_world_size_change=keep_global_batch
    assert run.config["optim/global_batch"] == 16  # 1 device x 8 x accumulate 2, as the 2-rank run's 2 x 8 x 1
    assert "trainer.accumulate_grad_batches recomputed" in out
    assert math.isclose(run.config["optim/lr"], resolve_lr(OPTIM, 16)[0], rel_tol=1e-9)
    lrs = _logged_lr(run)
    assert lrs and min(lrs) >= EVERY  # rows of the resumed steps only
    for step, lr in lrs.items():  # the uninterrupted 2-rank run's LR at these steps
        assert math.isclose(lr, rule_lr(16, step), rel_tol=1e-6), (step, lr, rule_lr(16, step))


@pytest.mark.slow
def test_rescale_lr_resume_uses_the_rules_lr_for_the_new_global_batch(killed):
    out, run = _resume_on_one_rank(killed, "rescale", "optim.on_world_size_change=rescale_lr")
    assert run.config["optim/global_batch"] == 8
    assert math.isclose(run.config["optim/lr"], resolve_lr(OPTIM, 8)[0], rel_tol=1e-9)
    lrs = _logged_lr(run)
    assert lrs and min(lrs) >= EVERY
    for step, lr in lrs.items():  # not the checkpoint's peak (global batch 16) any more
        assert math.isclose(lr, rule_lr(8, step), rel_tol=1e-6), (step, lr, rule_lr(8, step))


@pytest.mark.slow
def test_each_sample_once_data_resumed_on_fewer_ranks_reads_every_sample_of_the_epoch_once(killed):
    """The run finishes on 1 rank and the interrupted epoch continues where the 2 ranks stopped: the keys consumed in
    that epoch (both ranks' batches in the checkpoint, then the resumed rank's) are every train sample exactly once."""
    tmp = killed["tmp"]
    meta = read_checkpoint_meta(killed["ckpt"])
    epoch = int(meta["epoch"])
    (lines,) = [v["lines"] for k, v in meta["callbacks"].items() if k.startswith("SampleKeyRecorder")]
    resumed_keys = tmp / "once-keys.jsonl"
    shutil.copy(tmp / "keys.jsonl", resumed_keys)  # rank 0's record: the resumed run cuts it back to the checkpoint
    out, _ = _resume_on_one_rank(killed, "once", f"data.record_keys={resumed_keys}")
    assert "restarts from a fresh pass" not in out and "Traceback" not in out
    assert "resumed on 1" in out  # the continued epoch is announced
    before = read_records(tmp / "keys.jsonl.rank1")[:lines]  # rank 1's share of the checkpoint
    records = [*before, *read_records(resumed_keys)]
    seen = [key for r in records if r["epoch"] == epoch for key in r["keys"]["weak_label"]]
    assert sorted(seen) == sorted(killed["data"]["train_keys"])
    # The resumed epoch had its own length; the next one is a whole 1-rank epoch again (12 batches of 8), unless the
    # run's last steps end inside it (Lightning reads the length once a fit: lit_modules.trainer.EpochLength).
    later = [r for r in read_records(resumed_keys) if r["epoch"] == epoch + 1]
    last_epoch = max(r["epoch"] for r in read_records(resumed_keys))
    assert len(later) == 12 or epoch + 1 == last_epoch, len(later)


def test_plan_topology_change_rules_and_the_error_that_names_both_topologies():
    saved = {"batch_size": 8, "world_size": 2, "accumulate_grad_batches": 1}
    assert plan_topology_change(saved, 8, 2, 1, "keep_global_batch") == (1, None)  # same topology
    assert plan_topology_change(saved, 8, 1, 1, "keep_global_batch")[0] == 2
    assert plan_topology_change(saved, 4, 1, 1, "keep_global_batch")[0] == 4
    assert plan_topology_change({**saved, "world_size": 16}, 8, 8, 1, "keep_global_batch")[0] == 2
    assert plan_topology_change(saved, 8, 1, 1, "rescale_lr")[0] == 1
    with pytest.raises(TopologyChangeError, match=r"2 device\(s\).*3 device\(s\).*on_world_size_change=rescale_lr"):
        plan_topology_change(saved, 8, 3, 1, "keep_global_batch")  # 16 / 24 is no integer
