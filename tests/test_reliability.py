"""Reliability and security (issue 8): faults a long run must survive, bad inputs that must fail clearly or be
skipped and counted, and untrusted files that must never be executed. docs/reliability.md lists every case with the
test that proves it (here or in the data / model / config / eval tests).

The subprocess tests run ``train.py`` exactly as a user does and are marked slow; the rest run in-process.
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from configs.compose import ConfigError, compose, load_run_config, to_dict
from datamodules.resume import saved_position
from tests.fixtures_model import NUM_CLASSES, combined_loader
from tests.fixtures_reliability import (
    REPO,
    add_bad_shard,
    count_lines,
    escaping_tar,
    kill_group,
    kill_when,
    label_json,
    make_dataset,
    poison_checkpoint,
    run_train,
    start_train,
    train_args,
    tree,
)
from tracking.sample_keys import read_records

# ------------------------------------------------------------------------------------------------ shared data


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """160 train samples (20 batches of 8: one epoch) in 10 shards, 16 val samples, 16 px images."""
    return make_dataset(
        tmp_path_factory.mktemp("shards"), n_train=160, n_val=16, shard_size=16, scales=(1.0,), img_size=16
    )


def _main(manifest: str, out: Path, name: str, *overrides: str) -> dict:
    import train

    return train.main(train_args(manifest, out, name, *overrides))


@pytest.fixture(scope="module")
def trained_run(shards, tmp_path_factory):
    """A finished 4-step train.py run (in-process): config.yaml, run.json, last.ckpt and best.ckpt."""
    out = tmp_path_factory.mktemp("trained")
    args = ("trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2", "trainer.val_check_interval=2")
    _main(shards["manifest"], out, "base", *args)
    return {"out": out, "run": out / "base", "args": args, "manifest": shards["manifest"]}


def _copy_run(trained_run, tmp_path: Path) -> Path:
    """A private copy of the trained run's output folder (tests below damage it)."""
    out = tmp_path / "out"
    shutil.copytree(trained_run["out"], out)
    return out


def _run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


# ------------------------------------------------------------------------------ 1. kill -9 mid-epoch, resume

STEPS = 60  # three epochs of 20 batches
KILL_AT = 23  # lines of the key record: inside epoch 1, after the step-22 checkpoint


@pytest.fixture(scope="module")
def kill_resume(shards, tmp_path_factory):
    """An uninterrupted run and, side by side, the same run SIGKILLed mid-epoch and restarted with the same command."""
    out = tmp_path_factory.mktemp("kill")
    common = (
        "data.num_workers=1",
        "data.weak_label.resampled=false",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=10",
        "trainer.checkpoint_every_n_steps=2",
    )

    def args(name: str) -> list[str]:
        return train_args(shards["manifest"], out, name, *common, f"data.record_keys={out / name}.keys.jsonl")

    full = start_train(args("full"), out / "full.log")
    killed = start_train(args("killed"), out / "killed-1.log")
    try:
        seen = kill_when(killed, out / "killed.keys.jsonl", KILL_AT)
        full.wait(timeout=300)
    finally:
        kill_group(killed)
        kill_group(full)
    last = out / "killed" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    before = {
        "returncode": killed.returncode,
        "seen": seen,
        "lines": count_lines(out / "killed.keys.jsonl"),
        "records": read_records(out / "killed.keys.jsonl"),
        "global_step": ckpt["global_step"],
        "data_position": saved_position(ckpt),
        "run": _run_json(out / "killed"),
    }
    rc, output = run_train(args("killed"), out / "killed-2.log", timeout=300)
    return {"out": out, "before": before, "restart_rc": rc, "restart_output": output, "full_rc": full.returncode}


@pytest.mark.slow
def test_kill9_mid_epoch_then_the_same_command_resumes_from_last_ckpt(kill_resume):
    before, out = kill_resume["before"], kill_resume["out"]
    assert kill_resume["full_rc"] == 0, (out / "full.log").read_text()[-3000:]
    assert before["returncode"] == -9  # killed, not finished
    assert before["run"]["status"] == "running"  # a kill -9 cannot write anything
    step = before["global_step"]
    assert 20 < step < 40 and step % 2 == 0, f"checkpoint at step {step} is not inside epoch 1"
    position = before["data_position"]
    assert position["epoch"] == 1 and 0 < position["batches"] == step - 20 < position["num_batches"]
    assert before["lines"] >= step  # the batches after the checkpoint were trained, then lost

    assert kill_resume["restart_rc"] == 0, kill_resume["restart_output"][-3000:]
    last = out / "killed" / "checkpoints" / "last.ckpt"
    assert f"Restored all states from the checkpoint at {last}" in kill_resume["restart_output"]
    run = _run_json(out / "killed")
    assert run["status"] == "finished" and run["restarts"] == 1
    records = read_records(out / "killed.keys.jsonl")
    assert records[:step] == before["records"][:step]  # the checkpointed part is kept, the lost part redone once
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # the global step continues, never repeats
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == STEPS and final["lr_schedulers"][0]["last_epoch"] == STEPS


