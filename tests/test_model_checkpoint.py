"""Checkpoints: weights_only loading, refusing pickle payloads, init_from reports, mismatch errors."""

from pathlib import Path

import pytest
import torch
from fixtures_model import NUM_CLASSES, combined_loader, cpu_trainer, make_batch, tiny_config

from lit_modules import CheckpointError, MultiTaskModule, load_module
from lit_modules.callbacks import ThroughputMonitor


def _save_plain(module: MultiTaskModule, path) -> str:
    """The two entries of a Lightning checkpoint that init_from / load_module read."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A real Lightning checkpoint of a 2-step run with EMA on."""
    torch.manual_seed(0)
    module = MultiTaskModule(tiny_config("optim.ema_decay=0.5"), NUM_CLASSES)
    trainer = cpu_trainer(2, callbacks=[ThroughputMonitor(window=1)])
    trainer.fit(module, train_dataloaders=combined_loader())
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_lightning_checkpoint_loads_with_weights_only(trained_ckpt):
    path, module = trained_ckpt
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == NUM_CLASSES
    assert ckpt["hyper_parameters"]["config"]["model"]["name"] == "vit_tiny_patch16_224"
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert not any("_orig_mod." in k for k in ckpt["state_dict"])
    loaded = load_module(path)
    assert not loaded.training
    live = module.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in loaded.state_dict().items())
    images = make_batch()["weak_label"]["image"]
    with torch.no_grad():
        assert torch.allclose(loaded.embed(images), module.eval().embed(images))


def test_load_module_use_ema_takes_the_averaged_weights(trained_ckpt):
    path, module = trained_ckpt
    ema = load_module(path, use_ema=True)
    live = load_module(path)
    key = "heads.weak_label.weight"
    assert torch.equal(ema.state_dict()[key], module.ema.module.state_dict()[key])
    assert not torch.equal(ema.state_dict()[key], live.state_dict()[key])


