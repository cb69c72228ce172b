"""Training through Lightning: equal batch counts under 2-process DDP (gloo), validation exactly once, same seed
same order, and mid-epoch resume from a checkpoint without repeating or skipping a sample (counted by key).

The DDP tests launch ``python tests/fixtures_data.py JOB.json`` (Lightning's ddp strategy re-runs that command
for rank 1); the single-process ones run ``run_fit`` in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from datamodules.loaders import EpochSampler, mix_seed
from datamodules.resume import saved_position
from tests.fixtures_data import REPO, make_dataset, make_fashion_mnist, run_fit


def _flat(records: list, dataset: str = "weak_label") -> list[str]:
    return [k for _, _, name, keys in records if name == dataset for k in keys]


def _steps(records: list) -> list[tuple]:
    """(epoch, batch_idx, dataset, keys) per training record, hashable."""
    return [(e, i, n, tuple(k)) for e, i, n, k in records]


# ----------------------------------------------------------------------------- single process, in-process


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {
        "wl": make_dataset(root / "wl", n_train=24, n_val=6, shard_size=6, corrupt=2),
        "fm": str(make_fashion_mnist(root / "fm", n_train=28, n_test=8)),
        "root": root,
    }


def _spec(small, name, **kw):
    overrides = [
        "tasks=multitask",
        f"data.fashion_mnist.root={small['fm']}",
        "data.fashion_mnist.train_limit=20",
        *kw.pop("overrides", []),
    ]
    return {"manifest": small["wl"]["manifest"], "overrides": overrides, "ckpt_dir": str(small["root"] / name), **kw}


@pytest.mark.parametrize("mode", ["combined", "interleave"])
def test_resume_mid_epoch_continues_exactly(small, mode):
    # Epochs of 6 (combined: max(6 weak-label, 5 fashion) batches) or 11 (interleave) steps; stop inside epoch 1.
    extra = {"overrides": [f"data.mixing.mode={mode}"]}
    full = run_fit(_spec(small, f"full-{mode}", max_steps=16, **extra))
    stop = 9 if mode == "combined" else 14
    first = run_fit(_spec(small, f"ck-{mode}", max_steps=stop, ckpt_every=stop, **extra))
    assert _steps(first["train"]) == _steps(full["train"])[: len(first["train"])]  # same seed, same order
    ckpt = Path(small["root"]) / f"ck-{mode}" / f"step={stop}.ckpt"
    rest = run_fit(_spec(small, f"rest-{mode}", max_steps=16, resume=str(ckpt), **extra))
    assert rest["train"][0][0] == 1 and rest["train"][0][1] > 0  # it did restart inside epoch 1
    assert _steps(first["train"] + rest["train"]) == _steps(full["train"])
    for dataset in ("weak_label", "fashion_mnist"):  # each sample used as often as without the interruption
        assert Counter(_flat(first["train"] + rest["train"], dataset)) == Counter(_flat(full["train"], dataset))


def test_resume_from_an_end_of_epoch_checkpoint_starts_the_next_epoch(small):
    full = run_fit(_spec(small, "full-eoe", max_steps=9))
    run_fit(_spec(small, "ck-eoe", max_steps=6, ckpt_on_epoch_end=True))
    ckpt = Path(small["root"]) / "ck-eoe" / "end-epoch=0.ckpt"
    rest = run_fit(_spec(small, "rest-eoe", max_steps=9, resume=str(ckpt)))
    assert [(e, i) for e, i, _, _ in rest["train"][::2]] == [(1, 0), (1, 1), (1, 2)]  # no extra batch in epoch 0
    assert _steps(rest["train"]) == _steps(full["train"])[12:]


def test_the_position_travels_in_lightnings_loader_state_and_old_checkpoints_still_resume(small, tmp_path):
    full = run_fit(_spec(small, "full-hook", max_steps=14))
    first = run_fit(_spec(small, "ck-hook", max_steps=9, ckpt_every=9))
    path = Path(small["root"]) / "ck-hook" / "step=9.ckpt"
    ckpt = torch.load(path, weights_only=True)
    position = saved_position(ckpt)  # Lightning's fit loop stored the training loader's state_dict()
    assert "MultiTaskDataModule" not in ckpt
    assert (position["epoch"], position["batches"], position["num_batches"]) == (1, 3, 6)  # 6 steps per epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rest = run_fit(_spec(small, "rest-hook", max_steps=14, resume=str(path)))
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees a stateful loader
    assert _steps(first["train"] + rest["train"]) == _steps(full["train"])
    # A checkpoint written before the position moved into the loader's state keeps it under the DataModule's key.
    old = torch.load(path, weights_only=True)
    del old["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    old["MultiTaskDataModule"] = position
    torch.save(old, tmp_path / "old.ckpt")
    rest = run_fit(_spec(small, "rest-old", max_steps=14, resume=str(tmp_path / "old.ckpt")))
    assert _steps(first["train"] + rest["train"]) == _steps(full["train"])


@pytest.mark.parametrize("mode", ["combined", "interleave"])
def test_train_loader_state_round_trip_without_lightning(small, mode):
    """``state_dict`` after k steps, ``load_state_dict`` into a fresh loader: it reports the same position until it
    moves, then yields exactly the steps the first loader yields after its k-th."""
    from datamodules import build_datamodule
    from tests.fixtures_data import compose_cfg

    spec = _spec(small, "unused", overrides=[f"data.mixing.mode={mode}"])

    def loader():
        return build_datamodule(compose_cfg(spec["manifest"], *spec["overrides"])).train_dataloader()

    first = loader()
    steps = iter(first)
    for _ in range(4):
        next(steps)
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (0, 4)
    after = [{n: b["key"] for n, b in step.items()} for step in steps]
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # a checkpoint written right after the restore keeps the position
    assert [{n: b["key"] for n, b in step.items()} for step in resumed] == after


# ------------------------------------------------------------------------------------- DDP, 2 processes

DDP_EPOCH = 4  # batches per rank per epoch: 31 samples / (batch 4 x 2 ranks), rounded up
DDP_STEPS = 10  # two full epochs (validated after each) and two steps of a third
DDP_CKPT = 6  # the checkpoint to resume from is written inside epoch 1
DDP_DATA = ["data.num_workers=1", "data.weak_label.resampled=false"]


def _ddp(tmp: Path, runs: dict[str, dict]) -> dict[str, list[dict]]:
    """Run the named specs one after the other in one 2-process DDP launch; results per name and rank."""
    common = {"devices": 2, "overrides": DDP_DATA}
    job = {"runs": [{**common, **spec, "out": str(tmp / name)} for name, spec in runs.items()]}
    path = tmp / "job.json"
    path.write_text(json.dumps(job))
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / "fixtures_data.py"), str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=360,  # under pytest-timeout's 420 s, so a hang shows the job's own output
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")[-3000:], (err.stderr or b"")[-6000:]
        pytest.fail(f"the 2-process DDP job did not end in 360 s\nstdout: {out[0]!r}\nstderr: {out[1]!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {name: [json.loads((tmp / name / f"rank{r}.json").read_text()) for r in range(2)] for name in runs}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """An uninterrupted 2-rank run that also writes a mid-epoch checkpoint, then a run resumed from it."""
    tmp = tmp_path_factory.mktemp("ddp")
    ds = make_dataset(tmp / "ds", n_train=31, n_val=7, shard_size=6, val_shard_size=3, corrupt=2)
    fm = make_fashion_mnist(tmp / "fm", n_train=24, n_test=8)
    runs = _ddp(
        tmp,
        {
            "multitask": {  # weak_label + fashion_mnist (map-style: EpochSampler), one pass of fashion_mnist
                "manifest": ds["manifest"],
                "max_steps": 3,
                "overrides": [*DDP_DATA, "tasks=multitask", f"data.fashion_mnist.root={fm}"],
            },
            "full": {
                "manifest": ds["manifest"],
                "max_steps": DDP_STEPS,
                "ckpt_every": DDP_CKPT,
                "ckpt_dir": str(tmp / "ck"),
            },
            "rest": {
                "manifest": ds["manifest"],
                "max_steps": DDP_STEPS,
                "resume": str(tmp / "ck" / f"step={DDP_CKPT}.ckpt"),
            },
        },
    )
    return {"ds": ds, **runs}


@pytest.mark.slow
def test_ddp_every_rank_gets_the_same_number_of_batches(ddp_runs):
    shards = [s["num_samples"] for s in ddp_runs["ds"]["train_shards"]]
    assert len(shards) % 2 == 1 or len(set(shards)) > 1  # the shards do not split evenly over 2 ranks
    full = ddp_runs["full"]
    assert [len(r["train"]) for r in full] == [DDP_STEPS, DDP_STEPS]
    assert full[0]["num_training_batches"] == full[1]["num_training_batches"] == DDP_EPOCH
    assert all(len(keys) == 4 for r in full for _, _, _, keys in r["train"])


@pytest.mark.slow
def test_ddp_validation_sees_every_val_sample_exactly_once(ddp_runs):
    full = ddp_runs["full"]
    epochs = sorted({e for r in full for e, _, _ in r["val"]})
    assert epochs == [0, 1]
    for epoch in epochs:
        per_rank = [[keys for e, _, keys in r["val"] if e == epoch] for r in full]
        assert len(per_rank[0]) == len(per_rank[1])  # equal val batch counts
        seen = Counter(k for batches in per_rank for keys in batches for k in keys)
        assert seen == Counter(ddp_runs["ds"]["val_keys"])


@pytest.mark.slow
def test_ddp_resume_mid_epoch_repeats_and_skips_nothing(ddp_runs):
    full, rest = ddp_runs["full"], ddp_runs["rest"]
    for rank in range(2):
        before = _steps(full[rank]["train"])[:DDP_CKPT]
        after = _steps(rest[rank]["train"])
        assert after[0][:2] == (1, DDP_CKPT - DDP_EPOCH)  # resumed inside epoch 1
        assert before + after == _steps(full[rank]["train"])  # same samples, same order
        epoch1 = [k for e, _, _, keys in full[rank]["train"] if e == 1 for k in keys]
        resumed = [k for e, _, _, keys in before + after if e == 1 for k in keys]
        assert Counter(resumed) == Counter(epoch1)


@pytest.mark.slow
def test_ddp_map_style_ranks_read_what_their_own_sampler_says(ddp_runs):
    """Lightning never sees (so never replaces) the map-style sampler: each rank's Fashion-MNIST batches are exactly
    ``EpochSampler``'s indices for that rank, disjoint over ranks, every sample once in the pass."""
    runs = ddp_runs["multitask"]
    seed = mix_seed(0, zlib.crc32(b"fashion_mnist"))  # compose_cfg's seed 0, mixed with the dataset name
    for rank, run in enumerate(runs):
        sampler = EpochSampler(24, 4, rank, 2, seed)  # compose_cfg's batch of 4
        sampler.set_pass(0, 0)
        assert _flat(run["train"], "fashion_mnist") == [f"fashion_mnist/train/{i:05d}" for i in sampler]
    assert sorted(k for run in runs for k in _flat(run["train"], "fashion_mnist")) == [
        f"fashion_mnist/train/{i:05d}" for i in range(24)
    ]


