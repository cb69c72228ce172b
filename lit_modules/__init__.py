"""Backbones, heads, losses, the multi-task LightningModule, strategies and callbacks."""

from lit_modules.checkpoints import CheckpointError, InitReport
from lit_modules.multitask import MultiTaskModule, NonFiniteLossError, load_module

__all__ = ["MultiTaskModule", "load_module", "CheckpointError", "InitReport", "NonFiniteLossError"]
