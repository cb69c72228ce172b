"""The module under Lightning: fitting tiny ViT/ResNet configs, metric names, the non-finite-loss guard,
strategies, and DDP with 2 CPU processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures_model import NUM_CLASSES, LossRecorder, combined_loader, cpu_trainer, tiny_config
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.vision_transformer import Block

from lit_modules import MultiTaskModule, NonFiniteLossError
from lit_modules.callbacks import ThroughputMonitor
from lit_modules.strategy import build_strategy

ROOT = Path(__file__).resolve().parent.parent


class _Clock:
    """A perf_counter that advances a fixed 0.5 s per reading: throughput has a known answer."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.5
        return self.now


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_tiny_config_fits_a_few_steps(arch, monkeypatch):
    import lightning.pytorch.callbacks.throughput_monitor as lightning_monitor

    # The monitor's clock reads 0.5 s per batch and the device a 1 TFLOP/s peak, so every figure is known.
    monkeypatch.setattr(lightning_monitor, "time", _Clock())
    monkeypatch.setattr(lightning_monitor, "get_available_flops", lambda device, dtype: 1e12)
    torch.manual_seed(0)
    module = MultiTaskModule(tiny_config(arch=arch), NUM_CLASSES)
    recorder, monitor = LossRecorder(), ThroughputMonitor(window=3)
    trainer = cpu_trainer(12, callbacks=[recorder, monitor])
    trainer.fit(module, train_dataloaders=combined_loader())
    assert trainer.global_step == 12
    assert len(recorder.losses) == 12
    # two fixed batches, cycled: the loss must fall well below where it started
    assert sum(recorder.losses[-2:]) < 0.8 * sum(recorder.losses[:2])
    logged = trainer.callback_metrics
    for name in ("train/loss", "train/weak_label/loss", "train/embedding/fashion_mnist/loss", "train/clf/fashion/loss"):
        assert torch.isfinite(logged[name]), name
    # 8 images per batch (2 datasets x 4) every 0.5 s; 3 x forward FLOPs of 8 images per batch against 1e12
    assert float(logged["perf/images_per_sec"]) == pytest.approx(16.0)
    assert float(logged["perf/step_time_s"]) == pytest.approx(0.5)
    assert module.flops_per_batch == int(3 * monitor.flops_per_image * 8) and monitor.flops_per_image > 1e5
    assert float(logged["perf/mfu"]) == pytest.approx(3 * monitor.flops_per_image * 16 / 1e12, rel=1e-5)


def test_throughput_monitor_counts_images_and_skips_unknown_peaks(monkeypatch):
    from lit_modules.callbacks import images_in_batch

    image = lambda n: torch.zeros(n, 3, 2, 2)  # noqa: E731
    assert images_in_batch({"weak_label": {"image": image(3), "key": ["k"] * 3}, "fm": {"image": image(5)}}) == 8
    assert images_in_batch({"image": image(4), "target": torch.zeros(4)}) == 4  # one dataset's part (validation)
    assert images_in_batch((image(2), torch.zeros(2))) == 2
    module = MultiTaskModule(tiny_config(), NUM_CLASSES)
    trainer = cpu_trainer(3, callbacks=[ThroughputMonitor(window=1, count_flops=False)])
    trainer.fit(module, train_dataloaders=combined_loader())
    assert "perf/images_per_sec" in trainer.callback_metrics and "perf/mfu" not in trainer.callback_metrics  # CPU


def test_validation_logs_the_architecture_metric_names():
    module = MultiTaskModule(tiny_config(), NUM_CLASSES)
    trainer = cpu_trainer(1, limit_val_batches=None)
    (metrics,) = trainer.validate(module, dataloaders=combined_loader(), verbose=False)
    assert set(metrics) == {
        "val/loss",
        "val/weak_label/loss",
        "val/embedding/weak_label/loss",
        "val/embedding/fashion_mnist/loss",
        "val/clf/fashion/loss",
        "val/weak_label/mAP",
        "val/weak_label/p@1",
        "val/weak_label/p@5",
        "val/clf/fashion/acc",
    }
    assert 0.0 <= metrics["val/weak_label/mAP"] <= 1.0 and 0.0 <= metrics["val/clf/fashion/acc"] <= 1.0


def test_nan_loss_stops_the_run_naming_step_and_task():
    module = MultiTaskModule(tiny_config(), NUM_CLASSES)
    trainer = cpu_trainer(4)
    # sample 5 is in the second batch (batch size 4): global step 1
    with pytest.raises(NonFiniteLossError, match=r"global step 1 .*weak_label.*weak_label-0-5"):
        trainer.fit(module, train_dataloaders=combined_loader(nan_at=(5,)))
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_loss_skip_mode_leaves_weights_and_optimizer_untouched():
    cfg = tiny_config("trainer.nonfinite_loss=skip")
    runs = {}
    for steps in (1, 2):  # step 1 holds the NaN image: after it, everything must equal the 1-step run
        torch.manual_seed(0)
        module = MultiTaskModule(cfg, NUM_CLASSES)
        trainer = cpu_trainer(steps)
        trainer.fit(module, train_dataloaders=combined_loader(nan_at=(5,)))
        adam = trainer.optimizers[0].state
        runs[steps] = (module, {k: v.clone() for k, v in module.state_dict().items()}, adam)
    (_, one, adam_one), (module, two, adam_two) = runs[1], runs[2]
    assert module.nonfinite_skipped == 1 and runs[1][0].nonfinite_skipped == 0
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    steps_one = sorted(float(s["step"]) for s in adam_one.values())
    assert steps_one == sorted(float(s["step"]) for s in adam_two.values()) and set(steps_one) == {1.0}


