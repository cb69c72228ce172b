"""Optimizer and learning-rate schedule of the multi-task module (timm factories, torch LambdaLR).

Parameter groups follow timm's rules (``param_groups_weight_decay`` / ``param_groups_layer_decay``):
no weight decay on 1-D parameters (norms, biases) and on the backbone's ``no_weight_decay()`` names
(position embeddings, class/register tokens); layer-wise LR decay uses the backbone's
``group_matcher``, the task heads sit in the top layer (scale 1). The grouping is computed once by
parameter *name* on the unwrapped module, so it stays the same on every rank after FSDP flattens or
shards the parameters (a sharded view can look 1-D or empty on some ranks).

The peak LR comes from the global batch by timm ``train.py``'s rule (``resolve_lr``) unless ``optim.lr``
is set, in which case that value is used as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.models import group_parameters
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.optim._param_groups import auto_group_layers
from torch import nn

__all__ = [
    "clean_param_name",
    "backbone_group_matcher",
    "param_group_spec",
    "param_groups",
    "warmup_cosine",
    "global_batch_size",
    "resolve_lr",
    "build_optimizer",
    "TopologyChangeError",
    "plan_topology_change",
]

# timm optimizer names whose update is normalized per parameter (Adam family): sqrt LR scaling by default,
# as timm train.py does (``'adam' in opt_lower``) plus the Adam-like LAMB/Lion/Adafactor family.
_SQRT_SCALED = ("adam", "lamb", "lion", "adafactor", "adan", "laprop", "ademamix", "nadam", "radam", "adopt")

# Prefixes wrappers insert into parameter names (FSDP, activation checkpointing, torch.compile).
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_param_name(name: str) -> str:
    """A parameter name without FSDP / checkpoint-wrapper / torch.compile prefixes."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def backbone_group_matcher(backbone: nn.Module, prefix: str = "backbone.") -> Callable[[str], tuple]:
    """A timm group matcher for a model holding ``backbone`` under ``prefix``: the backbone's own
    layer ids (timm ``group_matcher``, else timm's automatic grouping); everything else (the task
    heads) after the last backbone layer."""
    if hasattr(backbone, "group_matcher"):
        layer_of = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    else:
        layer_of = auto_group_layers(backbone)
    top = max(layer_of.values(), default=0) + 1

    def match(name: str) -> tuple:
        if name.startswith(prefix):
            return (layer_of.get(name[len(prefix) :], top),)
        return (top,)

    return match


