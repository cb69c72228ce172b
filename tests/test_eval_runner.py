"""evaluate_run and evaluate.py end to end with a fake module and fake loaders (no real data, no lit_modules)."""

from __future__ import annotations

import importlib
import json
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch
from fixtures_eval import (
    FakeLoaders,
    FakeMultiTaskModule,
    brute_metrics,
    fashion_and_weak_label_splits,
    make_loader,
    weak_label_head_metrics,
)
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from configs.compose import compose, save_config, to_dict
from evaluation.checkpoint import (
    CheckpointMismatchError,
    check_compatible,
    load_checkpoint_module,
    resolve_checkpoint,
)
from evaluation.retrieval import evaluate_retrieval
from evaluation.runner import config_hash, default_loader, evaluate_dataset, evaluate_run, loo_query_rows, output_path

BASE = [
    "eval.datasets=[fashion_mnist,weak_label_val]",
    "eval.ks=[1,5]",
    "eval.knn_k=3",
    "eval.linear_probe.epochs=15",
    "eval.linear_probe.batch_size=16",
    "eval.block_size=7",
    "eval.device=cpu",
    "logger.wandb=false",
]


def expected_names(features=("embedding", "backbone"), ks=(1, 5), binarize=True):
    kinds = ("float", "binary") if binarize else ("float",)
    names = {"fashion_mnist": set(), "weak_label_val": set()}
    for ds in names:
        for f in features:
            names[ds] |= {
                f"eval/{ds}/{f}/{kind}/{m}@{k}"
                for kind in kinds
                for m in ("precision", "recall", "ir_recall", "mAP")
                for k in ks
            }
    for f in features:
        names["fashion_mnist"] |= {f"eval/fashion_mnist/{f}/knn_acc", f"eval/fashion_mnist/{f}/linear_probe_acc"}
    names["weak_label_val"] |= {"eval/weak_label_val/head/mAP"} | {f"eval/weak_label_val/head/p@{k}" for k in ks}
    return names


def test_runner_writes_the_contract_json(tmp_path):
    cfg = compose(BASE)
    splits = fashion_and_weak_label_splits()
    loaders = FakeLoaders(splits)
    module = FakeMultiTaskModule(width=8, dim=6, num_labels=5)
    metrics = evaluate_run(cfg, module=module, run_dir=tmp_path, loader_fn=loaders, progress=False)
    assert loaders.calls == [("fashion_mnist", "train"), ("fashion_mnist", "test"), ("weak_label", "val")]

    names = expected_names()
    assert set(metrics) == names["fashion_mnist"] | names["weak_label_val"]
    for ds in ("fashion_mnist", "weak_label_val"):
        payload = json.loads((tmp_path / "eval" / f"{ds}.json").read_text())
        assert {"metrics", "dataset", "checkpoint", "config_hash", "feature_dims", "timings"} <= set(payload)
        assert set(payload["metrics"]) == names[ds] and payload["dataset"] == ds
        assert payload["config_hash"] == config_hash(cfg) and payload["checkpoint"] is None
        assert payload["feature_dims"] == {"embedding": 6, "backbone": 8}
        assert payload["timings"]["total_s"] > 0
    # Separable classes: the backbone feature (the class clusters themselves) is perfect.
    for name in ("float/precision@1", "float/mAP@5", "binary/precision@1", "knn_acc", "linear_probe_acc"):
        assert metrics[f"eval/fashion_mnist/backbone/{name}"] == 1.0, name
    # Leave-one-out on weak_label val equals the independent reference.
    x_val, y_val = splits[("weak_label", "val")]
    ref = brute_metrics(x_val, y_val, x_val, y_val, [1, 5], "cosine", list(range(len(x_val))))
    for name, value in ref.items():
        assert metrics[f"eval/weak_label_val/backbone/float/{name}"] == pytest.approx(value, abs=1e-12)
    assert 0.0 <= metrics["eval/weak_label_val/head/mAP"] <= 1.0