@pytest.mark.slow
def test_resumed_run_uses_every_sample_as_often_and_ends_where_an_uninterrupted_run_ends(kill_resume):
    out = kill_resume["out"]
    full, resumed = read_records(out / "full.keys.jsonl"), read_records(out / "killed.keys.jsonl")
    assert len(full) == len(resumed) == STEPS

    def per_epoch(records: list[dict], epoch: int) -> Counter:
        return Counter(k for r in records if r["epoch"] == epoch for k in r["keys"]["weak_label"])

    interrupted = per_epoch(resumed, 1)
    assert interrupted == per_epoch(full, 1)  # the guarantee: same count per sample over the interrupted epoch
    assert set(interrupted.values()) == {1} and len(interrupted) == 160  # non-resampled: each sample exactly once
    assert resumed == full  # stronger: the same batches in the same order at the same steps

    metrics = {n: json.loads((out / n / "metrics.json").read_text()) for n in ("full", "killed")}
    compared = [k for k in metrics["full"] if not k.startswith(("perf/", "cost/"))]  # timings differ
    assert {"val/loss", "val/weak_label/mAP", "train/loss", "trainer/global_step"} <= set(compared)
    for key in compared:  # deterministic CPU kernels: equal up to float rounding (in practice bit-identical)
        assert metrics["killed"][key] == pytest.approx(metrics["full"][key], rel=1e-6, abs=1e-7), key

    ckpts = {n: torch.load(out / n / "checkpoints" / "last.ckpt", weights_only=True) for n in ("full", "killed")}
    weights = {n: c["state_dict"] for n, c in ckpts.items()}
    assert weights["full"].keys() == weights["killed"].keys()
    for key, value in weights["full"].items():
        assert torch.allclose(value, weights["killed"][key], rtol=1e-6, atol=1e-7), key
    sched = {n: c["lr_schedulers"][0] for n, c in ckpts.items()}
    assert sched["killed"]["last_epoch"] == sched["full"]["last_epoch"] == STEPS
    assert sched["killed"]["_last_lr"] == pytest.approx(sched["full"]["_last_lr"])  # the LR schedule continued
    adam = {n: [float(s["step"]) for s in c["optimizer_states"][0]["state"].values()] for n, c in ckpts.items()}
    assert set(adam["killed"]) == set(adam["full"]) == {float(STEPS)}


def test_key_record_is_cut_back_to_the_checkpoint_and_drops_a_half_written_line(tmp_path):
    from types import SimpleNamespace

    from tracking.sample_keys import SampleKeyRecorder, rank_path

    path = tmp_path / "keys.jsonl"
    assert rank_path(path, 0) == path and rank_path(path, 3) == tmp_path / "keys.jsonl.rank3"
    trainer = SimpleNamespace(global_rank=0, current_epoch=0, global_step=0)
    first = SampleKeyRecorder(path)
    first.on_train_start(trainer, None)
    for step in range(1, 6):
        trainer.global_step = step
        first.on_train_batch_end(trainer, None, None, {"weak_label": {"key": [f"k{step}"], "image": None}}, step - 1)
        if step == 3:
            saved = first.state_dict()  # what the step-3 checkpoint holds
    with path.open("a") as f:
        f.write('{"epoch": 0, "batch_i')  # killed in the middle of a write
    resumed = SampleKeyRecorder(path)
    resumed.load_state_dict(saved)
    resumed.on_train_start(trainer, None)
    assert [r["keys"]["weak_label"] for r in read_records(path)] == [["k1"], ["k2"], ["k3"]]
    assert resumed.lines == 3
    fresh = SampleKeyRecorder(path)  # a run that starts without a checkpoint starts an empty record
    fresh.on_train_start(trainer, None)
    assert read_records(path) == []


# ------------------------------------------------------------------------- 2. crash while writing a checkpoint


def _fit_tiny(run_dir: Path, max_steps: int = 4, n: int = 8, every: int = 2):
    """MultiTaskModule on synthetic batches through lit_modules.trainer.build_trainer (the real checkpointing)."""
    from lit_modules import MultiTaskModule
    from lit_modules.trainer import build_trainer
    from tracking.run_dir import RunDir

    cfg = compose(
        [
            "model=vit_demo",
            "model.kwargs.depth=1",
            "data.img_size=32",
            "tasks=multitask",
            "logger=none",
            "trainer=cpu",
            f"trainer.max_steps={max_steps}",
            f"trainer.checkpoint_every_n_steps={every}",
            "trainer.log_every_n_steps=1",
        ]
    )
    torch.manual_seed(0)
    module = MultiTaskModule(to_dict(cfg), NUM_CLASSES)
    trainer = build_trainer(cfg, RunDir(run_dir))
    trainer.fit(module, train_dataloaders=combined_loader(n=n), val_dataloaders=combined_loader(n=4))
    return trainer


