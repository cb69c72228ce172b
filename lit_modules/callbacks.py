"""Throughput and model-FLOPs-utilisation logging: Lightning's ``ThroughputMonitor`` under the repo's metric names.

Lightning measures (a rolling window of training batches, data loading included, validation time taken out, a
CUDA synchronize before each reading) and ``lightning.fabric.utilities.throughput.measure_flops`` counts FLOPs
(``MultiTaskModule.count_flops``: one forward at the configured size on a meta-device twin). This subclass adds:

- the batch size of the per-dataset batch dict (images summed over datasets);
- ``pl_module.flops_per_batch`` = 3 x forward FLOPs per image x images (model FLOPs: activation recomputation is
  not counted);
- the device peak from ``PEAK_BF16_FLOPS`` (dense bf16) when the device is listed, else Lightning's
  ``get_available_flops``: Lightning's table quotes sparse bf16 figures for H200 and H100 NVL and finds no entry
  for the plain name "NVIDIA H200";
- ``perf/images_per_sec`` (all ranks together), ``perf/step_time_s`` and ``perf/mfu`` through ``pl_module.log``,
  so they reach ``trainer.callback_metrics`` (and metrics.json) under the names tables and W&B panels read.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ThroughputMonitor as LightningThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ThroughputMonitor", "PEAK_BF16_FLOPS", "available_flops", "device_peak_flops", "images_in_batch", "mfu"]

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


def available_flops(device: torch.device, fallback: float | None) -> float | None:
    """Peak FLOP/s of one device for MFU: ``PEAK_BF16_FLOPS`` (dense bf16) for a listed CUDA device, else
    ``fallback`` (what Lightning's ``get_available_flops`` gives for the run's precision; None on CPU)."""
    listed = device_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return listed or fallback


def images_in_batch(batch: Any) -> int:
    """Images in a batch: summed over a ``{dataset: {"image": ...}}`` dict, or one ``{"image": ...}`` part."""
    if isinstance(batch, dict) and "image" in batch:
        return int(batch["image"].shape[0])
    if isinstance(batch, dict):
        return sum(int(p["image"].shape[0]) for p in batch.values() if isinstance(p, dict) and "image" in p)
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0])


class ThroughputMonitor(LightningThroughputMonitor):
    """Log ``perf/images_per_sec``, ``perf/step_time_s`` and (on GPUs with a known peak) ``perf/mfu``.

    Args:
        window: training batches per rolling measurement window (default: the trainer's ``log_every_n_steps``).
        count_flops: count the model's FLOPs at fit start (meta device, no memory).
    """

    def __init__(self, window: int | None = None, count_flops: bool = True):
        super().__init__(batch_size_fn=images_in_batch)
        self.window = window
        self.count_flops = count_flops
        self.flops_per_image: float | None = None
        self.peak: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A window of N batches is N + 1 readings: rates come from differences, so the first batch's start-up is out.
        self.kwargs["window_size"] = max(1, self.window or int(trainer.log_every_n_steps)) + 1
        super().setup(trainer, pl_module, stage)
        self.peak = available_flops(trainer.strategy.root_device, self.available_flops)
        for throughput in self._throughputs.values():
            throughput.available_flops = self.peak

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.flops_per_batch = None  # Lightning reads it every batch; set per batch below
        if self.count_flops and hasattr(pl_module, "count_flops"):
            self.flops_per_image = float(pl_module.count_flops(batch_size=1))
            rank_zero_info(f"model FLOPs per image (forward): {self.flops_per_image / 1e9:.3f} GFLOPs")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self.flops_per_image:
            pl_module.flops_per_batch = int(3 * self.flops_per_image * images_in_batch(batch))

    def _compute(self, trainer: pl.Trainer, iter_num: int | None = None) -> None:
        # Replaces Lightning's logging (its "train|device/samples_per_sec" names, only on logging steps): the repo's
        # names, every step once a window is full, through pl_module.log so callback_metrics holds them.
        if trainer.state.stage != RunningStage.TRAINING:
            return  # validation throughput is not training throughput
        metrics = self._throughputs[RunningStage.TRAINING].compute()
        if "device/samples_per_sec" not in metrics:
            return  # the first window is not full yet
        last = {
            "perf/images_per_sec": metrics["device/samples_per_sec"] * trainer.world_size,
            "perf/step_time_s": 1.0 / metrics["device/batches_per_sec"],
        }
        if "device/mfu" in metrics:
            last["perf/mfu"] = metrics["device/mfu"]
        for name, value in last.items():
            trainer.lightning_module.log(name, value, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)