def test_runner_without_embedding_head_limits_and_no_binary(tmp_path):
    cfg = compose([*BASE, "eval.gallery_limit=20", "eval.query_limit=9", "eval.binarize=false"])
    module = FakeMultiTaskModule(embedding=False, num_labels=None)
    metrics = evaluate_run(cfg, module, tmp_path, FakeLoaders(fashion_and_weak_label_splits()), progress=False)
    names = expected_names(features=("backbone",), binarize=False)
    names["weak_label_val"] -= {n for n in names["weak_label_val"] if "/head/" in n}
    assert set(metrics) == names["fashion_mnist"] | names["weak_label_val"]
    fm = json.loads((tmp_path / "eval" / "fashion_mnist.json").read_text())
    assert any("'embedding' skipped" in note for note in fm["notes"])
    assert fm["counts"]["gallery"] == 20 and fm["counts"]["queries"] == 9
    wl = json.loads((tmp_path / "eval" / "weak_label_val.json").read_text())
    assert wl["counts"]["gallery"] == 20 and wl["counts"]["queries"] == 9
    assert any("no weak-label head" in note for note in wl["notes"])


def test_runner_k_larger_than_gallery_names_the_keys(tmp_path):
    cfg = compose([*BASE, "eval.gallery_limit=4", "eval.datasets=[fashion_mnist]"])
    loaders = FakeLoaders(fashion_and_weak_label_splits())
    with pytest.raises(ValueError, match=r"eval.ks: k=5 is larger than the fashion_mnist gallery, which has 4 items"):
        evaluate_run(cfg, FakeMultiTaskModule(), tmp_path, loaders, progress=False)
    assert loaders.calls == []  # the cap alone settles it: no image read
    # A gallery that is small by itself: found after the gallery pass, before the query pass.
    splits = fashion_and_weak_label_splits()
    splits[("weak_label", "val")] = tuple(t[:5] for t in splits[("weak_label", "val")])
    loaders = FakeLoaders(splits)
    cfg = compose([*BASE, "eval.datasets=[weak_label_val]"])
    with pytest.raises(
        ValueError, match=r"k=5 is larger than the weak_label_val gallery, which has 4 items after leaving"
    ):
        evaluate_run(cfg, FakeMultiTaskModule(), tmp_path, loaders, progress=False)
    assert loaders.calls == [("weak_label", "val")]


def test_runner_head_of_another_label_space(tmp_path):
    cfg = compose([*BASE, "eval.datasets=[weak_label_val]"])
    module = FakeMultiTaskModule(num_labels=7)  # the data has 5 labels
    with pytest.raises(CheckpointMismatchError, match="predicts 7 labels but data.weak_label .* has 5"):
        evaluate_run(cfg, module, tmp_path, FakeLoaders(fashion_and_weak_label_splits()), progress=False)


def test_missing_dataset_paths_are_named(tmp_path):
    cfg = compose([f"data.fashion_mnist.root={tmp_path}/nope", f"data.weak_label.manifest={tmp_path}/m.json"])
    with pytest.raises(FileNotFoundError, match="data.fashion_mnist.root=.*nope: no such directory"):
        default_loader(cfg, "fashion_mnist", "train")
    with pytest.raises(FileNotFoundError, match="data.weak_label.manifest=.*m.json: no such file"):
        default_loader(cfg, "weak_label", "val")


def test_output_paths_and_config_hash(tmp_path):
    cfg = compose(BASE)
    assert output_path(cfg, "fashion_mnist", tmp_path) == tmp_path / "eval" / "fashion_mnist.json"
    for out, want in [
        ("res/{dataset}.json", "res/weak_label_val.json"),
        ("res/out.json", "res/out.weak_label_val.json"),
        ("res", "res/weak_label_val.json"),
    ]:
        c = OmegaConf.merge(cfg, {"eval": {"output": out}})
        assert output_path(c, "weak_label_val", None) == Path(want)
    assert config_hash(cfg) == config_hash(compose([*BASE, "eval.checkpoint=elsewhere.ckpt"]))
    assert config_hash(cfg) != config_hash(compose([*BASE, "model.name=resnet50"]))


# ------------------------------------------------------------------------------- checkpoints


def _fake_run(tmp_path: Path, cfg, num_classes, name: str = "best.ckpt", wandb_id: str | None = None) -> Path:
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"run_name": "r1", "wandb_id": wandb_id}))
    payload = {
        "state_dict": {"w": torch.zeros(2)},
        "hyper_parameters": {"config": to_dict(cfg), "num_classes": num_classes},
    }
    torch.save(payload, run / "checkpoints" / name)
    return run