def test_crash_midway_through_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    from lit_modules import load_module

    real_save = torch.save
    last_saves = []

    def save_then_crash(obj, f, *args, **kwargs):
        name = getattr(f, "name", "")
        if isinstance(name, str) and "last.ckpt" in name:
            last_saves.append(name)
            if len(last_saves) == 2:  # the second last.ckpt: write half of it, then the disk is "full"
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                raise OSError(28, "No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        _fit_tiny(tmp_path / "run")
    monkeypatch.undo()
    folder = tmp_path / "run" / "checkpoints"
    assert len(last_saves) == 2 and all(Path(s).parent == folder for s in last_saves)
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no partial temp file left
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous checkpoint
    module = load_module(folder / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_checkpoint_file_is_only_ever_replaced_by_a_rename_inside_its_folder(tmp_path, monkeypatch):
    """A kill at any instant leaves last.ckpt whole: it is never opened for writing or copied into, only replaced
    by os.replace from a fully written (fsynced) file in the same folder, so on the same filesystem. (Lightning's own
    writer stages it in the system temp folder and moves it from there: a copy when /tmp is another filesystem.)"""
    import builtins

    events: list[tuple[str, str, str]] = []
    wrap = {
        (os, "replace"): "os.replace",
        (os, "rename"): "os.rename",
        (shutil, "move"): "shutil.move",
        (shutil, "copyfile"): "shutil.copyfile",
    }
    for (mod, attr), label in wrap.items():
        real = getattr(mod, attr)

        def recorder(src, dst, *a, _real=real, _label=label, **kw):
            events.append((_label, str(src), str(dst)))
            return _real(src, dst, *a, **kw)

        monkeypatch.setattr(mod, attr, recorder)
    real_open = builtins.open

    def open_recorder(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            events.append(("open", str(file), mode))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", open_recorder)
    _fit_tiny(tmp_path / "run", max_steps=4)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    into_last = [e for e in events if e[0] != "open" and e[2] == str(last)]
    assert len(into_last) >= 2  # steps 2 and 4
    assert all(op == "os.replace" and Path(src).parent == last.parent for op, src, _ in into_last), into_last
    assert not [e for e in events if e[0] == "open" and Path(e[1]) == last]


def test_final_checkpoint_of_a_run_stopped_mid_epoch_records_a_consistent_position(tmp_path):
    # 4 batches per epoch, max_steps=3, no periodic save before the end: Lightning's own on_train_end save would
    # record "epoch 1" with 3 batches done, so extending the run would skip the rest of epoch 0.
    trainer = _fit_tiny(tmp_path / "run", max_steps=3, n=16, every=100)
    assert trainer.global_step == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 3


# --------------------------------------------------------------------------------- 3. non-finite losses


def test_nan_loss_through_train_py_stops_naming_step_and_task(shards, tmp_path):
    from lit_modules import NonFiniteLossError

    # lr 1e30: step 0 is finite and throws the weights far out, step 1's loss is non-finite
    bad = ("optim.lr=1e30", "optim.warmup_steps=0", "trainer.gradient_clip_val=null", "trainer.max_steps=4")
    with pytest.raises(NonFiniteLossError, match=r"global step 1 .*\['weak_label'\]"):
        _main(shards["manifest"], tmp_path, "nan", *bad)
    run = _run_json(tmp_path / "nan")
    assert run["status"] == "failed" and "NonFiniteLossError" in run["error"] and "global step 1" in run["error"]
    metrics = _main(shards["manifest"], tmp_path, "skip", *bad, "trainer.nonfinite_loss=skip")
    assert metrics["trainer/global_step"] == 4 and metrics["train/nonfinite_skipped"] == 3
    state = torch.load(tmp_path / "skip" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())  # skipped steps never poisoned the weights


# -------------------------------------------------------------------------------------------- 4. W&B down


@pytest.fixture(scope="module")
def wandb_down(shards, tmp_path_factory):
    """Two train.py runs with WANDB_MODE=online and no reachable server: one not logged in, one with a key."""
    root = tmp_path_factory.mktemp("wandb")
    runs = {}
    for case, key in (("no_login", None), ("no_server", "0123456789abcdef0123456789abcdef01234567")):
        cwd = root / case
        (cwd / "cfg").mkdir(parents=True)
        args = train_args(shards["manifest"], cwd / "runs", case, "logger=wandb", "trainer.max_steps=3")
        env = {
            "WANDB_MODE": "online",
            "WANDB_BASE_URL": "http://127.0.0.1:9",  # discard port: connection refused at once
            "WANDB_API_KEY": key,
            "WANDB_INIT_TIMEOUT": "2",
            "WANDB_SILENT": None,
            "HOME": str(cwd),  # no ~/.netrc credentials
            "WANDB_CONFIG_DIR": str(cwd / "cfg"),
            "NETRC": str(cwd / "netrc"),
        }
        runs[case] = (cwd, start_train(args, cwd / "train.log", cwd=cwd, **env))
    results = {}
    for case, (cwd, proc) in runs.items():
        try:
            proc.wait(timeout=240)
        finally:
            kill_group(proc)
        results[case] = {"cwd": cwd, "rc": proc.returncode, "output": (cwd / "train.log").read_text()}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_login", "no_server"])
def test_wandb_unreachable_or_not_logged_in_trains_offline_and_says_so(wandb_down, case):
    res = wandb_down[case]
    assert res["rc"] == 0, res["output"][-3000:]
    assert "W&B online logging failed" in res["output"] and "logging offline to ./wandb instead" in res["output"]
    assert "wandb sync wandb/offline-run-*" in res["output"]
    offline = sorted((res["cwd"] / "wandb").glob("offline-run-*"))
    # One offline run; a second, empty one only when the wandb service still held the first id and the
    # fallback had to take a fresh one (tracking/wandb_logger.py). run.json names the run that holds the data.
    assert 1 <= len(offline) <= 2
    run = _run_json(res["cwd"] / "runs" / case)
    assert run["status"] == "finished" and any(d.name.endswith(run["wandb_id"]) for d in offline)
    assert json.loads((res["cwd"] / "runs" / case / "metrics.json").read_text())["trainer/global_step"] == 3


def test_wandb_waits_are_bounded_unless_the_environment_sets_them(monkeypatch):
    from tracking.wandb_logger import FINISH_TIMEOUT_S, INIT_TIMEOUT_S, wandb_settings

    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.delenv("WANDB_FINISH_TIMEOUT", raising=False)
    s = wandb_settings()
    assert s.init_timeout == INIT_TIMEOUT_S <= 30 and 0 < s.finish_timeout == FINISH_TIMEOUT_S <= 300
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "7")
    assert "init_timeout" not in wandb_settings().model_fields_set  # the environment's value applies


# ------------------------------------------------------------------------------------------ 5. bad input


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_samples_missing_image_or_json_or_labels_are_counted_skips(tmp_path):
    from datamodules.resume import EpochClock, PassLoader
    from datamodules.weak_label import WeakLabelSource
    from tests.fixtures_data import compose_cfg

    info = make_dataset(tmp_path, n_train=16, n_val=3, shard_size=8, scales=(1.0,))
    img = _jpeg()
    bad = {
        "missing_json": {"__key__": "b000000000000001", "jpg": img},
        "missing_image": {"__key__": "b000000000000002", "json": label_json([1])},
        "bad_json": {"__key__": "b000000000000003", "jpg": img, "json": b"\xff{not json"},
        "missing_labels": {"__key__": "b000000000000004", "jpg": img, "json": label_json(None)},
        "empty_labels": {"__key__": "b000000000000005", "jpg": img, "json": label_json([])},
        "label_out_of_vocab": {"__key__": "b000000000000006", "jpg": img, "json": label_json(["3", 99])},
    }
    add_bad_shard(info, list(bad.values()))
    cfg = compose_cfg(info["manifest"], "data.weak_label.resampled=false")
    loader = PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock())
    batches = list(loader.run_pass(0, 0))
    assert len(batches) == len(loader) == math.ceil(22 / 4)  # the pass keeps its manifest length
    keys = {k for b in batches for k in b["key"]}
    assert keys == set(info["train_keys"])  # every good sample, none of the bad ones
    for reason in bad:
        assert loader.counts[reason] >= 1, (reason, dict(loader.counts))
    assert all(b["image"].dtype == torch.uint8 and (b["label_ids"] >= 0).sum(1).min() >= 1 for b in batches)


@pytest.mark.slow
def test_train_py_config_mistakes_exit_with_the_key_named(tmp_path):
    import train

    cases = {
        "data.batch_sise=3": r"unknown config key 'data\.batch_sise'.*Did you mean 'data\.batch_size'",
        "data.batch_size=many": r"bad value for config key 'data\.batch_size'",
        "data.weak_label.scale=1.5": r"'data\.weak_label\.scale': 1\.5 is outside \(0, 1\]",
        "trainer.strategy=fsdp": r"'trainer\.strategy': fsdp needs GPUs",
        "trainer.precision=16-mixed": r"'trainer\.precision': fp16 needs a GPU",
        "trainer.accelerator=gpu": r"'trainer\.accelerator': 'gpu' requested but no CUDA device",
    }
    # As a user runs it (a schema mistake and a hardware one): exit 2, one line, no traceback. The other cases
    # take the same exit path, so they are checked in-process (a subprocess each cost ~1 s of imports).
    by_hand = ("data.batch_sise=3", "trainer.strategy=fsdp")
    procs = {}
    for i, override in enumerate(by_hand):
        args = train_args(str(tmp_path / "nowhere.json"), tmp_path / "runs", f"r{i}", override)
        procs[override] = (start_train(args, tmp_path / f"{i}.log"), tmp_path / f"{i}.log")
    for override, pattern in cases.items():
        if override in by_hand:
            continue
        with pytest.raises(ConfigError) as err:
            train.main(train_args(str(tmp_path / "nowhere.json"), tmp_path / "runs", "x", override))
        assert re.search(pattern, f"config error: {err.value}"), str(err.value)
    for override, (proc, log) in procs.items():
        try:
            proc.wait(timeout=120)
        finally:
            kill_group(proc)
        output = log.read_text()
        assert proc.returncode == 2, output
        assert output.startswith("train.py: config error: ") and re.search(cases[override], output), output
        assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # nothing was built or written


def test_resume_with_another_label_space_fails_naming_the_key(trained_run, tmp_path):
    from lit_modules import CheckpointError
    from tracking.run_dir import RunIdentityError

    out = _copy_run(trained_run, tmp_path)
    before = _run_json(out / "base")
    # resume=auto: the directory holds another config; refused before anything is touched, naming the key.
    with pytest.raises(RunIdentityError, match=r"data\.weak_label\.label_space: 'clustered' -> 'raw'"):
        _main(trained_run["manifest"], out, "base", *trained_run["args"], "data.weak_label.label_space=raw")
    assert _run_json(out / "base") == before
    # An explicit checkpoint is continued deliberately, and still refused by the checkpoint's own check.
    last = out / "base" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"last\.ckpt does not fit this run: label space of 'weak_label' differs"):
        _main(
            trained_run["manifest"],
            out,
            "base",
            *trained_run["args"],
            "data.weak_label.label_space=raw",
            f"resume={last}",
        )
    run = _run_json(out / "base")
    assert run["status"] == "failed" and "data.weak_label.label_space differs" in run["error"]


