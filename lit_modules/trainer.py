"""Build the Lightning Trainer of a run from its config: strategy, precision, checkpoints, callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig

from tracking.run_dir import RunDir


def checkpoint_callbacks(cfg: DictConfig, run_dir: RunDir) -> list[ModelCheckpoint]:
    """`last.ckpt` every trainer.checkpoint_every_n_steps (and at the end), `best.ckpt` by val/loss.

    Lightning writes checkpoints through an fsspec transaction (temporary file, then rename), so a
    crash while writing leaves the previous checkpoint intact (tests/test_reliability.py).
    """
    last = ModelCheckpoint(
        dirpath=run_dir.checkpoints,
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        save_on_train_epoch_end=True,
    )
    best = ModelCheckpoint(
        dirpath=run_dir.checkpoints,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    return [last, best]


def build_trainer(
    cfg: DictConfig,
    run_dir: RunDir,
    logger=None,
    callbacks: Sequence[Callback] = (),
    enable_checkpointing: bool = True,
) -> Trainer:
    """A Trainer driven by steps (webdataset epochs are nominal), with the run's strategy."""
    from lit_modules.strategy import build_strategy

    t = cfg.trainer
    all_callbacks: list[Callback] = [TQDMProgressBar(refresh_rate=max(1, min(20, t.log_every_n_steps)))]
    if logger is not None:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    if enable_checkpointing:
        all_callbacks.extend(checkpoint_callbacks(cfg, run_dir))
    all_callbacks.extend(callbacks)
    limit_val: float | None = t.limit_val_batches
    if limit_val is not None and float(limit_val).is_integer() and limit_val > 1:
        limit_val = int(limit_val)
    return Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None if t.val_check_interval else 1,
        limit_val_batches=limit_val,
        num_sanity_val_steps=t.num_sanity_val_steps,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=all_callbacks,
        enable_checkpointing=enable_checkpointing,
        default_root_dir=str(Path(run_dir.path)),
        use_distributed_sampler=True,
    )


def resume_checkpoint(cfg: DictConfig, run_dir: RunDir) -> str | None:
    """The checkpoint to resume from: resume=auto picks <run_dir>/checkpoints/last.ckpt if present."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return str(run_dir.last_checkpoint) if run_dir.last_checkpoint.is_file() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint file")
    return str(path)