def test_nan_loss_skip_mode_keeps_training():
    module = MultiTaskModule(tiny_config("trainer.nonfinite_loss=skip"), NUM_CLASSES)
    recorder = LossRecorder()
    trainer = cpu_trainer(4, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=combined_loader(nan_at=(5,)))
    assert module.nonfinite_skipped == 2  # batches 1 and 3 hold the NaN image
    assert recorder.losses[1] == recorder.losses[3] == 0.0 and recorder.losses[0] > 0 and recorder.losses[2] > 0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_build_strategy_ddp_fsdp_and_passthrough():
    combined = build_strategy(tiny_config("trainer.strategy=ddp"))
    assert isinstance(combined, DDPStrategy)
    assert combined._ddp_kwargs == {"find_unused_parameters": False, "static_graph": False}
    interleave = build_strategy(tiny_config("trainer.strategy=ddp", "data.mixing.mode=interleave"))
    assert interleave._ddp_kwargs["find_unused_parameters"] is True
    assert build_strategy(tiny_config()) == "auto"
    assert build_strategy(tiny_config("trainer.strategy=ddp_spawn")) == "ddp_spawn"

    cfg = tiny_config()  # compose refuses fsdp on a CPU machine: edit the plain dict
    cfg["trainer"]["strategy"] = "fsdp"
    fsdp = build_strategy(cfg)
    assert isinstance(fsdp, FSDPStrategy)
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert fsdp._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert fsdp.kwargs["use_orig_params"] is True and fsdp._state_dict_type == "sharded"
    cfg["trainer"]["fsdp"]["activation_checkpointing"] = False
    assert build_strategy(cfg)._activation_checkpointing_kwargs == {}

    cnn = tiny_config(arch="resnet")
    cnn["trainer"]["strategy"] = "fsdp"
    assert build_strategy(cnn).kwargs["auto_wrap_policy"]._module_classes == {BasicBlock}
    cnn["model"]["name"] = "resnet50"
    assert build_strategy(cnn).kwargs["auto_wrap_policy"]._module_classes == {Bottleneck}
    cnn["optim"]["ema_decay"] = 0.999
    with pytest.raises(ValueError, match="ema_decay"):
        build_strategy(cnn)


DDP_SCRIPT = """
import json, os, sys
sys.path[:0] = [{root!r}, {tests!r}]
import lightning.pytorch as pl
import torch
from fixtures_model import NUM_CLASSES, combined_loader, cpu_trainer, tiny_config
from lit_modules import MultiTaskModule
from lit_modules.strategy import build_strategy

pl.seed_everything(0)
cfg = tiny_config("trainer=ddp_cpu", "trainer.nonfinite_loss=skip", "trainer.max_steps=4")
module = MultiTaskModule(cfg, NUM_CLASSES)
initial = sum(float(p.double().sum()) for p in module.parameters())
trainer = cpu_trainer(4, devices=2, strategy=build_strategy(cfg))
# 16 samples, DistributedSampler: rank 0 reads 0, 2, ..., 14; sample 10 is NaN -> its 2nd batch (steps 1, 3)
trainer.fit(module, train_dataloaders=combined_loader(n=16, nan_at=(10,)))
out = {{"rank": trainer.global_rank, "world": trainer.world_size, "skipped": module.nonfinite_skipped,
       "initial": initial, "checksum": sum(float(p.double().sum()) for p in module.parameters()),
       "finite": all(bool(torch.isfinite(p).all()) for p in module.parameters())}}
with open(os.path.join({out!r}, f"rank{{trainer.global_rank}}.json"), "w") as f:
    json.dump(out, f)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync_and_skip_together(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), out=str(tmp_path))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # the NaN is only on rank 0, yet both ranks skip the same 2 steps (or DDP would hang)
    assert [r["skipped"] for r in ranks] == [2, 2]
    assert all(r["finite"] for r in ranks)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # replicas identical
    assert ranks[0]["checksum"] != pytest.approx(ranks[0]["initial"], rel=1e-9)  # and they trained


def test_mfu_peak_is_the_dense_bf16_figure_where_lightning_has_none_or_a_sparse_one(monkeypatch):
    from lightning.fabric.utilities.throughput import get_available_flops

    from lit_modules.callbacks import available_flops

    cuda = torch.device("cuda", 0)  # a device object needs no GPU; only its name is looked up
    for name, dense in (("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        lightning = get_available_flops(cuda, torch.bfloat16)
        assert available_flops(cuda, lightning) == dense, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert get_available_flops(cuda, torch.bfloat16) is None  # why the repo keeps its table: Lightning has no "H200"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    assert available_flops(cuda, 165e12) == 165e12  # not listed here: Lightning's figure
    assert available_flops(torch.device("cpu"), None) is None