def test_truncated_last_checkpoint_fails_resume_naming_the_file(trained_run, tmp_path):
    from lit_modules import CheckpointError

    out = _copy_run(trained_run, tmp_path)
    last = out / "base" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(last))}: not a readable PyTorch checkpoint.*resume="):
        _main(trained_run["manifest"], out, "base", *trained_run["args"])


# ------------------------------------------------------------------------------------------------ 6. labels

# Any code point: letters of every script, combining marks, controls, NUL, private use, unassigned; no lone
# surrogates here (they have their own test below).
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
WORDY = st.lists(st.sampled_from(["red", "cars", "the", "Black", "cat's", "ünïcode", "猫", "x-ray", "42", ""]))
ANY_TEXT = st.one_of(TEXT, WORDY.map(" ".join), st.just(""))
SIGNALS = st.dictionaries(st.sampled_from(["title", "keywords", "description", "author", "other"]), st.lists(ANY_TEXT))


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_term_extraction_never_crashes_and_respects_its_rules(text):
    from labels.text import TermExtractor, normalize

    ex = TermExtractor(max_words=3)
    terms = ex.terms(text)
    assert terms == ex.terms(text) == list(ex._terms_tuple(text))  # memoized, deterministic
    assert len(terms) == len(set(terms))
    words_of_chunks = {w for run in ex.chunks(text) for w in run}
    for term in terms:
        words = term.split(" ")
        assert 1 <= len(words) <= 3 and all(words)
        assert set(words) <= words_of_chunks and not set(words) & ex.stopwords
    assert isinstance(normalize(text), str)


