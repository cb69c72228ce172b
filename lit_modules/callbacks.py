"""Throughput and model-FLOPs-utilisation logging.

``perf/images_per_sec`` (all ranks together), ``perf/step_time_s`` and ``perf/mfu`` are measured over
windows of training batches: the wall time between the ends of the first and last batch of a window
(so data loading counts, compile/warm-up before the first window does not), with one
``torch.cuda.synchronize`` per window. Model FLOPs are counted once with
``torch.utils.flop_counter.FlopCounterMode`` for one forward at the configured size (backbone and
heads), times 3 for forward + backward (activation recomputation is not counted: model FLOPs, not
hardware FLOPs), against the device's dense bf16 peak.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ThroughputMonitor", "PEAK_BF16_FLOPS", "device_peak_flops", "mfu"]

# Dense (no sparsity) bf16 tensor-core peaks per GPU, from NVIDIA datasheets. Matched in order
# against torch.cuda.get_device_name().lower(), so more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("gh200", 989e12),
    ("h200 nvl", 835e12),
    ("h200", 989e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("h800", 989e12),
    ("b200", 2250e12),
    ("b100", 1750e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("a10", 125e12),
)


def device_peak_flops(device_name: str | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device by name (default: the current device); None when
    unknown or on CPU."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    name = device_name.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def mfu(flops_per_image: float, images_per_sec: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: training FLOPs (3 x forward) per second over the peak of ``devices``."""
    return 3.0 * flops_per_image * images_per_sec / (peak_flops * devices)


class ThroughputMonitor(pl.Callback):
    """Log ``perf/images_per_sec``, ``perf/step_time_s`` and (on known GPUs) ``perf/mfu``.

    Args:
        window: batches per measurement window (default: the trainer's ``log_every_n_steps``).
        count_flops: count the model's FLOPs at fit start (meta device, no memory).
    """

    def __init__(self, window: int | None = None, count_flops: bool = True):
        super().__init__()
        self.window = window
        self.count_flops = count_flops
        self.flops_per_image: float | None = None
        self.peak: float | None = None
        self._t0: float | None = None
        self._images = 0
        self._batches = 0
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.window = self.window or max(1, int(trainer.log_every_n_steps))
        if pl_module.device.type == "cuda":
            self.peak = device_peak_flops(torch.cuda.get_device_name(pl_module.device))
        if self.count_flops and hasattr(pl_module, "count_flops"):
            self.flops_per_image = float(pl_module.count_flops(batch_size=1))
            rank_zero_info(f"model FLOPs per image (forward): {self.flops_per_image / 1e9:.3f} GFLOPs")
        self._t0 = None

    @staticmethod
    def _images_in(batch: Any) -> int:
        if isinstance(batch, dict):
            return sum(
                int(part["image"].shape[0]) for part in batch.values() if isinstance(part, dict) and "image" in part
            )
        return 0

    def _now(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if self._t0 is None:  # the window opens at the end of a batch, so start-up is excluded
            self._t0 = self._now(pl_module.device)
            self._images = self._batches = 0
        else:
            self._images += self._images_in(batch)
            self._batches += 1
            if self._batches >= self.window:
                elapsed = self._now(pl_module.device) - self._t0
                world = trainer.world_size
                ips = self._images * world / elapsed
                self.last = {"perf/images_per_sec": ips, "perf/step_time_s": elapsed / self._batches}
                if self.peak and self.flops_per_image:
                    self.last["perf/mfu"] = mfu(self.flops_per_image, ips, self.peak, world)
                self._t0 = time.perf_counter()
                self._images = self._batches = 0
        for name, value in self.last.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = None  # validation time is not training time: reopen the window afterwards
