"""Backbones: any timm model, created from scratch, returning its pooled feature.

``num_classes=0`` makes timm drop the classifier and return the pooled (pre-logits) feature, so the
same code serves ViTs (class token or average pooling, per the timm model) and CNNs (global average
pooling). The feature width is read from the model, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import set_reentrant_ckpt
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

__all__ = ["create_backbone", "feature_dim", "block_classes", "resnet10_lowres"]


@register_model
def resnet10_lowres(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-10 (timm ``ResNet``, BasicBlock x [1, 1, 1, 1], widths 64-128-256-512 unless ``channels`` is given)
    for 28-32 px inputs: a 3x3 stride-1 stem as wide as the first stage and no max-pool, so the first stage sees the
    full image, as CIFAR-style ResNets do. Registered with timm so configs build it by name (``model.name: resnet10_lowres``); written here
    because every timm ResNet/RegNet stem downsamples 2-4x, which leaves a 28-px Fashion-MNIST image 1x1 at the last
    stage (measured: regnetx_002 0.905 test accuracy after 7.5 epochs, train accuracy 0.94)."""
    if pretrained:
        raise ValueError("resnet10_lowres has no pretrained weights (models here train from scratch)")
    for factory_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm.create_model's own keys
        kwargs.pop(factory_only, None)
    in_chans = int(kwargs.pop("in_chans", 3))
    model = ResNet(BasicBlock, [1, 1, 1, 1], in_chans=in_chans, **kwargs)
    width = int(model.layer1[0].conv1.out_channels)  # the stem is as wide as the first stage: no 1x1 shortcut there
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = type(model.bn1)(width)
    model.maxpool = nn.Identity()
    model.layer1[0] = BasicBlock(width, width)
    model.feature_info[0].update(num_chs=width, reduction=1)
    model.init_weights(zero_init_last=True)
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the feature ``model(images)`` returns when built with ``num_classes=0``."""
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise ValueError(f"{type(model).__name__} exposes neither head_hidden_size nor num_features")
    return int(width)


def _create(name: str, kwargs: dict[str, Any], img_size: int) -> nn.Module:
    try:
        # Models with absolute position embeddings (ViT, DeiT, EVA, Swin, ...) size them from img_size.
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    # CNNs take any input size and do not accept the argument.
    return timm.create_model(name, **kwargs)


def create_backbone(model_cfg: Mapping[str, Any], img_size: int, apply_grad_checkpointing: bool = True) -> nn.Module:
    """Create a timm backbone without classifier from the ``model`` section of a run config.

    Args:
        model_cfg: ``model.*`` keys (``name``, ``drop_path_rate``, ``grad_checkpointing``,
            ``channels_last``, ``compile``, ``kwargs``) as a mapping.
        img_size: input resolution (``data.img_size``); ViT-like models size their position
            embeddings from it.
        apply_grad_checkpointing: honour ``model.grad_checkpointing`` (turned off when FSDP applies
            its own activation checkpointing per block).

    Returns:
        The module; ``module(images[B,3,H,W])`` returns ``[B, feature_dim(module)]``. With
        ``model.compile`` it is compiled in place (``nn.Module.compile``), so its state-dict keys
        carry no ``_orig_mod.`` prefix.
    """
    name = str(model_cfg.get("name", ""))
    if not name:
        raise ValueError("model.name is empty: set a timm model name, e.g. vit_base_patch16_224")
    if not timm.is_model(name):
        raise ValueError(f"model.name='{name}' is not a timm model (see timm.list_models())")
    kwargs = dict(model_cfg.get("kwargs") or {})
    for reserved in ("img_size", "num_classes", "pretrained"):
        if reserved in kwargs:
            where = "data.img_size" if reserved == "img_size" else "the task heads"
            raise ValueError(f"model.kwargs.{reserved} is not allowed: it is set by {where}")
    drop_path = float(model_cfg.get("drop_path_rate") or 0.0)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    model = _create(name, {"pretrained": False, "num_classes": 0, **kwargs}, int(img_size))

    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if img_size % ph or img_size % pw:
            raise ValueError(f"data.img_size={img_size} is not a multiple of the patch size {ph}x{pw} of {name}")

    if model_cfg.get("grad_checkpointing") and apply_grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing=true but {name} has no set_grad_checkpointing()")
        # Non-reentrant checkpoints: reentrant ones fire DDP's gradient hooks twice per parameter under
        # find_unused_parameters=True ("Expected to mark a variable ready only once"), which interleaved
        # multi-task training needs. timm >= 1.0.2x defaults to non-reentrant, but TIMM_REENTRANT_CKPT=1 (or an
        # older timm) flips it, process-wide; pin it.
        set_reentrant_ckpt(False)
        model.set_grad_checkpointing(True)
    if model_cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if model_cfg.get("compile"):
        # In place: parameters and state-dict keys stay those of the plain module.
        model.compile()
    return model


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The repeated block classes of a timm backbone: the FSDP wrap / activation-checkpointing unit.

    ViTs: the classes in ``model.blocks`` (timm ``Block``); ResNet/ResNeXt: ``BasicBlock`` /
    ``Bottleneck`` in ``layer1..4``; other models: the outermost modules whose class name ends in
    ``Block`` or ``Bottleneck``.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return {type(b) for b in blocks}
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        return {type(b) for layer in layers for b in layer}
    found: set[type[nn.Module]] = set()
    covered: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        if type(module).__name__.endswith(("Block", "Bottleneck")):
            found.add(type(module))
            covered.append(name)
    if not found:
        raise ValueError(f"cannot find the repeated blocks of {type(model).__name__} to wrap")
    return found