def test_pickle_payload_in_a_checkpoint_is_refused_and_not_executed(tmp_path, trained_ckpt):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = torch.load(trained_ckpt[0], weights_only=True)
    bad = tmp_path / "evil.ckpt"
    torch.save({**good, "extra": Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused to load.*weights_only=True"):
        load_module(bad)
    assert not marker.exists()


def test_unreadable_or_foreign_files_are_named(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable PyTorch checkpoint"):
        load_module(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.ckpt: not a checkpoint of this repo"):
        load_module(foreign)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_module(tmp_path / "missing.ckpt")
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match="sharded.ckpt is a directory but not a complete sharded FSDP"):
        load_module(sharded)


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    module = MultiTaskModule(tiny_config(tasks="weak_label"), {"weak_label": 12})
    return _save_plain(module, tmp_path_factory.mktemp("pre") / "pretrain.ckpt"), module


def test_init_from_loads_backbone_and_matching_heads_and_reports_new_keys(pretrain_ckpt):
    path, pre = pretrain_ckpt
    torch.manual_seed(2)
    multi = MultiTaskModule(tiny_config(), NUM_CLASSES)
    report = multi.load_pretrained(path)
    backbone_keys = sorted(k for k in pre.state_dict() if k.startswith("backbone."))
    assert report.loaded == sorted([*backbone_keys, "heads.weak_label.bias", "heads.weak_label.weight"])
    assert report.new == sorted(
        [
            "heads.embedding.proj.weight",  # no bias: the Zhai & Wu head (lit_modules/heads.py)
            "heads.embedding.proxies.weak_label",
            "heads.embedding.proxies.fashion_mnist",
            "heads.classifiers.fashion.weight",
            "heads.classifiers.fashion.bias",
        ]
    )
    assert report.mismatched == report.unused == report.resampled == []
    state, pre_state = multi.state_dict(), pre.state_dict()
    assert all(torch.equal(state[k], pre_state[k]) for k in report.loaded)
    assert "5 new" in report.summary() and report.as_dict()["path"] == path


def test_init_from_resamples_position_embeddings_for_another_img_size(pretrain_ckpt):
    multi = MultiTaskModule(tiny_config("data.img_size=48"), NUM_CLASSES)
    report = multi.load_pretrained(pretrain_ckpt[0])
    assert report.resampled == ["backbone.pos_embed"]
    assert multi.backbone.pos_embed.shape == (1, 1 + 36, 192)
    assert "backbone.pos_embed" in report.loaded


def test_init_from_other_label_space_keeps_backbone_skips_heads(tmp_path, pretrain_ckpt):
    raw = MultiTaskModule(tiny_config("data.weak_label.label_space=raw"), NUM_CLASSES)
    report = raw.load_pretrained(pretrain_ckpt[0])
    assert report.skipped_label_space == ["heads.weak_label.bias", "heads.weak_label.weight"]
    assert "heads.weak_label.weight" in report.new
    bigger = MultiTaskModule(tiny_config(), {"weak_label": 20, "fashion_mnist": 10})
    report = bigger.load_pretrained(pretrain_ckpt[0])
    assert ("heads.weak_label.weight", [12, 192], [20, 192]) not in report.mismatched  # skipped: other space
    assert "heads.weak_label.weight" in report.skipped_label_space


def test_init_from_another_architecture_is_a_clear_error(tmp_path, pretrain_ckpt):
    resnet = MultiTaskModule(tiny_config(arch="resnet"), NUM_CLASSES)
    with pytest.raises(CheckpointError, match=r"init_from=.*pretrain.ckpt: backbone differs.*resnet10t"):
        resnet.load_pretrained(pretrain_ckpt[0])
    deeper = MultiTaskModule(tiny_config("model.kwargs.depth=3"), NUM_CLASSES)
    with pytest.raises(CheckpointError, match="backbone differs"):
        deeper.load_pretrained(pretrain_ckpt[0])


def test_init_from_config_key_runs_at_fit_start(pretrain_ckpt):
    path, pre = pretrain_ckpt
    multi = MultiTaskModule(tiny_config(f"init_from={path}", "stage=multitask"), NUM_CLASSES)
    # lr 0: the weights after one step are the loaded ones
    multi.cfg["optim"]["lr"] = 0.0
    cpu_trainer(1).fit(multi, train_dataloaders=combined_loader())
    assert multi.init_report is not None and len(multi.init_report.loaded) > 0
    assert torch.equal(multi.backbone.pos_embed, pre.backbone.pos_embed)


def test_resume_with_another_label_space_is_a_clear_error(trained_ckpt):
    path, _ = trained_ckpt
    other = MultiTaskModule(tiny_config("optim.ema_decay=0.5"), {"weak_label": 20, "fashion_mnist": 10})
    trainer = cpu_trainer(3)
    with pytest.raises(CheckpointError, match=r"last.ckpt does not fit this run: label space of 'weak_label' differs"):
        trainer.fit(other, train_dataloaders=combined_loader(), ckpt_path=path)


# --------------------------------------------------------------------- sharded FSDP checkpoint folders


def _write_sharded(ckpt_file, folder):
    """Write a checkpoint as FSDP does with state_dict_type="sharded", with Lightning's own writer
    (``FSDPStrategy.save_checkpoint``: DCP shards of model + optimizer, then ``meta.pt``; one process, rank 0)."""
    from lightning.pytorch.strategies import FSDPStrategy

    checkpoint = torch.load(ckpt_file, weights_only=True)
    FSDPStrategy(state_dict_type="sharded").save_checkpoint(checkpoint, folder)
    return folder


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, trained_ckpt):
    """A run directory whose checkpoints/last.ckpt is a sharded FSDP folder of ``trained_ckpt``."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    folder = _write_sharded(trained_ckpt[0], run / "checkpoints" / "last.ckpt")
    return run, folder


def test_sharded_folder_has_lightnings_layout(sharded_run):
    _, folder = sharded_run
    assert folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "meta.pt"]
    meta = torch.load(folder / "meta.pt", weights_only=True)
    assert "state_dict" not in meta and "hyper_parameters" in meta and "global_step" in meta


def test_load_module_reads_a_sharded_folder_weights_only(sharded_run, trained_ckpt):
    _, folder = sharded_run
    from_folder, from_file = load_module(folder), load_module(trained_ckpt[0])
    ref = from_file.state_dict()
    got = from_folder.state_dict()
    assert set(got) == set(ref) and all(torch.equal(v, ref[k]) for k, v in got.items())
    assert all(v.device.type == "cpu" for v in got.values())


def test_init_from_a_sharded_folder(sharded_run, trained_ckpt):
    _, folder = sharded_run
    fresh = MultiTaskModule(tiny_config("optim.ema_decay=0.5"), NUM_CLASSES)
    report = fresh.load_pretrained(folder)
    ref = load_module(trained_ckpt[0]).state_dict()
    assert report.loaded and not report.mismatched
    assert torch.equal(fresh.state_dict()["backbone.pos_embed"], ref["backbone.pos_embed"])


def test_resume_auto_and_resume_path_accept_a_sharded_folder(sharded_run, tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lit_modules.trainer import resume_checkpoint

    run, folder = sharded_run
    run_dir = SimpleNamespace(last_checkpoint=folder)
    assert resume_checkpoint(OmegaConf.create({"resume": "auto"}), run_dir) == str(folder)
    assert resume_checkpoint(OmegaConf.create({"resume": str(folder)}), run_dir) == str(folder)
    assert resume_checkpoint(OmegaConf.create({"resume": "never"}), run_dir) is None
    partial = tmp_path / "last.ckpt"  # a save killed after the shards, before rank 0's meta.pt
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="incomplete sharded checkpoint"):
        resume_checkpoint(OmegaConf.create({"resume": "auto"}), SimpleNamespace(last_checkpoint=partial))
    with pytest.raises(FileNotFoundError, match="complete sharded checkpoint folder"):
        resume_checkpoint(OmegaConf.create({"resume": str(partial)}), run_dir)
    empty = SimpleNamespace(last_checkpoint=tmp_path / "none" / "last.ckpt")
    assert resume_checkpoint(OmegaConf.create({"resume": "auto"}), empty) is None


def test_evaluate_resolves_a_run_dir_with_a_sharded_last_checkpoint(sharded_run):
    from evaluation.checkpoint import read_hparams, resolve_checkpoint

    run, folder = sharded_run
    assert resolve_checkpoint(run) == (folder, run)
    assert resolve_checkpoint(folder) == (folder, run)
    assert read_hparams(folder)["num_classes"] == NUM_CLASSES


def test_a_crafted_dcp_index_is_refused_not_executed(sharded_run, tmp_path):
    import pickle
    import shutil

    _, folder = sharded_run
    evil = shutil.copytree(folder, tmp_path / "evil.ckpt")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (evil / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="evil.ckpt: cannot read the sharded checkpoint's weights"):
        load_module(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_train_py_init_from_loads_the_weights_once_at_fit_start(tmp_path, monkeypatch):
    """train.py leaves init_from to MultiTaskModule.setup (the one load path): the second run reads the first
    run's last.ckpt once, inside Trainer.fit (before, train.py loaded it outside the Trainer)."""
    import train
    from tests.fixtures_data import make_dataset
    from tests.fixtures_reliability import train_args

    shards = make_dataset(tmp_path / "wl", n_train=32, n_val=8, shard_size=8, scales=(1.0,), img_size=16)
    train.main(train_args(shards["manifest"], tmp_path / "runs", "pre", "trainer.max_steps=2"))
    calls = []
    load = MultiTaskModule.load_pretrained

    def spy(self, path):
        calls.append((path, self.trainer.state.fn))  # self.trainer raises outside a Trainer
        return load(self, path)

    monkeypatch.setattr(MultiTaskModule, "load_pretrained", spy)
    pre = tmp_path / "runs" / "pre"
    train.main(train_args(shards["manifest"], tmp_path / "runs", "post", "trainer.max_steps=1", f"init_from={pre}"))
    assert calls == [(str(pre / "checkpoints" / "last.ckpt"), "fit")]


def test_a_local_sharded_save_that_dies_midway_leaves_the_previous_save_whole(trained_ckpt, tmp_path):
    """Lightning's local sharded save rewrote the folder in place: a save killed after its shards and index, before
    its meta.pt, left the new weights under the old meta.pt (a step-2 checkpoint carrying step-4 weights, loaded
    without a word). Local saves are now versioned like those on a bucket: a new folder per save, committed by an
    atomic CURRENT file, so the previous save is what resume and load read, whole, until the next save commits."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lit_modules.checkpoints import read_checkpoint_meta
    from lit_modules.strategy import ObjectStoreFSDPStrategy
    from lit_modules.trainer import AtomicCheckpointIO, resume_checkpoint

    source = torch.load(trained_ckpt[0], weights_only=True)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    strategy = ObjectStoreFSDPStrategy(state_dict_type="sharded")
    strategy.checkpoint_io = AtomicCheckpointIO()
    run = SimpleNamespace(last_checkpoint=last)
    auto = OmegaConf.create({"resume": "auto"})

    def at(step: int, **extra) -> dict:
        ckpt = {**source, "global_step": step, **extra}
        ckpt["state_dict"] = {k: v + step for k, v in source["state_dict"].items()}
        return ckpt

    def weights_are(path, step: int) -> bool:
        ref = load_module(trained_ckpt[0]).state_dict()
        got = load_module(path).state_dict()
        return set(got) == set(ref) and all(torch.equal(got[k], v + step) for k, v in ref.items())

    strategy.save_checkpoint(at(2), last)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        strategy.save_checkpoint(at(4, unwritable=lambda: None), last)
    resumed = resume_checkpoint(auto, run)
    assert read_checkpoint_meta(resumed)["global_step"] == 2 and weights_are(resumed, 2)
    assert read_checkpoint_meta(last)["global_step"] == 2 and weights_are(last, 2)  # evaluate, init_from
    strategy.save_checkpoint(at(6), last)
    assert sorted(p.name for p in last.iterdir())[0] == "CURRENT" and len(list(last.iterdir())) == 2
    resumed = resume_checkpoint(auto, run)
    assert read_checkpoint_meta(resumed)["global_step"] == 6 and weights_are(resumed, 6)
    assert sorted(p.name for p in Path(resumed).iterdir()) == [".metadata", "__0_0.distcp", "meta.pt"]


def test_a_full_save_over_a_local_versioned_sharded_folder_replaces_it(trained_ckpt, tmp_path):
    from lit_modules.checkpoints import is_sharded_checkpoint, read_checkpoint_meta
    from lit_modules.strategy import ObjectStoreFSDPStrategy
    from lit_modules.trainer import AtomicCheckpointIO

    source = torch.load(trained_ckpt[0], weights_only=True)
    last = tmp_path / "last.ckpt"
    sharded = ObjectStoreFSDPStrategy(state_dict_type="sharded")
    sharded.checkpoint_io = AtomicCheckpointIO()
    sharded.save_checkpoint({**source, "global_step": 2}, last)
    assert is_sharded_checkpoint(last)
    full = ObjectStoreFSDPStrategy(state_dict_type="full")
    full.checkpoint_io = AtomicCheckpointIO()
    full.save_checkpoint({**source, "global_step": 3}, last)
    assert last.is_file() and read_checkpoint_meta(last)["global_step"] == 3


def test_lightning_loading_a_local_versioned_sharded_folder_by_its_name_reads_the_committed_save(
    trained_ckpt, tmp_path, monkeypatch
):
    """``trainer.test(ckpt_path="best")`` / ``ckpt_path=<ModelCheckpoint.best_model_path>`` hand the strategy the
    checkpoint's own name (``best.ckpt/``), not the save folder its CURRENT names: the strategy followed CURRENT for
    a bucket only, and Lightning's loader, which knows only its own layout, refused the local versioned folder."""
    from lightning.fabric.strategies.fsdp import _is_sharded_checkpoint
    from lightning.pytorch.strategies import FSDPStrategy

    from lit_modules.strategy import ObjectStoreFSDPStrategy
    from lit_modules.trainer import AtomicCheckpointIO

    source = torch.load(trained_ckpt[0], weights_only=True)
    best = tmp_path / "best.ckpt"
    strategy = ObjectStoreFSDPStrategy(state_dict_type="sharded")
    strategy.checkpoint_io = AtomicCheckpointIO()
    strategy.save_checkpoint({**source, "global_step": 2}, best)
    loaded: list[Path] = []
    monkeypatch.setattr(FSDPStrategy, "load_checkpoint", lambda self, path, weights_only=None: loaded.append(path))
    strategy.load_checkpoint(str(best))
    [committed] = [p for p in best.iterdir() if p.name != "CURRENT"]
    assert [Path(p) for p in loaded] == [committed] and _is_sharded_checkpoint(committed)  # what Lightning loads