@pytest.mark.slow
def test_ddp_corrupt_samples_are_skipped_and_counted(ddp_runs):
    full = ddp_runs["full"]
    seen = {k for r in full for k in _flat(r["train"])}
    assert not seen & set(ddp_runs["ds"]["corrupt_keys"])
    per_rank = [r["counts"]["weak_label/train"].get("decode_error", 0) for r in full]
    assert sum(per_rank) >= 1
    # DataCountsLogger logs the sum over ranks (rank 0 holds it), at each epoch end
    assert full[0]["logged"]["data/weak_label/train/decode_error"] >= 1


def test_skip_counters_are_logged_every_n_steps_not_only_at_epoch_end(small):
    from types import SimpleNamespace

    from datamodules.datamodule import DataCountsLogger, WeakLabelShardDataModule
    from tests.fixtures_data import compose_cfg

    dm = WeakLabelShardDataModule(compose_cfg(small["wl"]["manifest"]))
    dm.train_loaders = {"weak_label": SimpleNamespace(counts=Counter(decode_error=2))}
    dm.val_loaders = {}
    logged = []
    module = SimpleNamespace(device="cpu", log_dict=lambda metrics, **kw: logged.append(metrics))
    strategy = SimpleNamespace(
        root_device=torch.device("cpu"), reduce=lambda vec, reduce_op: vec * 2
    )  # as if two ranks had the same counts
    trainer = SimpleNamespace(datamodule=dm, log_every_n_steps=3, strategy=strategy)
    callback = DataCountsLogger()
    for batch_idx in range(7):
        callback.on_train_batch_end(trainer, module, None, None, batch_idx)
    assert logged == [{"data/weak_label/train/decode_error": 4.0}] * 2  # after batches 3 and 6
