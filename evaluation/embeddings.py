"""Embedding extraction: run a module over an evaluation loader and collect features, targets and keys.

The module follows the MultiTaskModule contract (docs/ARCHITECTURE.md): ``embed(images, feature)``
returns the L2-normalized retrieval embedding (feature="embedding") or the pooled backbone feature
("backbone"); the heads sit in ``module.heads`` (``heads.weak_label`` is the weak-label classifier,
``heads.embedding`` the embedding projection; lit_modules/heads.py).

Several outputs are computed from one backbone pass: the backbone feature comes from
``embed(images, "backbone")`` and the heads are applied to it. On the first batch the head path is
checked against ``embed(images, "embedding")``; if they disagree (a module whose embedding is not
``heads.embedding(backbone feature)``), every batch calls ``embed`` per feature instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.retrieval import resolve_device

FEATURES = ("embedding", "backbone")
HEAD_PREFIX = "head:"  # outputs "head:<task>" are the logits of module.heads[<task>]


@dataclass
class Extracted:
    """What one pass over a loader produced.

    features: output name -> float32 [N, D] on CPU; targets: long [N] or float [N, C]; keys: N strings;
    seconds: wall time of the pass; images_per_sec: N / seconds.
    """

    features: dict[str, Tensor]
    targets: Tensor
    keys: list[str]
    seconds: float = 0.0
    images_per_sec: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def autocast_context(device: torch.device, precision: str = "fp32"):
    """fp32 by default on every device, so GPU and CPU figures compare (bf16 flips sign bits near 0, which
    binarized retrieval reads). "bf16": bf16 autocast on a GPU that supports it, or on CPU; "auto": bf16 on a
    bf16-capable GPU only, fp32 elsewhere."""
    precision = str(precision).lower()
    if precision in ("32", "32-true", "fp32", "float32"):
        return contextlib.nullcontext()
    wants_bf16 = precision.startswith("bf16")
    if device.type == "cuda" and (wants_bf16 or precision == "auto") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and wants_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision not in ("auto",) and not wants_bf16:
        raise ValueError(f"unknown precision '{precision}': use auto, bf16 or fp32")
    return contextlib.nullcontext()


def _heads(module: nn.Module) -> Any:
    return getattr(module, "heads", None)


def _head(module: nn.Module, task: str) -> nn.Module:
    heads = _heads(module)
    if heads is None or task not in heads:
        have = sorted(heads.keys()) if heads is not None else []
        raise ValueError(f"the module has no '{task}' head (heads: {have})")
    return heads[task]


def _batch_fields(batch: Any, index: int) -> tuple[Tensor, Tensor, list[str]]:
    if not isinstance(batch, dict):
        raise TypeError(f"eval batch {index} is a {type(batch).__name__}; expected a dict with image, target, key")
    missing = [k for k in ("image", "target", "key") if k not in batch]
    if missing:
        raise KeyError(f"eval batch {index} lacks {missing}; it has {sorted(batch)}")
    keys = batch["key"]
    keys = [str(k) for k in (keys.tolist() if isinstance(keys, Tensor) else keys)]
    return batch["image"], torch.as_tensor(batch["target"]), keys


@torch.inference_mode()
def extract_outputs(
    module: nn.Module,
    loader: Iterable[dict[str, Any]],
    outputs: Sequence[str] = ("embedding",),
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    limit: int | None = None,
    desc: str = "extract",
    progress: bool = True,
) -> Extracted:
    """One pass over ``loader`` computing every requested output.

    Args:
        module: a module with ``embed(images, feature)`` (and ``heads`` for "head:<task>" outputs).
        loader: yields {"image": float [B,3,H,W], "target": long [B] | float [B,C], "key": list[str]}; or the
            loaders' raw form (uint8 images, label ids) when it carries a ``batch_transform`` (``datamodules.EvalLoader``),
            applied on ``device`` to each batch, the same transform Lightning applies in training.
        outputs: any of "embedding", "backbone", "head:<task>" (e.g. "head:weak_label" logits).
        device: where the module runs ("auto" = cuda if available); the module is moved there.
        precision: "fp32" (default, every device: eval.precision), "bf16" (autocast) or "auto" (bf16 on a
            bf16-capable GPU, fp32 on CPU).
        limit: stop after this many items (the loader is deterministic, so it is the first ``limit``).
        desc, progress: tqdm label and switch.

    Returns:
        ``Extracted`` with float32 CPU features per output.
    """
    for name in outputs:
        if name not in FEATURES and not name.startswith(HEAD_PREFIX):
            raise ValueError(f"unknown output '{name}': choose from {FEATURES} or '{HEAD_PREFIX}<task>'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    device = resolve_device(device)
    was_training = module.training
    module.eval().to(device)
    head_tasks = [n[len(HEAD_PREFIX) :] for n in outputs if n.startswith(HEAD_PREFIX)]
    for task in head_tasks:
        _head(module, task)  # fail before the pass, naming the missing head
    need_backbone = "backbone" in outputs or bool(head_tasks)
    # Embedding from the backbone feature through heads.embedding (one backbone pass), verified below.
    shared_pass = (
        need_backbone and "embedding" in outputs and _heads(module) is not None and "embedding" in _heads(module)
    )

    collected: dict[str, list[Tensor]] = {n: [] for n in outputs}
    targets: list[Tensor] = []
    keys: list[str] = []
    notes: list[str] = []
    total = None
    with contextlib.suppress(TypeError):
        total = len(loader)  # type: ignore[arg-type]
    start = time.perf_counter()
    batch_transform = getattr(loader, "batch_transform", None)
    bar = tqdm(loader, desc=desc, total=total, leave=False, disable=not progress)
    try:
        for index, batch in enumerate(bar):
            if batch_transform is not None:
                batch = batch_transform.to_device(batch, device)
            images, target, batch_keys = _batch_fields(batch, index)
            if index == 0 and limit is not None and bar.total:  # the bar ends at the limit, not the split
                bar.total = min(bar.total, -(-limit // max(len(batch_keys), 1)))
            images = images.to(device, non_blocking=True)
            with autocast_context(device, precision):
                out: dict[str, Tensor] = {}
                if need_backbone:
                    out["backbone"] = module.embed(images, feature="backbone")
                if "embedding" in outputs:
                    if shared_pass:
                        out["embedding"] = _head(module, "embedding")(out["backbone"])
                        if index == 0:
                            direct = module.embed(images, feature="embedding")
                            if not torch.allclose(out["embedding"].float(), direct.float(), atol=1e-3, rtol=1e-3):
                                shared_pass = False
                                out["embedding"] = direct
                                notes.append("embedding != heads.embedding(backbone): one embed() call per feature")
                    else:
                        out["embedding"] = module.embed(images, feature="embedding")
                for task in head_tasks:
                    out[HEAD_PREFIX + task] = _head(module, task)(out["backbone"])
            for name in outputs:
                collected[name].append(out[name].float().cpu())
            targets.append(target.cpu())
            keys.extend(batch_keys)
            if limit is not None and len(keys) >= limit:
                break
    finally:
        bar.close()
        module.train(was_training)
    seconds = time.perf_counter() - start
    if not keys:
        raise ValueError(f"{desc}: the loader yielded no samples")
    n = len(keys) if limit is None else min(limit, len(keys))
    features = {name: torch.cat(parts)[:n] for name, parts in collected.items()}
    target = torch.cat(targets)[:n]
    target = target.float() if target.ndim == 2 else target.long()
    return Extracted(features, target, keys[:n], seconds, n / max(seconds, 1e-9), notes)


def extract(
    module: nn.Module,
    loader: Iterable[dict[str, Any]],
    feature: str = "embedding",
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    limit: int | None = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """``(features float32 [N, D], targets, keys)`` for one feature ("embedding" or "backbone")."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature '{feature}': choose one of {FEATURES}")
    got = extract_outputs(module, loader, (feature,), device, precision, limit, desc=f"extract {feature}")
    return got.features[feature], got.targets, got.keys