def param_group_spec(
    module: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> dict[str, tuple[float, float]]:
    """Weight decay and LR scale per trainable parameter name, by timm's rules.

    ``module`` may define ``no_weight_decay()`` (names or fnmatch patterns) and ``group_matcher()``
    as timm models do. Returns ``{name: (weight_decay, lr_scale)}``.
    """
    nwd = set(getattr(module, "no_weight_decay", lambda: set())())
    if layer_decay is not None:
        groups = param_groups_layer_decay(
            module, weight_decay=weight_decay, no_weight_decay_list=nwd, layer_decay=layer_decay
        )
    else:
        groups = param_groups_weight_decay(module, weight_decay=weight_decay, no_weight_decay_list=nwd)
    name_of = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
    spec: dict[str, tuple[float, float]] = {}
    for group in groups:
        for p in group["params"]:
            spec[clean_param_name(name_of[id(p)])] = (float(group["weight_decay"]), float(group.get("lr_scale", 1.0)))
    return spec


def param_groups(module: nn.Module, spec: Mapping[str, tuple[float, float]], lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups of ``module``'s trainable parameters from a ``param_group_spec``.

    Each group gets ``lr = lr * lr_scale`` (a LambdaLR then scales every group alike) and keeps
    ``lr_scale`` for reference.
    """
    buckets: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = clean_param_name(name)
        if key not in spec:
            raise KeyError(f"parameter '{key}' has no optimizer group (created after the module was built?)")
        buckets.setdefault(spec[key], []).append(p)
    return [
        {"params": ps, "weight_decay": wd, "lr_scale": scale, "lr": lr * scale}
        for (wd, scale), ps in sorted(buckets.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, schedule: str = "cosine"
) -> float:
    """LR multiplier at optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (so the first
    step already learns), then ``schedule="cosine"`` decays from 1 to ``min_ratio`` at
    ``total_steps`` (and stays there), or ``"constant"`` holds 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_batch_size(batch_size: int, world_size: int = 1, accumulate_grad_batches: int = 1) -> int:
    """Images per optimizer step and per dataset: ``batch_size x world_size x accumulate_grad_batches``.

    ``batch_size`` is ``data.batch_size`` (per device, per dataset). A multi-task step holds one such batch
    of every dataset, and each task's loss is a mean over its own batch, so the per-dataset batch is what
    sets the gradient noise of each term: the batches of the other datasets are not added.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("world_size", world_size),
        ("accumulate", accumulate_grad_batches),
    ):
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be a positive integer")
    return int(batch_size) * int(world_size) * int(accumulate_grad_batches)


def resolve_lr(optim_cfg: Mapping[str, Any], global_batch: int) -> tuple[float, str]:
    """The peak learning rate of a run and how it was chosen.

    ``optim.lr`` set (not None): used as given. Otherwise timm ``train.py``'s rule:
    ``lr = lr_base * (global_batch / lr_base_size) ** p`` with ``p = 0.5`` for ``lr_base_scale="sqrt"``,
    ``1`` for ``"linear"``, ``0`` for ``"none"``; ``lr_base_scale=None`` picks sqrt for Adam-family
    optimizers (``optim.name``) and linear otherwise.

    Returns:
        ``(lr, description)``, the description a one-line account for the start-up print.
    """
    explicit = optim_cfg.get("lr")
    if explicit is not None:
        return float(explicit), f"optim.lr={float(explicit):.3g} (set explicitly; the lr_base rule is not used)"
    base = float(optim_cfg.get("lr_base", 1e-3))
    base_size = int(optim_cfg.get("lr_base_size", 4096))
    if base_size < 1:
        raise ValueError(f"optim.lr_base_size={base_size} must be a positive integer")
    scale = optim_cfg.get("lr_base_scale")
    if scale is None:
        name = str(optim_cfg.get("name", "adamw")).lower()
        scale = "sqrt" if any(k in name for k in _SQRT_SCALED) else "linear"
    power = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}[str(scale)]
    lr = base * (global_batch / base_size) ** power
    how = (
        f"optim.lr={lr:.3g} = lr_base {base:.3g} x ({global_batch} / lr_base_size {base_size}) ^ {power:g} "
        f"({scale} scaling by the global batch)"
    )
    return lr, how


class TopologyChangeError(ValueError):
    """A resume on another topology that ``optim.on_world_size_change`` cannot honour."""


def _describe(batch_size: int, world_size: int, accumulate: int) -> str:
    total = batch_size * world_size * accumulate
    return f"{world_size} device(s) x data.batch_size {batch_size} x accumulate {accumulate} = global batch {total}"


def plan_topology_change(
    saved: Mapping[str, int], batch_size: int, world_size: int, accumulate: int, rule: str
) -> tuple[int, str | None]:
    """``trainer.accumulate_grad_batches`` for a run resumed from a checkpoint trained on ``saved``'s topology.

    Args:
        saved: the checkpoint's ``{"batch_size", "world_size", "accumulate_grad_batches"}``.
        batch_size, world_size, accumulate: this start's ``data.batch_size``, world size and configured accumulation.
        rule: ``optim.on_world_size_change``: ``keep_global_batch`` (accumulation recomputed so the global batch is
            the checkpoint's) or ``rescale_lr`` (accumulation as configured; the peak LR follows the new global batch).

    Returns:
        ``(accumulate, message)``; the message (None when the topology is the checkpoint's) says what changed.

    Raises:
        TopologyChangeError: ``keep_global_batch`` and no integer accumulation gives the checkpoint's global batch.
    """
    was = (int(saved["batch_size"]), int(saved["world_size"]), int(saved["accumulate_grad_batches"]))
    old_global = global_batch_size(*was)
    if (was[0], was[1]) == (batch_size, world_size):
        return accumulate, None
    before = _describe(*was)
    if rule == "keep_global_batch":
        per_step = batch_size * world_size
        if old_global % per_step:
            raise TopologyChangeError(
                f"the checkpoint was trained on {before}; this start has {world_size} device(s) x data.batch_size "
                f"{batch_size}, and no integer trainer.accumulate_grad_batches gives a global batch of {old_global} "
                "(optim.on_world_size_change=keep_global_batch). Resume on a world size that divides it, set "
                "data.batch_size so that it does, or pass optim.on_world_size_change=rescale_lr to train on with "
                "another global batch and the peak LR of the lr_base rule"
            )
        new = old_global // per_step
        return new, (
            f"topology changed since the checkpoint: {before} -> {_describe(batch_size, world_size, new)}; "
            "trainer.accumulate_grad_batches recomputed to keep the global batch, peak LR and schedule "
            "(optim.on_world_size_change=keep_global_batch)"
        )
    if rule == "rescale_lr":
        return accumulate, (
            f"topology changed since the checkpoint: {before} -> {_describe(batch_size, world_size, accumulate)}; "
            "the peak LR follows the new global batch by the lr_base rule and the schedule continues from the "
            "restored step (optim.on_world_size_change=rescale_lr)"
        )
    raise ValueError(f"optim.on_world_size_change={rule!r}: expected keep_global_batch or rescale_lr")


def build_optimizer(
    module: nn.Module,
    optim_cfg: Mapping[str, Any],
    spec: Mapping[str, tuple[float, float]],
    total_steps: int,
    lr: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """timm ``create_optimizer_v2`` over our parameter groups, and a per-step warmup + cosine LambdaLR.

    Args:
        module: the (possibly wrapped) module whose trainable parameters are optimized.
        optim_cfg: the ``optim`` config section.
        spec: ``param_group_spec`` computed on the unwrapped module.
        total_steps: optimizer steps of the whole run (the cosine reaches ``optim.min_lr`` there).
        lr: the peak LR (``resolve_lr``); None: ``optim.lr``, which must then be set.

    Returns:
        ``(optimizer, scheduler)``; fused AdamW/Adam when every parameter is on CUDA.
    """
    if lr is None:
        if optim_cfg.get("lr") is None:
            raise ValueError("build_optimizer: pass lr (resolve_lr) or set optim.lr")
        lr = float(optim_cfg["lr"])
    groups = param_groups(module, spec, lr)
    name = str(optim_cfg.get("name", "adamw")).lower()
    kwargs: dict[str, Any] = {"betas": tuple(float(b) for b in optim_cfg.get("betas", (0.9, 0.999)))}
    params = [p for g in groups for p in g["params"]]
    if name in ("adamw", "adam") and params and all(p.is_cuda for p in params):
        kwargs["fused"] = True  # one kernel per step instead of a foreach loop
    optimizer = create_optimizer_v2(
        groups, opt=name, lr=lr, weight_decay=float(optim_cfg.get("weight_decay", 0.0)), **kwargs
    )
    min_ratio = float(optim_cfg.get("min_lr", 0.0)) / lr if lr > 0 else 0.0
    warmup = int(optim_cfg.get("warmup_steps", 0))
    schedule = str(optim_cfg.get("scheduler", "cosine"))

    def lr_lambda(step: int) -> float:
        return warmup_cosine(step, warmup, total_steps, min_ratio, schedule)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
