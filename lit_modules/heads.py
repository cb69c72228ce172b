"""Task heads on the shared backbone feature; ``lit_modules.tasks`` builds them from the ``tasks`` config section.

State-dict layout (stable: ``init_from`` and the evaluation code rely on it)::

    heads.weak_label.{weight,bias}                 weak-label classifier over the mined label space
    heads.embedding.proj.weight                    projection to tasks.embedding.dim (no bias; then L2-normalized)
    heads.embedding.proxies.<dataset>              one proxy bank [num_classes, dim] per dataset
    heads.classifiers.<name>.{weight,bias}         use-case classifiers (tasks.classifiers.<name>)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingHead", "weak_label_init_bias"]


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
