"""Task heads on the shared backbone feature, built from the ``tasks`` section of a run config.

State-dict layout (stable: ``init_from`` and the evaluation code rely on it)::

    heads.weak_label.{weight,bias}                 weak-label classifier over the mined label space
    heads.embedding.proj.weight                    projection to tasks.embedding.dim (no bias; then L2-normalized)
    heads.embedding.proxies.<dataset>              one proxy bank [num_classes, dim] per dataset
    heads.classifiers.<name>.{weight,bias}         use-case classifiers (tasks.classifiers.<name>)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskSpec", "EmbeddingHead", "task_specs", "task_datasets", "build_heads", "weak_label_init_bias"]


@dataclass(frozen=True)
class TaskSpec:
    """One loss term: its log name (``weak_label``, ``embedding/<dataset>``, ``clf/<name>``), kind,
    the dataset whose batches it reads, and its weight in the total loss."""

    name: str
    kind: str  # "weak_label" | "embedding" | "classifier"
    dataset: str
    weight: float
    head: str  # classifier name for kind="classifier", else the dataset


def task_specs(tasks_cfg: Mapping[str, Any]) -> list[TaskSpec]:
    """Every enabled loss term of a ``tasks`` config section, in a fixed order."""
    specs: list[TaskSpec] = []
    wl = tasks_cfg.get("weak_label") or {}
    if wl.get("enabled", True):
        specs.append(TaskSpec("weak_label", "weak_label", "weak_label", float(wl.get("weight", 1.0)), "weak_label"))
    emb = tasks_cfg.get("embedding") or {}
    if emb.get("enabled", False):
        for ds in emb.get("datasets") or []:
            specs.append(TaskSpec(f"embedding/{ds}", "embedding", ds, float(emb.get("weight", 1.0)), ds))
    for name, clf in (tasks_cfg.get("classifiers") or {}).items():
        specs.append(TaskSpec(f"clf/{name}", "classifier", clf["dataset"], float(clf.get("weight", 1.0)), name))
    return specs


def task_datasets(tasks_cfg: Mapping[str, Any]) -> list[str]:
    """The datasets the enabled tasks read, in first-use order."""
    return list(dict.fromkeys(spec.dataset for spec in task_specs(tasks_cfg)))


class EmbeddingHead(nn.Module):
    """The retrieval head of Zhai and Wu (BMVC 2019, "Classification is a Strong Baseline for Deep Metric
    Learning"): LayerNorm without affine parameters on the backbone feature, a Linear projection without
    bias, L2 normalization; plus one proxy bank per dataset (normalized-softmax proxies, ``losses.py``).

    The parameter-free LayerNorm centres and whitens the feature per sample, so a cosine between
    embeddings is not dominated by one shared (anisotropic) direction of the backbone feature.
    """

    def __init__(self, in_features: int, dim: int, proxy_classes: Mapping[str, int]):
        super().__init__()
        self.norm = nn.LayerNorm(in_features, elementwise_affine=False)
        self.proj = nn.Linear(in_features, dim, bias=False)
        # Proxies are compared by cosine, so their scale only matters for the optimizer: unit-ish norm.
        self.proxies = nn.ParameterDict(
            {ds: nn.Parameter(torch.randn(n, dim) / math.sqrt(dim)) for ds, n in proxy_classes.items()}
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, in_features]`` -> L2-normalized ``[B, dim]``."""
        return F.normalize(self.proj(self.norm(features)), dim=-1)


def weak_label_init_bias(weak_label_cfg: Mapping[str, Any], num_labels: int) -> float:
    """The initial bias of every weak-label logit: ``tasks.weak_label.init_bias`` if set, else
    ``-log(num_labels)`` for the BCE loss (initial sigmoid ~1/C, near the label prior, rather than 0.5 on
    every label: the loss then starts near its floor instead of ``C x log 2``) and 0 for softmax (a
    constant shift of every logit cancels in a softmax)."""
    value = weak_label_cfg.get("init_bias")
    if value is not None:
        return float(value)
    return -math.log(num_labels) if weak_label_cfg.get("loss", "softmax") == "bce" else 0.0


def _classes(num_classes: Mapping[str, int], dataset: str, key: str) -> int:
    if dataset not in num_classes:
        raise ValueError(f"{key} reads dataset '{dataset}', but num_classes only has {sorted(num_classes)}")
    n = int(num_classes[dataset])
    if n < 1:
        raise ValueError(f"num_classes['{dataset}']={n} (needed by {key}) must be positive")
    return n


def build_heads(tasks_cfg: Mapping[str, Any], in_features: int, num_classes: Mapping[str, int]) -> nn.ModuleDict:
    """The heads of every enabled task; sizes come from ``num_classes`` (dataset -> classes).

    Args:
        tasks_cfg: the ``tasks`` config section.
        in_features: width of the backbone feature.
        num_classes: classes per dataset name, e.g. ``{"weak_label": 400, "fashion_mnist": 10}``.

    Returns:
        ``nn.ModuleDict`` with ``weak_label`` (Linear, bias from ``weak_label_init_bias``), ``embedding`` (EmbeddingHead) and
        ``classifiers`` (ModuleDict of Linear), each only when enabled.
    """
    heads = nn.ModuleDict()
    specs = task_specs(tasks_cfg)
    if not specs:
        raise ValueError("tasks: no task is enabled")
    proxies: dict[str, int] = {}
    classifiers = nn.ModuleDict()
    for spec in specs:
        if spec.kind == "weak_label":
            n = _classes(num_classes, spec.dataset, "tasks.weak_label")
            heads["weak_label"] = nn.Linear(in_features, n)
            with torch.no_grad():
                heads["weak_label"].bias.fill_(weak_label_init_bias(tasks_cfg.get("weak_label") or {}, n))
        elif spec.kind == "embedding":
            proxies[spec.dataset] = _classes(num_classes, spec.dataset, "tasks.embedding.datasets")
        else:
            key = f"tasks.classifiers.{spec.head}.dataset"
            if "." in spec.head or not spec.head:
                raise ValueError(f"tasks.classifiers: name '{spec.head}' must be non-empty and contain no '.'")
            classifiers[spec.head] = nn.Linear(in_features, _classes(num_classes, spec.dataset, key))
    if proxies:
        heads["embedding"] = EmbeddingHead(in_features, int(tasks_cfg["embedding"]["dim"]), proxies)
    if len(classifiers):
        heads["classifiers"] = classifiers
    return heads