@settings(max_examples=150, deadline=None)
@given(SIGNALS, st.floats(0, 1), st.integers(0, 5))
def test_scores_are_probabilities_and_label_choice_is_bounded(signals, min_score, max_labels):
    from labels.scoring import TermScorer, cluster_labels, eligible_terms, select_labels
    from labels.text import TermExtractor

    weights = {"title": 0.8, "keywords": 0.6, "description": 0.4}
    ex = TermExtractor()
    for combine in ("noisy_or", "max"):
        scores = TermScorer(ex, weights, exclude=["author"], combine=combine).score(signals)
        assert all(0.0 < s <= 1.0 for s in scores.values())
        banned = {w for t in signals.get("author", []) for run in ex.chunks(t) for w in run}
        assert not any(banned & set(t.split(" ")) for t in scores)
        found = {t for name, texts in signals.items() if name in weights for x in texts for t in ex.terms(x)}
        assert set(scores) <= found
        kept = eligible_terms(scores, min_score)
        vocab = {t: i for i, t in enumerate(sorted(scores))}
        raw = select_labels(kept, vocab, min_score, max_labels)
        assert len(raw) <= max_labels and all(s >= min_score for _, s in raw)
        assert raw == sorted(raw, key=lambda p: (-p[1], p[0]))
        term_cluster = [i % 3 for i in range(len(vocab))]
        clustered = cluster_labels(raw, term_cluster)
        assert len({c for c, _ in clustered}) == len(clustered)
        for c, s in clustered:
            assert s == max(score for i, score in raw if term_cluster[i] == c)


def _reference_terms(ex, text):
    """The term extraction of the first miner (one token at a time, one n-gram size at a time), with the cuts of
    labels/text.py (dates, punctuated boilerplate, caption separators, word phrases after folding, each tried at
    every position, longest first): the reference the fast path must equal, order included."""
    from labels.text import (
        _APOSTROPHE_RE,
        _JOINERS,
        _KEPT_HYPHEN,
        _LETTER_HYPHEN_RE,
        _POSSESSIVE_RE,
        _SEPARATOR_RE,
        _SPLIT_RE,
        DATE_RE,
        normalize,
    )

    text = normalize(text)
    if ex.cut_dates:
        text = DATE_RE.sub(" | ", text)
    text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", text))
    if ex._boilerplate_re is not None:
        text = ex._boilerplate_re.sub(" | ", text)
    text = _SEPARATOR_RE.sub(" | ", text)
    text = _LETTER_HYPHEN_RE.sub(r"\1" + _KEPT_HYPHEN, text).translate(_JOINERS).replace(_KEPT_HYPHEN, "-")
    phrases = sorted((p for ps in ex._phrases.values() for p in ps), key=lambda p: (-len(p), p))
    runs = []
    for piece in _SPLIT_RE.split(text):
        tokens = piece.split()
        words = [ex._word_uncached(t) for t in tokens]
        forms = [w or t for w, t in zip(words, tokens)]
        i = 0
        while i < len(forms):
            match = next((p for p in phrases if tuple(forms[i : i + len(p)]) == p), None)
            if match is not None:
                words[i : i + len(match)] = [None] * len(match)
                i += len(match)
            else:
                i += 1
        run = []
        for word in words:
            if word is None:
                if run:
                    runs.append(run)
                    run = []
            else:
                run.append(word)
        if run:
            runs.append(run)
    seen = {}
    for run in runs:
        for size in range(1, min(ex.max_words, len(run)) + 1):
            seen.update(dict.fromkeys(" ".join(run[i : i + size]) for i in range(len(run) - size + 1)))
    return [t for t in seen if t not in ex.stop_terms]


