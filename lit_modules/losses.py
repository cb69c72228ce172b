"""Loss functions of the task heads.

* Weak labels: softmax cross-entropy against the normalized multi-hot target (the large-scale weakly
  supervised recipe of Mahajan et al. 2018), or one sigmoid per label (BCE, summed over labels).
* Retrieval embedding: normalized-softmax proxy loss (Zhai and Wu, "Classification is a Strong Baseline
  for Deep Metric Learning", BMVC 2019): cosine similarity between the L2-normalized embedding and
  L2-normalized class proxies, divided by a temperature, then softmax cross-entropy.
* Use-case classifiers: plain softmax cross-entropy.

Every loss is computed in float32 (logits are upcast) so bf16 autocast does not cost precision here.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = [
    "normalized_multi_hot",
    "multi_hot_softmax_loss",
    "multi_label_bce_loss",
    "classification_loss",
    "proxy_logits",
    "proxy_loss",
]


def normalized_multi_hot(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a multi-hot (or soft) target ``[B, C]`` into a distribution per row.

    Returns:
        ``(distribution[B, C], has_label[B])``: each row divided by its sum, and which rows have any
        positive mass. Rows without a label are left at zero and must be excluded by the caller
        (a softmax cannot be trained towards "nothing").
    """
    if target.ndim != 2:
        raise ValueError(f"multi-hot target must be [batch, classes], got shape {tuple(target.shape)}")
    target = target.float()
    mass = target.sum(dim=1, keepdim=True)
    has_label = mass.squeeze(1) > 0
    return target / mass.clamp_min(torch.finfo(target.dtype).tiny), has_label


def _soft_cross_entropy(logits: torch.Tensor, dist: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    if label_smoothing:
        dist = dist * (1.0 - label_smoothing) + label_smoothing / dist.shape[1]
    return -(dist * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def multi_hot_softmax_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy against the normalized multi-hot target.

    Args:
        logits: ``[B, C]`` raw scores.
        target: ``[B, C]`` multi-hot (or soft, e.g. under mixup) target; each row is divided by its sum.
        label_smoothing: mass ``eps`` spread uniformly over the C classes.

    Returns:
        The mean loss over rows that have at least one label (a scalar). A batch where no row has a
        label returns a zero that still depends on ``logits`` (so every rank runs the same backward).
    """
    dist, has_label = normalized_multi_hot(target)
    per_row = _soft_cross_entropy(logits, dist, label_smoothing)
    if not bool(has_label.any()):
        return logits.sum() * 0.0
    return per_row[has_label].mean()


def multi_label_bce_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """One sigmoid per label: binary cross-entropy summed over labels, averaged over rows (big_vision's
    ``sigmoid_xent``), so the term has the scale of one sample's loss and its weight in a multi-task sum
    means what it says (a mean over B x C would divide it by the number of labels).

    Rows without a label are kept: for BCE "no label" is a well-defined all-negative target.
    Label smoothing moves targets to ``t * (1 - eps) + eps / 2``.
    """
    if logits.shape != target.shape:
        raise ValueError(f"BCE target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    target = target.float()
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / 2.0
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(dim=1).mean()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Plain softmax cross-entropy for a use-case head.

    Args:
        logits: ``[B, C]``.
        target: ``long[B]`` class indices, or a float ``[B, C]`` multi-hot/soft target (then the
            normalized multi-hot softmax loss is used, so a classifier may also sit on weak labels).
    """
    if target.ndim == 2 and target.is_floating_point():
        return multi_hot_softmax_loss(logits, target, label_smoothing)
    return F.cross_entropy(logits.float(), target.long(), label_smoothing=label_smoothing)


def proxy_logits(embedding: torch.Tensor, proxies: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity between embeddings ``[B, D]`` and proxies ``[C, D]``, divided by ``temperature``.

    Both sides are L2-normalized here, so an already-normalized embedding is left unchanged.
    """
    device_type = embedding.device.type
    # Cosines divided by a small temperature magnify bf16 rounding (~0.4 %): keep this matmul in fp32.
    no_autocast = (
        torch.autocast(device_type, enabled=False)
        if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)
        else contextlib.nullcontext()
    )
    with no_autocast:
        emb = F.normalize(embedding.float(), dim=1)
        prox = F.normalize(proxies.float(), dim=1)
        return emb @ prox.t() / temperature


def proxy_loss(
    embedding: torch.Tensor, proxies: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Normalized-softmax proxy loss: one proxy per class, cosine logits / temperature, cross-entropy.

    Args:
        embedding: ``[B, D]`` embeddings (normalized here).
        proxies: ``[C, D]`` class proxies (normalized here).
        target: ``long[B]`` class indices, or a float ``[B, C]`` multi-hot target (normalized multi-hot
            softmax, exactly as the weak-label softmax loss).
        temperature: the softmax temperature (e.g. 0.05).

    Returns:
        A scalar loss.
    """
    return classification_loss(proxy_logits(embedding, proxies, temperature), target)