def test_resolve_checkpoint_prefers_last_then_best(tmp_path):
    # last.ckpt: the final weights, which evaluate_after_fit also scores (one rule for both, REVIEW R6).
    run = _fake_run(tmp_path, compose(BASE), {"weak_label": 5}, name="best.ckpt")
    assert resolve_checkpoint(run) == (run / "checkpoints" / "best.ckpt", run)
    torch.save({}, run / "checkpoints" / "last.ckpt")
    assert resolve_checkpoint(run)[0] == run / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(run / "checkpoints" / "last.ckpt")[1] == run
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or run directory"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
        resolve_checkpoint(tmp_path)


def test_checkpoint_of_another_architecture_or_label_space_fails_clearly(tmp_path):
    trained = compose([*BASE, "model.name=vit_small_patch16_224"])
    run = _fake_run(tmp_path, trained, {"weak_label": 400})
    ckpt = run / "checkpoints" / "best.ckpt"
    current = compose([*BASE, "model.name=resnet50", "data.weak_label.label_space=raw"])
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint_module(current, ckpt, data_num_classes={"weak_label": 900})
    msg = str(err.value)
    assert "model.name: checkpoint 'vit_small_patch16_224' vs config 'resnet50'" in msg
    assert "data.weak_label.label_space: checkpoint 'clustered' vs config 'raw'" in msg
    assert "num_classes['weak_label']: checkpoint 400 vs data 900" in msg
    check_compatible(trained, to_dict(trained), {"weak_label": 400}, {"weak_label": 400})  # same: no error
    torch.save({"x": types.SimpleNamespace()}, tmp_path / "pickled.ckpt", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match="cannot read checkpoint .* safely"):
        load_checkpoint_module(trained, tmp_path / "pickled.ckpt")


# ---------------------------------------------------------------------------------- evaluate.py


@pytest.fixture
def fake_stack(monkeypatch, tmp_path):
    """lit_modules / datamodules stand-ins, so evaluate.py runs without the real packages."""
    splits = fashion_and_weak_label_splits()
    loaders = FakeLoaders(splits)
    lit = types.ModuleType("lit_modules")
    lit.load_module = lambda path: FakeMultiTaskModule(num_labels=5)
    lit.MultiTaskModule = lambda config, num_classes: FakeMultiTaskModule(num_labels=num_classes["weak_label"])
    dm = types.ModuleType("datamodules")
    dm.eval_loader = loaders
    dm.build_datamodule = lambda cfg: types.SimpleNamespace(num_classes={"weak_label": 5, "fashion_mnist": 3})
    # evaluate.py's run seeding (lit_modules.trainer.seed_run) stays the real one.
    monkeypatch.setitem(sys.modules, "lit_modules.trainer", importlib.import_module("lit_modules.trainer"))
    monkeypatch.setitem(sys.modules, "lit_modules", lit)
    monkeypatch.setitem(sys.modules, "datamodules", dm)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    return [f"data.fashion_mnist.root={tmp_path}/fmnist", f"data.weak_label.manifest={tmp_path}/manifest.json"]