def _reference_scores(scorer, signals):
    """``TermScorer.score`` of the first miner (a float per term, combined type by type in sorted order)."""
    ex = scorer.extractor
    banned_words = {w for name in scorer.exclude for t in signals.get(name, ()) for run in ex.chunks(t) for w in run}
    best, miss = {}, {}  # max rule; noisy-or: prod(1 - w) over the types holding the term
    for name in sorted(signals):
        w = scorer.weights.get(name)
        if w is None:
            continue
        for term in scorer.signal_terms(signals[name]):
            if banned_words.isdisjoint(term.split(" ")):
                best[term] = max(best.get(term, 0.0), w)
                miss[term] = miss.get(term, 1.0) * (1.0 - w)
    return best if scorer.combine == "max" else {t: 1.0 - m for t, m in miss.items()}


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, st.integers(1, 5))
@example("Red-black x-ray cars' of the Cat's cars, 42 cats the red car", 4)
@example("a b c d e f", 5)
def test_fast_term_extraction_equals_the_reference(text, max_words):
    from labels.text import TermExtractor

    ex = TermExtractor(max_words=max_words, stop_terms=["red car"], boilerplate=["free download"])
    assert ex.terms(text) == _reference_terms(ex, text)
    assert ex.terms(text + " free download") == _reference_terms(ex, text + " free download")


@settings(max_examples=150, deadline=None)
@given(SIGNALS, st.floats(0, 1), st.integers(0, 5))
@example({"title": ["red car"], "keywords": ["red", "car"], "description": ["red car"]}, 0.5, 3)
def test_mask_scores_and_term_groups_equal_float_scores_and_select_labels(signals, min_score, max_labels):
    """The passes carry terms grouped by signal mask and score them by mask: the same floats, the same labels, as
    scoring each term (``score``) and choosing with ``select_labels``."""
    from labels.passes import group_terms, term_groups
    from labels.scoring import TermScorer, eligible_terms, select_group_labels, select_labels
    from labels.text import TermExtractor

    weights = {"title": 0.8, "keywords": 0.6, "description": 0.4}
    for combine in ("noisy_or", "max"):
        scorer = TermScorer(TermExtractor(), weights, exclude=["author"], combine=combine)
        scores = scorer.score(signals)
        ref = _reference_scores(scorer, signals)
        assert list(scores) == list(ref)
        assert all(scores[t] == ref[t] for t in ref)  # bit-equal floats, not approx
        groups = term_groups(scorer, signals, min_score)
        kept = eligible_terms(scores, min_score)
        assert sorted(group_terms(groups)) == sorted(kept)
        vocab = {t: i for i, t in enumerate(sorted(scores, reverse=True))}
        assert select_group_labels(groups, vocab, scorer.mask_score, max_labels) == select_labels(
            kept, vocab, min_score, max_labels
        )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from("abcdefghijkl"), max_size=6), max_size=40),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 6),
    st.floats(0.1, 1.0),
)
def test_document_frequencies_by_term_partition_give_the_whole_corpus_vocabulary(
    docs, buckets, min_df, max_terms, share
):
    """However the corpus is cut into sample partitions and term partitions, the merged shares are exactly the
    vocabulary of the whole table (the old single table was lossy past a size bound)."""
    from labels.vocab import build_vocabulary, frequency_bands, histogram_stats, merge_top, split_by_term, top_terms

    truth = Counter(t for d in docs for t in set(d))
    halves = [Counter(t for d in docs[i::2] for t in set(d)) for i in range(2)]  # two reduce partitions
    ceiling = share * len(docs)
    kept, dropped = [], []
    for j in range(buckets):
        part = Counter()
        for h in halves:
            part.update(split_by_term(h, buckets)[j])
        assert part == {t: c for t, c in truth.items() if split_by_term({t: c}, buckets)[j]}
        got = top_terms(part, min_df, max_terms, ceiling)
        kept, dropped = merge_top(kept, got["kept"], max_terms), merge_top(dropped, got["dropped"], None)
    assert [t for t, _ in kept] == build_vocabulary({t: c for t, c in truth.items() if c <= ceiling}, min_df, max_terms)
    assert all(truth[t] == c for t, c in kept + dropped)
    assert {t for t, _ in dropped} == {t for t, c in truth.items() if c > ceiling}
    bands = frequency_bands(list(truth.values()))
    assert sum(bands[b]["labels"] for b in ("head", "torso", "tail")) == bands["num_labels"] == len(truth)
    assert sum(bands[b]["occurrences"] for b in ("head", "torso", "tail")) == bands["occurrences"]
    stats = histogram_stats(Counter(len(set(d)) for d in docs))
    assert stats["count"] == len(docs)
    if docs:
        assert stats["min"] <= stats["median"] <= stats["max"] and stats["min"] <= stats["mean"] <= stats["max"]


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUE)
def test_any_json_field_value_becomes_clean_texts_or_nothing(value):
    from labels.sources.base import add_signal

    signals: dict[str, list[str]] = {}
    add_signal(signals, "title", value)
    assert all(t and t == t.strip() for t in signals.get("title", []))


