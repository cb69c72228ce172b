"""The training recipe's rules on known inputs: the peak LR from the global batch (timm train.py semantics)."""

import math

import pytest
from fixtures_model import NUM_CLASSES, tiny_config

from lit_modules import MultiTaskModule
from lit_modules.optim import global_batch_size, resolve_lr


@pytest.mark.parametrize(
    "cfg,batch,expected",
    [
        # Adam-family default: sqrt. big_vision's 1e-3 at 4,096 -> batch 32 on one CPU: 1e-3 * sqrt(1/128).
        ({"name": "adamw", "lr_base": 1e-3, "lr_base_size": 4096}, 32, 1e-3 / math.sqrt(128)),
        ({"name": "adamw", "lr_base": 1e-3, "lr_base_size": 4096}, 4096, 1e-3),
        ({"name": "lamb", "lr_base": 2e-3, "lr_base_size": 256}, 1024, 4e-3),
        # Anything else: linear (timm's rule for SGD-like optimizers).
        ({"name": "sgd", "lr_base": 0.1, "lr_base_size": 256}, 1024, 0.4),
        ({"name": "momentum", "lr_base": 0.1, "lr_base_size": 256}, 64, 0.025),
        # Explicit scale rules override the family default.
        ({"name": "adamw", "lr_base": 1e-3, "lr_base_size": 256, "lr_base_scale": "linear"}, 64, 2.5e-4),
        ({"name": "sgd", "lr_base": 0.1, "lr_base_size": 256, "lr_base_scale": "sqrt"}, 64, 0.05),
        ({"name": "adamw", "lr_base": 3e-4, "lr_base_size": 256, "lr_base_scale": "none"}, 8192, 3e-4),
    ],
)
def test_lr_from_global_batch_known_values(cfg, batch, expected):
    lr, how = resolve_lr(cfg, batch)
    assert lr == pytest.approx(expected, rel=1e-12)
    assert "lr_base" in how


def test_explicit_lr_wins_over_the_rule():
    lr, how = resolve_lr({"name": "adamw", "lr": 3e-4, "lr_base": 1e-3, "lr_base_size": 4096}, 32)
    assert lr == 3e-4 and "explicitly" in how


def test_bad_scale_rule_is_named():
    with pytest.raises(ValueError, match="lr_base_scale"):
        resolve_lr({"lr_base_scale": "cubic"}, 32)
    with pytest.raises(ValueError, match="lr_base_size"):
        resolve_lr({"lr_base_size": 0}, 32)


def test_global_batch_counts_devices_and_accumulation():
    assert global_batch_size(32) == 32
    assert global_batch_size(32, world_size=8) == 256
    assert global_batch_size(32, world_size=8, accumulate_grad_batches=4) == 1024
    assert global_batch_size(256, world_size=16 * 8, accumulate_grad_batches=1) == 32768
    with pytest.raises(ValueError):
        global_batch_size(32, world_size=0)


class _FakeTrainer:
    """What MultiTaskModule.peak_lr reads from a Lightning Trainer."""

    def __init__(self, world_size: int, accumulate: int):
        self.world_size, self.accumulate_grad_batches, self.logger = world_size, accumulate, None
        self.estimated_stepping_batches = 10


@pytest.mark.parametrize("world,accumulate", [(1, 1), (4, 1), (2, 8)])
def test_module_optimizer_lr_follows_world_size_and_accumulation(world, accumulate):
    # batch 16 per device, lr_base 1e-3 at 256, AdamW (sqrt): lr = 1e-3 * sqrt(16 * world * acc / 256).
    cfg = tiny_config("data.batch_size=16", "optim.lr_base=1e-3", "optim.lr_base_size=256", "optim.min_lr=0")
    m = MultiTaskModule(cfg, NUM_CLASSES)
    m._trainer = _FakeTrainer(world, accumulate)
    opt = m.configure_optimizers()["optimizer"]
    expected = 1e-3 * math.sqrt(16 * world * accumulate / 256)
    assert m.resolved_lr == pytest.approx(expected)
    # warmup_steps=0 in tiny_config: every group starts at its peak (lr_scale 1 without layer decay).
    assert {round(g["lr"] / expected, 9) for g in opt.param_groups} == {1.0}


def test_module_explicit_lr_ignores_world_size():
    m = MultiTaskModule(tiny_config("optim.lr=0.02"), NUM_CLASSES)
    m._trainer = _FakeTrainer(8, 4)
    opt = m.configure_optimizers()["optimizer"]
    assert {g["lr"] for g in opt.param_groups} == {0.02}