def test_evaluate_py_random_init_baseline(fake_stack, tmp_path, monkeypatch, caplog):
    import wandb

    import evaluate

    metrics = evaluate.main([*BASE, *fake_stack, f"output_dir={tmp_path / 'runs'}", "run_name=rand"])
    run = tmp_path / "runs" / "rand"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["axes"]["init"] == "random"
    assert json.loads((run / "metrics.json").read_text()).keys() == metrics.keys()
    assert json.loads((run / "eval" / "fashion_mnist.json").read_text())["checkpoint"] is None
    assert not (tmp_path / "wandb").exists()  # logger.wandb=false

    def broken_init(**kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level("WARNING"):
        again = evaluate.main(
            [*BASE, *fake_stack, f"output_dir={tmp_path / 'runs'}", "run_name=rand", "logger.wandb=true"]
        )
    assert again == metrics  # W&B failures never crash the evaluation; same seed, same numbers
    assert "W&B logging of the evaluation failed (RuntimeError: W&B is down)" in caplog.text


def test_evaluate_py_scores_a_lone_checkpoint_from_its_stored_config(fake_stack, tmp_path, capsys):
    import evaluate
    from configs.compose import load_run_config

    # Trained on a GPU elsewhere, copied here alone: no run directory, no config.yaml next to it.
    trained = compose([*BASE, *fake_stack, "trainer=gpu", "seed=7", "eval.knn_k=4"], hardware=False)
    lone = tmp_path / "models" / "vit.ckpt"
    lone.parent.mkdir()
    hparams = {"config": to_dict(trained), "num_classes": {"weak_label": 5, "fashion_mnist": 3}}
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": hparams}, lone)

    overrides = ["eval.datasets=[fashion_mnist]", "eval.ks=[1]"]
    assert evaluate.main([f"eval.checkpoint={lone}", *overrides, "--print-config"]) == {}
    shown = OmegaConf.create(capsys.readouterr().out)
    assert shown.seed == 7 and shown.eval.knn_k == 4 and list(shown.eval.ks) == [1]  # stored config + overrides
    metrics = evaluate.main([f"eval.checkpoint={lone}", *overrides])
    payload = json.loads((tmp_path / "models" / "eval" / "fashion_mnist.json").read_text())
    assert payload["checkpoint"] == str(lone) and set(payload["metrics"]) == set(metrics)
    assert set(metrics) == expected_names(ks=(1,))["fashion_mnist"]
    expected = load_run_config(to_dict(trained), [*overrides, f"eval.checkpoint={lone}"], hardware=False)
    assert payload["config_hash"] == config_hash(expected)

    bare = tmp_path / "models" / "bare.ckpt"  # nothing to build the module from: a clear error
    torch.save({"state_dict": {"w": torch.zeros(2)}}, bare)
    with pytest.raises(
        FileNotFoundError, match=r"no config\.yaml in .*models.*and its hyper_parameters hold no config"
    ):
        evaluate.main([f"eval.checkpoint={bare}"])


@pytest.mark.slow
def test_evaluate_py_checkpoint_logs_offline_wandb(fake_stack, tmp_path, monkeypatch):
    import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    trained = compose([*BASE, *fake_stack])
    run = _fake_run(tmp_path, trained, {"weak_label": 5, "fashion_mnist": 3}, wandb_id="trainrun01")
    metrics = evaluate.main([f"eval.checkpoint={run}", "logger.wandb=true", "eval.datasets=[fashion_mnist]"])
    payload = json.loads((run / "eval" / "fashion_mnist.json").read_text())
    assert payload["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert set(payload["metrics"]) == set(metrics) == expected_names()["fashion_mnist"]
    # Logged into the checkpoint's own W&B run (its id from run.json), offline.
    assert list((tmp_path / "wandb").glob("offline-run-*-trainrun01")), "the training run was not resumed"
    # No W&B run to continue (random init): a new eval run, whose id the run directory keeps.
    evaluate.main([*BASE, *fake_stack, "logger.wandb=true", "eval.datasets=[fashion_mnist]", "run_name=rand"])
    new_id = json.loads((tmp_path / "runs" / "rand" / "run.json").read_text())["wandb_id"]
    assert new_id and list((tmp_path / "wandb").glob(f"offline-run-*-{new_id}"))
    # Another architecture on the command line: a clear error before any evaluation.
    with pytest.raises(CheckpointMismatchError, match="model.name"):
        evaluate.main([f"eval.checkpoint={run}", "model.name=resnet50"])


# --------------------------------------------------------------- weak_label_val memory and formats


def _as_label_ids(loader, width: int = 6, keyed: bool = False):
    """The same batches with padded label ids (-1) instead of dense multi-hot targets."""
    out = []
    for batch in loader:
        dense = batch["target"]
        ids = torch.full((dense.shape[0], width), -1, dtype=torch.long)
        for i, row in enumerate(dense):
            cols = torch.nonzero(row > 0).squeeze(1).flip(0)  # any order: the evaluation sorts them
            ids[i, : cols.numel()] = cols
        if keyed:  # the weak-label batch format of label ids + scores, without a dense target
            batch = {k: v for k, v in batch.items() if k != "target"}
            batch.update(label_ids=ids, label_weights=(ids >= 0).float())
        else:
            batch = {**batch, "target": ids}
        out.append(batch)
    return out


def _weak_label_val(fmt: str, x, y, batch_size: int = 16):
    def loader_fn(cfg, dataset, split):
        assert (dataset, split) == ("weak_label", "val")
        batches = make_loader(x, y, batch_size, prefix="wl-")
        return batches if fmt == "dense" else _as_label_ids(batches, keyed=fmt == "keyed")

    return loader_fn


def test_weak_label_val_label_ids_equal_dense_targets_and_the_dense_head_metrics():
    cfg = compose([*BASE, "eval.datasets=[weak_label_val]"])
    x, y = fashion_and_weak_label_splits()[("weak_label", "val")]
    module = FakeMultiTaskModule(width=8, dim=6, num_labels=5)
    got = {
        fmt: evaluate_dataset(cfg, module, "weak_label_val", _weak_label_val(fmt, x, y), False)["metrics"]
        for fmt in ("dense", "ids", "keyed")
    }
    assert got["dense"] == got["ids"] == got["keyed"]
    # The streamed head metrics equal the dense ones on the whole split (40 items <= eval.loo_queries).
    with torch.inference_mode():
        logits = module.heads["weak_label"](x)
    dense = weak_label_head_metrics(logits, y, [1, 5])
    for name, value in dense.items():
        assert got["dense"][f"eval/weak_label_val/head/{name}"] == pytest.approx(value, abs=1e-6), name
    ref = brute_metrics(x, y, x, y, [1, 5], "cosine", list(range(len(x))))
    for name, value in ref.items():
        assert got["ids"][f"eval/weak_label_val/backbone/float/{name}"] == pytest.approx(value, abs=1e-12)


def test_weak_label_val_queries_are_a_seeded_capped_choice():
    x, y = fashion_and_weak_label_splits()[("weak_label", "val")]
    module = FakeMultiTaskModule(width=8, dim=6, num_labels=5)
    runs = {}
    for seed in (0, 0, 1):
        cfg = compose([*BASE, "eval.datasets=[weak_label_val]", "eval.loo_queries=12", f"seed={seed}"])
        rows = loo_query_rows(cfg, len(x))
        out = evaluate_dataset(cfg, module, "weak_label_val", _weak_label_val("dense", x, y), False)
        assert out["counts"]["queries"] == 12 and out["counts"]["gallery"] == 40 and out["counts"]["head_items"] == 12
        ref, _ = evaluate_retrieval(x[rows], y[rows], x, y, [1, 5], self_index=rows)
        for name, value in ref.items():
            assert out["metrics"][f"eval/weak_label_val/backbone/float/{name}"] == pytest.approx(value, abs=1e-12)
        runs.setdefault(seed, []).append(rows)
    assert torch.equal(runs[0][0], runs[0][1]) and not torch.equal(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][0], torch.arange(12))  # a random choice, not the first items


class _PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of live CPU tensor storages created by torch ops while active (tensors made before,
    such as the loader's batches and the module's weights, are not counted)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.untyped_storage().data_ptr():
                key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if key in inputs and key not in self.live:
                    continue  # a view or no-op .to() of a tensor made before: not new memory
                if key in self.live:
                    self.live[key][0] += 1
                else:
                    self.live[key] = [1, size]
                    self.now += size
                    self.peak = max(self.peak, self.now)
                weakref.finalize(t, self._release, key)
        return out


def test_weak_label_val_memory_does_not_grow_with_the_label_count(monkeypatch):
    """C = 1k vs 100k on 40 items: the old path kept dense [N, C] targets and head logits (32 MB more at
    100k); here targets are id sets and head logits stream in blocks of HEAD_BLOCK_SCORES."""
    import evaluation.head_metrics as head_metrics

    monkeypatch.setattr(head_metrics, "HEAD_BLOCK_SCORES", 100_000)
    cfg = compose([*BASE, "eval.datasets=[weak_label_val]", "eval.features=[backbone]", "eval.binarize=false"])
    x, _ = fashion_and_weak_label_splits()[("weak_label", "val")]
    peaks, heads = {}, {}
    for num_labels in (1_000, 100_000):
        gen = torch.Generator().manual_seed(0)
        y = torch.zeros(len(x), num_labels)
        y[torch.arange(len(x)).repeat_interleave(3), torch.randint(0, num_labels, (3 * len(x),), generator=gen)] = 1
        y[:, 7] = 1  # one label every item shares
        module = FakeMultiTaskModule(width=8, dim=6, num_labels=num_labels)
        loader_fn = _weak_label_val("dense", x, y)
        loader_fn(cfg, "weak_label", "val")  # built before measuring: the batches are the loader's memory
        batches = loader_fn(cfg, "weak_label", "val")
        with _PeakTensorBytes() as meter:
            out = evaluate_dataset(cfg, module, "weak_label_val", lambda *a, b=batches: b, False)
        peaks[num_labels], heads[num_labels] = meter.peak, out["metrics"]["eval/weak_label_val/head/mAP"]
    assert heads[1_000] == heads[1_000] and heads[100_000] == heads[100_000]  # computed, not NaN
    growth = peaks[100_000] - peaks[1_000]
    assert growth < 2 * 2**20, f"peak tensor memory grew by {growth / 2**20:.1f} MiB from C=1k to C=100k"