def _text_only_run(tmp_path: Path, rows: list[dict], out: str):
    from labels.pipeline import run
    from tests.fixtures_labels import labels_config

    path = tmp_path / f"{out}.jsonl"
    # ensure_ascii: every code point travels as a JSON escape, as many producers write it
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = {
        "type": "manifest",
        "path": str(path),
        "fields": {"title": "title", "tags": "keywords", "desc": "description"},
    }
    return run(labels_config(tmp_path, [src], ["run.text_only=true", "vocab.min_df=1"], out=out))


BASE_ROWS = [{"title": t} for t in ("red car", "black cat", "red cat", "green tree", "black car")]
ROW = st.fixed_dictionaries({}, optional={"title": ANY_TEXT, "tags": st.lists(ANY_TEXT, max_size=4), "desc": ANY_TEXT})


# 10 drawn + 2 explicit examples: each is a whole mining run (~0.5 s).
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ROW, max_size=6))
# Found on a fresh machine: a raw U+0085 (NEXT LINE) in samples.jsonl made str.splitlines see 10 records for 9.
@example([{"title": "red car", "desc": "black\x85cat"}])
@example([{"title": "red\u2028car", "tags": ["cat\u2029"], "desc": "a\rb\x0bc\x0cd\x1ce\x1df\x1eg"}])
def test_mining_any_text_never_crashes_and_its_counts_add_up(tmp_path, rows):
    rows = [*BASE_ROWS, *rows]  # a vocabulary with some structure, whatever the examples add
    result = _text_only_run(tmp_path, rows, "prop")
    counts = result.counts
    assert counts["read"] == len(rows) == counts["written"] + sum(counts["skipped"].values())
    text = (Path(result.output) / "samples.jsonl").read_text(encoding="utf-8")
    # Every line splitter agrees: str.splitlines breaks on all Unicode line boundaries, split("\n") on one.
    assert len(text.splitlines()) == len(text.split("\n")) - 1 == counts["written"]
    assert all(isinstance(json.loads(line), dict) for line in text.splitlines())


def test_mining_empty_and_huge_fields(tmp_path):
    huge = " ".join(f"word{i % 5000} red car" for i in range(60_000))  # ~900 KB of text in one field
    rows = [{"title": ""}, {"tags": []}, {}, {"title": "red car"}, {"desc": huge}, {"title": "red car", "desc": huge}]
    result = _text_only_run(tmp_path, rows, "huge")
    counts = result.counts
    assert counts["read"] == 6 == counts["written"] + sum(counts["skipped"].values())
    assert counts["skipped"] == {"no_text": 3}


def test_mining_survives_texts_whose_terms_always_co_occur(tmp_path):
    """All-zero PPMI (every term co-occurs with every other): no crash, every label stays its own cluster."""
    result = _text_only_run(tmp_path, [{"title": "red car"}, {"title": "red car"}], "uniform")
    assert result.counts == {"read": 2, "written": 2, "skipped": {}}


def test_mining_survives_a_lone_surrogate_in_a_text_field(tmp_path):
    result = _text_only_run(tmp_path, [*BASE_ROWS, {"title": "red car \ud800"}], "surrogate")
    assert result.counts["read"] == 6 == result.counts["written"] + sum(result.counts["skipped"].values())


# --------------------------------------------------------------------------------------------- 7. security


def test_pickle_payload_in_a_checkpoint_is_refused_by_every_loader(trained_run, tmp_path):
    """lit_modules.load_module, train.py's resume (trainer.fit weights_only=True) and evaluate.py: refused, and the
    payload never runs (its marker file is never created)."""
    import evaluate
    from lit_modules import CheckpointError, load_module

    out = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "payload-ran"
    last = out / "base" / "checkpoints" / "last.ckpt"
    poison_checkpoint(last, last, marker)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_module(last)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(last))}: refused to load.*weights_only=True"):
        _main(trained_run["manifest"], out, "base", *trained_run["args"])
    assert _run_json(out / "base")["status"] == "failed"
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*last\.ckpt safely \(torch\.load weights_only"):
        evaluate.main([f"eval.checkpoint={last}"])
    assert not marker.exists()
    torch.load(last, weights_only=False)  # control: the payload is live
    assert marker.exists()


def test_tar_members_that_escape_are_never_written_to_disk(tmp_path, monkeypatch):
    """The img2dataset reader, the full label-mining run over it and the shard reader only read members into
    memory: '../' names, an absolute path, a symlink and a hard link create nothing anywhere."""
    from datamodules.tar_reader import iter_members
    from labels.pipeline import run
    from labels.sources.img2dataset import iter_img2dataset
    from tests.fixtures_labels import jpeg_bytes, labels_config

    work, outside = tmp_path / "a" / "b" / "work", tmp_path / "outside"
    work.mkdir(parents=True)
    outside.mkdir()
    tar = work / "evil.tar"
    escaping_tar(tar, outside, jpeg_bytes((10, 200, 30)))
    cfg = labels_config(
        work, [{"type": "img2dataset", "path": str(tar)}], ["vocab.min_df=1", "cluster.enabled=false"], out="mined"
    )
    monkeypatch.chdir(work)  # '../..' from here is still inside tmp_path, where we can look
    before = tree(tmp_path)

    units = list(iter_img2dataset(str(tar), fields={}))
    assert {u.uid.split(":", 1)[1] for u in units} == {"good", "../../escape", str(outside / "absolute")}
    with tar.open("rb") as f:
        names = [m["fname"] for m in iter_members(f)]
    assert "link.jpg" not in names and "hard.jpg" not in names  # links are never followed
    result = run(cfg)
    assert result.counts["read"] == 3

    after = tree(tmp_path)
    assert not [p for p in after - before if not p.startswith("a/b/work/mined")], sorted(after - before)
    assert not any(outside.iterdir())
    for name in ("escape.jpg", "escape.txt", "hard-target.jpg"):
        assert not (tmp_path / "a" / name).exists() and not (tmp_path / name).exists()


def _repo_sources() -> list[Path]:
    skip = {".venv", "tests", "wandb", "runs", "data", ".git"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def test_no_code_extracts_archives_unpickles_or_loads_yaml_unsafely():
    """Static guard over every .py of the repo (tests excluded): no tar/zip extraction to disk, no pickle or
    numpy-pickle loading, every torch.load passes weights_only=True, YAML only through omegaconf / yaml.safe_load,
    no webdataset decoder that unpickles (.pyd/.pickle handlers)."""
    problems = []
    for path in _repo_sources():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO)
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            attr = node.func.attr
            kwargs = {k.arg: k.value for k in node.keywords}
            if attr in ("extractall", "extract", "unpack_archive"):
                problems.append(f"{where}:{node.lineno} {attr}")
            if owner in ("pickle", "cPickle", "dill", "joblib") and attr in ("load", "loads"):
                problems.append(f"{where}:{node.lineno} {owner}.{attr}")
            if owner == "torch" and attr == "load":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if owner in ("np", "numpy") and attr == "load":
                flag = kwargs.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} np.load(allow_pickle=...)")
            if owner == "yaml" and attr in ("load", "load_all", "full_load", "unsafe_load", "unsafe_load_all"):
                problems.append(f"{where}:{node.lineno} yaml.{attr}")
        for word in ("basichandlers", "torch_loads", "autodecode", 'decode("torch")', "decode('torch')"):
            if word in text:
                problems.append(f"{where}: webdataset decoder '{word}'")
    assert not problems, problems


