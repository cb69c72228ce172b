"""The multi-task LightningModule: one timm backbone, a dict of task heads, per-task losses and metrics.

Batches are dicts keyed by dataset name (docs/ARCHITECTURE.md); a task's loss is computed only when
its dataset is in the batch, and the images of all present datasets go through the backbone in one
forward. What each task does (heads, loss, metrics) is its task object's (``lit_modules.tasks``), chosen
once from the config. Logged names follow docs/ARCHITECTURE.md ("Metric names").
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from timm.layers import resample_abs_pos_embed
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MeanMetric

from lit_modules.backbones import create_backbone, feature_dim
from lit_modules.checkpoints import CheckpointError, InitReport, compatibility_problems, describe, read_checkpoint
from lit_modules.optim import backbone_group_matcher, build_optimizer, global_batch_size, param_group_spec, resolve_lr
from lit_modules.strategy import any_rank
from lit_modules.tasks import Task, build_heads, build_tasks

__all__ = ["MultiTaskModule", "NonFiniteLossError", "complete_config", "load_module"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss with ``trainer.nonfinite_loss=raise``: the run stops before the weights change."""


def complete_config(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The plain-dict run config with every schema default filled in (configs/schema.py).

    Raises:
        ValueError: a key or value that does not fit the schema, named.
    """
    from configs.schema import RunConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), config)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        raise ValueError(f"config key '{key}' does not fit configs/schema.py: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_container(merged, resolve=True)


class MultiTaskModule(pl.LightningModule):
    """One backbone, heads for every enabled task, losses weighted per task.

    Args:
        config: the plain-dict run config (``configs.compose.to_dict(compose([...]))``); missing keys
            take the schema defaults.
        num_classes: classes per dataset name, e.g. ``{"weak_label": 400, "fashion_mnist": 10}``.

    State-dict keys: ``backbone.*`` (the timm model, no ``_orig_mod.`` even when compiled),
    ``heads.*`` (see ``lit_modules.heads``), ``ema.module.{backbone,heads}.*`` with EMA on.
    """

    def __init__(self, config: Mapping[str, Any] | DictConfig, num_classes: Mapping[str, int]):
        super().__init__()
        cfg = complete_config(config)
        num_classes = {str(k): int(v) for k, v in dict(num_classes).items()}
        # Plain containers only, so the checkpoint loads with torch.load(weights_only=True).
        self.save_hyperparameters({"config": cfg, "num_classes": num_classes})
        self.cfg = cfg
        self.num_classes = num_classes
        self.tasks: list[Task] = build_tasks(cfg["tasks"])
        self.datasets: list[str] = list(dict.fromkeys(task.dataset for task in self.tasks))
        self.img_size = int(cfg["data"]["img_size"])
        self.channels_last = bool(cfg["model"]["channels_last"])
        self.nonfinite_mode = str(cfg["trainer"]["nonfinite_loss"])
        self.nonfinite_skipped = 0
        self._skip_optimizer_step = False
        self.init_report: InitReport | None = None
        self._weights_restored = False  # set by load_module

        trainer_cfg = cfg["trainer"]
        fsdp_checkpointing = (
            str(trainer_cfg["strategy"]).startswith("fsdp") and trainer_cfg["fsdp"]["activation_checkpointing"]
        )
        # Never compiled here: on_fit_start compiles after the strategy wraps the model (and after the EMA copy).
        model_cfg = {**cfg["model"], "compile": False}
        self.backbone = create_backbone(model_cfg, self.img_size, apply_grad_checkpointing=not fsdp_checkpointing)
        self.feature_dim = feature_dim(self.backbone)
        self.heads = build_heads(self.tasks, self.feature_dim, num_classes)

        ema_decay = cfg["optim"]["ema_decay"]
        self.ema: ModelEmaV3 | None = None
        if ema_decay:
            self.ema = ModelEmaV3(self._ema_source(), decay=float(ema_decay))
            self.ema.requires_grad_(False)
            # Never run forward (its weights are copied out for evaluation); follow the module's mode so
            # Lightning does not warn about eval-mode submodules at fit start.
            self.ema.module.train(self.training)

        # Computed on the unwrapped module so every rank agrees after DDP/FSDP wrapping.
        self._param_spec = param_group_spec(self, float(cfg["optim"]["weight_decay"]), cfg["optim"]["layer_decay"])
        # model.compile happens in on_fit_start, after the strategy has wrapped the model.
        self._backbone_compiled = False

        self.val_metrics = self._build_metrics()
        self.test_metrics = self._build_metrics()

    # ------------------------------------------------------------------------------- structure

    def _ema_source(self) -> nn.Module:
        # Shares the live submodules: same state-dict order as the EMA copy, no extra parameters.
        return nn.ModuleDict({"backbone": self.backbone, "heads": self.heads})

    def no_weight_decay(self) -> set[str]:
        """timm protocol: the backbone's no-decay names (position embeddings, class tokens), prefixed, and the
        tasks' own (the embedding proxies)."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names} | {name for task in self.tasks for name in task.no_weight_decay}

    def group_matcher(self, coarse: bool = False):
        """timm protocol: layer ids for layer-wise LR decay (backbone layers, heads on top)."""
        return backbone_group_matcher(self.backbone)

    def _build_metrics(self) -> nn.ModuleDict:
        # Sample-weighted mean of the total loss over every validation dataset (logged at epoch end: one name for
        # batches of several dataloaders), then each task's own metrics.
        metrics = nn.ModuleDict({"loss": MeanMetric()})
        for task in self.tasks:
            metrics.update(task.make_metrics(self.num_classes))
        return metrics

    # --------------------------------------------------------------------------------- forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone feature ``[B, feature_dim]``."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def embed(self, images: torch.Tensor, feature: str = "embedding") -> torch.Tensor:
        """Features for retrieval: ``"embedding"`` is the L2-normalized embedding head output
        ``[B, tasks.embedding.dim]``; ``"backbone"`` the pooled backbone feature. Returns float32."""
        feats = self(images)
        if feature == "backbone":
            return feats.float()
        if feature != "embedding":
            raise ValueError(f"feature='{feature}' is not embedding|backbone")
        if "embedding" not in self.heads:
            raise ValueError("this model has no embedding head (tasks.embedding.enabled=false): use feature='backbone'")
        return self.heads["embedding"](feats).float()

    def features_by_dataset(self, batch: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Backbone features of every dataset in the batch that some task reads (one forward)."""
        present = [ds for ds in self.datasets if ds in batch]
        if not present:
            raise ValueError(
                f"batch holds datasets {sorted(batch)} but the enabled tasks read {self.datasets}: nothing to train"
            )
        images = [batch[ds]["image"] for ds in present]
        raw = [ds for ds, im in zip(present, images) if not im.is_floating_point()]
        if raw:
            raise ValueError(
                f"batch {raw} images are {images[present.index(raw[0])].dtype}: normalize them on the device with "
                "datamodules.targets.BatchTransform (the DataModule's on_after_batch_transfer) first"
            )
        if len(images) > 1 and all(im.shape[1:] == images[0].shape[1:] for im in images):
            feats = self(torch.cat(images)).split([im.shape[0] for im in images])
        else:
            feats = [self(im) for im in images]
        return dict(zip(present, feats))

    def compute_losses(
        self, batch: Mapping[str, Mapping[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Losses of the tasks whose dataset is in ``batch``.

        Returns:
            ``(total, losses, logits)``: the weighted sum, and per task name (``weak_label``,
            ``embedding/<dataset>``, ``clf/<name>``) the unweighted loss and the logits.
        """
        feats = self.features_by_dataset(batch)
        losses: dict[str, torch.Tensor] = {}
        logits: dict[str, torch.Tensor] = {}
        caches: dict[str, dict[str, torch.Tensor]] = {ds: {} for ds in feats}  # head outputs shared per dataset
        total = None
        for task in self.tasks:
            if task.dataset not in feats:
                continue
            target = batch[task.dataset].get("target")
            task.check_target(target, feats[task.dataset].shape[0], self.num_classes)
            out = task.logits(self.heads, feats[task.dataset], caches[task.dataset])
            loss = task.loss(out, target)
            losses[task.name], logits[task.name] = loss, out
            total = loss * task.weight if total is None else total + loss * task.weight
        return total, losses, logits

    def forward_all_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every task head for one image batch (FLOP counting, inspection)."""
        feats = self(images)
        cache: dict[str, torch.Tensor] = {}  # one image batch: head outputs shared by every task
        return {task.name: task.logits(self.heads, feats, cache) for task in self.tasks}

    def count_flops(self, batch_size: int = 1) -> int:
        """FLOPs of one forward pass (backbone + every head) at ``data.img_size``, counted with
        Lightning's ``measure_flops`` (``FlopCounterMode``) on a meta-device twin (no memory, no compile)."""
        from lightning.fabric.utilities.throughput import measure_flops

        twin_cfg = copy.deepcopy(self.cfg)
        twin_cfg["model"].update(compile=False, grad_checkpointing=False, channels_last=False)
        twin_cfg["optim"]["ema_decay"] = None
        with torch.device("meta"):
            twin = MultiTaskModule(twin_cfg, self.num_classes).eval()  # BatchNorm takes a batch of 1 in eval
            images = torch.empty(batch_size, 3, self.img_size, self.img_size)
        with torch.no_grad():
            return int(measure_flops(twin, lambda: twin.forward_all_heads(images)))

    # ------------------------------------------------------------------------------- training

    @staticmethod
    def _batch_size(batch: Mapping[str, Mapping[str, Any]]) -> int:
        return sum(int(part["image"].shape[0]) for part in batch.values() if "image" in part)

    def _losses_finite(self, losses: dict[str, torch.Tensor], batch: Mapping, batch_idx: int) -> bool:
        values = torch.stack([v.detach().float() for v in losses.values()])
        bad = ~torch.isfinite(values)
        trainer = self._trainer
        # One host sync per step (the price of never stepping on a NaN); under DDP the flag is all-reduced on the
        # device first, so every rank takes the same branch (or DDP would wait forever on the skipping rank).
        if trainer is not None and trainer.world_size > 1:
            any_bad = any_rank(trainer.strategy, bad.any())
        else:
            any_bad = bool(bad.any())
        if not any_bad:
            return True
        local_bad = bool(bad.any())
        rank = trainer.global_rank if trainer is not None else 0
        if local_bad:
            names = [n for n, b in zip(losses, bad.tolist()) if b]
            shown = {n: float(losses[n].detach()) for n in names}
            keys = {ds: list(batch[ds].get("key", []))[:4] for ds in {s.dataset for s in self.tasks if s.name in names}}
            where = f"in task(s) {names} (loss {shown}; first sample keys {keys}) on rank {rank}"
        else:
            where = f"on another rank (rank {rank} was finite)"
        msg = f"non-finite loss at global step {self.global_step} (batch {batch_idx}) {where}"
        if self.nonfinite_mode == "skip":
            self.nonfinite_skipped += 1
            log.warning(
                "%s; step skipped, weights unchanged (trainer.nonfinite_loss=skip, %d skipped so far)",
                msg,
                self.nonfinite_skipped,
            )
            return False
        raise NonFiniteLossError(
            f"{msg}. The run stopped before the weights were updated. Lower optim.lr, keep "
            "trainer.gradient_clip_val, prefer bf16-mixed over 16-mixed, check those samples, or set "
            "trainer.nonfinite_loss=skip to skip such steps."
        )

    def training_step(self, batch: Mapping[str, Mapping[str, Any]], batch_idx: int) -> torch.Tensor:
        total, losses, _ = self.compute_losses(batch)
        if not self._losses_finite(losses, batch, batch_idx):
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, batch_size=1)
            # Lightning refuses `return None` under DDP. A zero that touches every trainable parameter keeps
            # DDP's gradient hooks in step on all ranks; on_before_optimizer_step then drops the gradients,
            # so the optimizer leaves weights and moments untouched.
            self._skip_optimizer_step = True
            return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0
        n = self._batch_size(batch)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}/loss", value.detach(), on_step=True, on_epoch=False, batch_size=n)
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_optimizer_step:  # a non-finite loss in this (accumulated) step, trainer.nonfinite_loss=skip
            self._skip_optimizer_step = False
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # torch optimizers skip parameters without a gradient

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self._ema_source())

    # ----------------------------------------------------------------------------- evaluation

    def _dataset_batch(self, batch: Mapping[str, Any], dataloader_idx: int) -> Mapping[str, Mapping[str, Any]]:
        """An evaluation batch as ``{dataset: batch}``: a dict of val loaders (Lightning's sequential mode) hands
        one dataset's plain batch per step, named here from ``dataloader_idx``; keyed batches pass through."""
        if "image" not in batch:
            return batch
        trainer = self._trainer
        loaders = None
        if trainer is not None:
            loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
        if not isinstance(loaders, Mapping):
            raise ValueError(
                "an evaluation batch without dataset names needs a dict of dataloaders {dataset: loader} "
                f"(got {type(loaders).__name__})"
            )
        return {list(loaders)[dataloader_idx]: batch}

    def _plan_eval(self, stage: str) -> None:
        """Tell each task how many rows the coming evaluation pass holds (weak-label mAP picks its exact or bounded
        mode from it): the batch counts Lightning planned (the same on every rank) x the eval batch size x the
        world size, so every rank decides alike."""
        trainer = self._trainer
        if trainer is None:
            return
        if stage == "test":
            batches = trainer.num_test_batches
        else:
            batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        total = sum(batches) if isinstance(batches, (list, tuple)) else batches
        data = self.cfg["data"]
        rows = float(total) * int(data["eval_batch_size"] or data["batch_size"]) * max(1, int(trainer.world_size))
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        for task in self.tasks:
            task.plan(metrics, rows)

    def on_validation_epoch_start(self) -> None:
        self._plan_eval("val")

    def on_test_epoch_start(self) -> None:
        self._plan_eval("test")

    def _log_eval_loss(self, stage: str) -> None:
        metric = (self.val_metrics if stage == "val" else self.test_metrics)["loss"]
        if metric.update_called:
            self.log(f"{stage}/loss", metric.compute(), prog_bar=True)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval_loss("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_loss("test")

    def _eval_step(self, stage: str, batch: Mapping[str, Any], dataloader_idx: int = 0) -> torch.Tensor:
        batch = self._dataset_batch(batch, dataloader_idx)
        total, losses, logits = self.compute_losses(batch)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        n = self._batch_size(batch)
        kw = dict(on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        metrics["loss"].update(total.detach().float(), weight=n)
        for name, value in losses.items():
            self.log(f"{stage}/{name}/loss", value.detach(), batch_size=n, **kw)
        kw.pop("sync_dist")  # torchmetrics objects sync themselves
        for task in self.tasks:
            if task.name in logits:
                out = logits[task.name].detach().float()
                for name, metric in task.update(metrics, out, batch[task.dataset]["target"]).items():
                    self.log(f"{stage}/{name}", metric, **kw)
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step("test", batch, dataloader_idx)

    # ------------------------------------------------------------------------------ optimizer

    def peak_lr(self) -> float:
        """The run's peak LR from the global batch (``lit_modules.optim.resolve_lr``): ``data.batch_size`` x
        the trainer's world size x ``accumulate_grad_batches`` (per dataset in a multi-task step). Printed
        once on rank 0 and logged as the hyperparameter ``optim/lr`` (with ``optim/global_batch``)."""
        trainer = self._trainer
        world = int(trainer.world_size) if trainer is not None else 1
        accumulate = int(trainer.accumulate_grad_batches) if trainer is not None else 1
        batch = global_batch_size(int(self.cfg["data"]["batch_size"]), world, accumulate)
        lr, how = resolve_lr(self.cfg["optim"], batch)
        if trainer is not None:
            msg = (
                f"peak LR: {how}; global batch {batch} = data.batch_size x {world} device(s) x {accumulate} accumulated"
            )
            rank_zero_info(msg)
            if trainer.logger is not None:
                trainer.logger.log_hyperparams({"optim/lr": lr, "optim/global_batch": batch})
        self.resolved_lr = lr
        return lr

    def configure_optimizers(self) -> dict[str, Any]:
        """timm AdamW (fused on CUDA) over name-based groups, warmup + cosine LambdaLR stepped per step."""
        total = int(self.cfg["trainer"]["max_steps"])
        if total <= 0:
            total = int(self.trainer.estimated_stepping_batches)
            # An epoch resumed on another world size has its own length (datamodules.resume.TrainLoader); the
            # schedule is the run's, counted in usual epochs.
            usual = getattr(self.trainer.train_dataloader, "steps_per_epoch", None)
            if usual is not None and usual != self.trainer.num_training_batches:
                epochs = max(int(self.trainer.max_epochs or 1), 1)
                total = math.ceil(usual / self.trainer.accumulate_grad_batches) * epochs
        lr = self.peak_lr()
        optimizer, scheduler = build_optimizer(self, self.cfg["optim"], self._param_spec, total, lr=lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---------------------------------------------------------------------------- checkpoints

    def on_fit_start(self) -> None:
        """Per-rank model RNG, then ``model.compile``.

        * ``torch.manual_seed(seed + global_rank)`` (timm's ``random_seed(seed, rank)``): the weights were built
          under the same seed on every rank (and DDP broadcasts rank 0's), but drop-path and dropout masks must
          differ across GPUs, or sample i of every local batch gets the same stochastic-depth mask everywhere.
        * The backbone is compiled here, in place, after DDP/FSDP wrapped the model (FSDP's auto-wrap has then
          replaced the blocks by its units, so Dynamo traces the wrapped blocks, not modules FSDP later swaps
          out); state-dict keys stay those of the plain module (no ``_orig_mod.``).
        """
        torch.manual_seed(int(self.cfg["seed"]) + int(self.global_rank))
        if self.cfg["model"]["compile"] and not self._backbone_compiled:
            self.backbone.compile()
            self._backbone_compiled = True

    def on_train_start(self) -> None:
        # Lightning restores the optimizer and scheduler states after on_fit_start and before this hook.
        self._use_peak_lr()

    def _use_peak_lr(self) -> None:
        """Make the optimizer use this start's peak LR (``peak_lr``, the one printed and logged) at the current step.

        A restored ``LambdaLR`` keeps the checkpoint's base LRs and the optimizer its LRs (both are in their state
        dicts), so after a resume whose global batch changed (``optim.on_world_size_change=rescale_lr``) they would
        silently keep the old peak. The multipliers (``lr_lambdas``) are this start's and the step (``last_epoch``)
        the checkpoint's, so the remaining schedule continues from the restored step. Without a change this
        rewrites the same values.
        """
        if self._trainer is None or getattr(self, "resolved_lr", None) is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                continue
            groups = scheduler.optimizer.param_groups
            scheduler.base_lrs = [self.resolved_lr * float(g.get("lr_scale", 1.0)) for g in groups]
            step = scheduler.last_epoch
            lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, base, lr in zip(groups, scheduler.base_lrs, lrs):
                group["initial_lr"], group["lr"] = base, lr
            scheduler._last_lr = lrs  # what get_last_lr() (and LearningRateMonitor) report

    def setup(self, stage: str) -> None:
        """``init_from`` loads here, the one place pretrained weights load: on every rank, before the strategy wraps
        the model and before a resumed checkpoint (``ckpt_path``) restores over it. Skipped when they already
        loaded (a direct ``load_pretrained`` call) or the weights came from ``load_module``."""
        if stage == "fit" and self.cfg.get("init_from") and self.init_report is None and not self._weights_restored:
            from tracking.run_dir import resolve_init_from  # a run directory or run:<axis>=<value>,... spec too

            self.load_pretrained(resolve_init_from(self.cfg["init_from"], self.cfg["output_dir"], self.cfg["seed"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skipped"] = int(self.nonfinite_skipped)
        trainer = self._trainer
        if trainer is not None:  # what a resume on another topology compares with (lit_modules.trainer.adapt_topology)
            checkpoint["topology"] = {
                "batch_size": int(self.cfg["data"]["batch_size"]),
                "world_size": int(trainer.world_size),
                "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = checkpoint.get("hyper_parameters") or {}
        where = describe(getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None)
        if not isinstance(hp.get("config"), dict) or not isinstance(hp.get("num_classes"), dict):
            raise CheckpointError(f"{where} is not a checkpoint of this repo's MultiTaskModule")
        problems = compatibility_problems(
            hp,
            {"config": self.cfg, "num_classes": self.num_classes},
            check_img_size=hasattr(self.backbone, "pos_embed"),
        )
        if problems:
            raise CheckpointError(
                f"{where} does not fit this run: " + "; ".join(problems) + ". Resume with the checkpoint's "
                "config, or start a new run (resume=never / another run_name; init_from for a new label space)."
            )
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))

    def load_pretrained(self, path: os.PathLike | str) -> InitReport:
        """``init_from``: copy a checkpoint's backbone and the heads that match into this model.

        Heads load when their key and shape match and (for weak-label heads and the weak-label proxy
        bank) the weak-label label space is the same; a ViT's position embedding is resampled to this
        run's ``data.img_size``. EMA weights (when on) restart from the loaded weights.

        Returns:
            An ``InitReport`` of loaded, new, shape-mismatched, resampled and unused keys (also
            logged and kept as ``self.init_report``).

        Raises:
            CheckpointError: the backbone architecture differs or a backbone tensor does not fit.
        """
        ckpt = read_checkpoint(path)
        hp = ckpt["hyper_parameters"]
        problems = compatibility_problems(hp, {"config": self.cfg, "num_classes": self.num_classes}, check_tasks=False)
        if problems:
            raise CheckpointError(f"init_from={path}: " + "; ".join(problems))
        src_data = hp["config"].get("data", {}).get("weak_label", {})
        same_space = src_data.get("label_space") == self.cfg["data"]["weak_label"]["label_space"] and hp[
            "num_classes"
        ].get("weak_label") == self.num_classes.get("weak_label")
        space_keys = ("heads.weak_label.", "heads.embedding.proxies.weak_label")

        own = {k: v for k, v in self.state_dict().items() if not k.startswith("ema.")}
        report = InitReport(path=str(path))
        to_load: dict[str, torch.Tensor] = {}
        for key, value in ckpt["state_dict"].items():
            if key.startswith("ema."):
                continue
            if key not in own:
                report.unused.append(key)
                continue
            if key.startswith(space_keys) and not same_space:
                report.skipped_label_space.append(key)
                continue
            if value.shape != own[key].shape:
                if key == "backbone.pos_embed" and value.ndim == 3:
                    value = self._resample_pos_embed(value)
                    report.resampled.append(key)
                else:
                    report.mismatched.append((key, list(value.shape), list(own[key].shape)))
                    continue
            to_load[key] = value
        bad_backbone = [m for m in report.mismatched if m[0].startswith("backbone.")]
        missing_backbone = [k for k in own if k.startswith("backbone.") and k not in to_load]
        if bad_backbone or missing_backbone:
            raise CheckpointError(
                f"init_from={path}: the backbone does not fit this model (shape mismatches {bad_backbone[:5]}, "
                f"missing {missing_backbone[:5]}): a different architecture cannot be loaded"
            )
        self.load_state_dict(to_load, strict=False)
        report.loaded = sorted(to_load)
        report.new = sorted(k for k in own if k not in to_load)
        for name in ("mismatched", "resampled", "skipped_label_space", "unused"):
            setattr(report, name, sorted(getattr(report, name)))
        if self.ema is not None:
            self.ema.set(self._ema_source())
        self.init_report = report
        log.info("%s", report.summary())
        return report

    def _resample_pos_embed(self, pos_embed: torch.Tensor) -> torch.Tensor:
        grid = self.backbone.patch_embed.grid_size
        prefix = 0 if getattr(self.backbone, "no_embed_class", False) else int(self.backbone.num_prefix_tokens)
        return resample_abs_pos_embed(pos_embed, new_size=list(grid), num_prefix_tokens=prefix)


def load_module(path: os.PathLike | str, map_location: Any = "cpu", use_ema: bool = False) -> MultiTaskModule:
    """Load a ``MultiTaskModule`` from a checkpoint of this repo, safely (``weights_only=True``).

    Args:
        path: a ``.ckpt`` file (``last.ckpt`` / ``best.ckpt`` of a run directory).
        map_location: where tensors land (``"cpu"`` by default).
        use_ema: copy the EMA weights into the backbone and heads (checkpoints trained with
            ``optim.ema_decay``).

    Returns:
        The module in eval mode, built from the checkpoint's own config (``model.compile`` off).

    Raises:
        CheckpointError: a pickle payload, an unreadable file, not a checkpoint of this repo, or
            weights that do not fit the module built from its config; the message names the file.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    hp = ckpt["hyper_parameters"]
    config = copy.deepcopy(hp["config"])
    config.setdefault("model", {})["compile"] = False
    try:
        module = MultiTaskModule(config, hp["num_classes"])
    except ValueError as err:
        raise CheckpointError(f"{path}: its config cannot build a model: {err}") from None
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model built from its config: {err}") from None
    if use_ema:
        if module.ema is None:
            raise CheckpointError(f"{path}: use_ema=True but the run had no EMA (optim.ema_decay unset)")
        ema_state = module.ema.module.state_dict()
        module._ema_source().load_state_dict(ema_state)
    module.nonfinite_skipped = int(ckpt.get("nonfinite_skipped", 0))
    module._weights_restored = True
    return module.eval()