def test_yaml_python_tags_are_refused_and_never_run(tmp_path):
    from configs.labels_schema import load_labels_config

    marker = tmp_path / "yaml-ran"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    config_dir = tmp_path / "configs"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "config.yaml").write_text("seed: 1\n")
    (config_dir / "experiment" / "evil.yaml").write_text(f"seed: {tag}\n")
    with pytest.raises(ConfigError, match=r"cannot parse config file .*evil\.yaml"):
        compose(["experiment=evil"], config_dir=config_dir)
    (config_dir / "config.yaml").write_text(f"data: {tag}\n")
    with pytest.raises(ConfigError, match=r"cannot parse config file .*config\.yaml"):
        compose([], config_dir=config_dir)
    saved = tmp_path / "run" / "config.yaml"  # what evaluate.py reads back from a run directory
    saved.parent.mkdir()
    saved.write_text(f"seed: {tag}\n")
    with pytest.raises(ConfigError, match=r"cannot parse config file"):
        load_run_config(saved)
    labels_cfg = tmp_path / "labels.yaml"
    labels_cfg.write_text(f"name: {tag}\n")
    with pytest.raises(ConfigError, match=r"cannot parse config file"):
        load_labels_config(labels_cfg)
    assert not marker.exists()
    import yaml

    yaml.unsafe_load(f"seed: {tag}\n")  # control: loaded unsafely, the tag does run its command
    assert marker.exists()


# --------------------------------------------------------------------------------------------- 8. determinism


@pytest.mark.slow
def test_demo_preset_gives_identical_metrics_whatever_the_machine_thread_default(shards, tmp_path):
    """Two machines differ in torch's default thread count (core count, OMP_NUM_THREADS): the demo preset fixes it
    (trainer.cpu_threads), so the same command gives bit-identical metrics. Before, 1 vs 2 threads changed the loss
    after a few steps of this run."""
    args = ("data.img_size=32", "model.kwargs.depth=2", "trainer.max_steps=6", "trainer.val_check_interval=3")
    metrics = {}
    for default_threads in (1, 2):
        torch.set_num_threads(default_threads)  # what the machine would give without trainer.cpu_threads
        out = _main(shards["manifest"], tmp_path / f"threads{default_threads}", "run", *args)
        metrics[default_threads] = {k: v for k, v in out.items() if not k.startswith(("perf/", "cost/"))}
        assert torch.get_num_threads() == 2  # the preset's count, whatever the default was
    assert {"train/loss", "val/loss", "val/weak_label/mAP"} <= set(metrics[1])
    assert metrics[1] == metrics[2]  # exact: same kernels, same thread count, same seeds


def test_evaluate_print_config_shows_the_checkpoint_run_config_and_evaluates_nothing(trained_run, capsys):
    from omegaconf import OmegaConf

    import evaluate

    before = sorted(trained_run["out"].rglob("*"))
    assert evaluate.main([f"eval.checkpoint={trained_run['run']}", "eval.knn_k=3", "--print-config"]) == {}
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.run_name == "base" and cfg.trainer.max_steps == 4 and cfg.eval.knn_k == 3  # the run's, plus overrides
    assert cfg.eval.checkpoint.endswith(".ckpt")
    assert sorted(trained_run["out"].rglob("*")) == before  # nothing was evaluated or written
