"""Metrics of a pretrained weak-label head on held-out multi-hot targets.

mAP: per-label average precision (torchmetrics' multilabel_average_precision, exact, no
     thresholds binning), averaged over the labels that have at least one positive in the split.
     torchmetrics' own ``average="macro"`` counts labels without positives as 0, which would make
     the figure depend on how many rare labels a small split happens to miss.
p@k: per item with at least one label, |top-k predicted labels ∩ true labels| / k, averaged; ties
     among logits go to the lowest label id (as the retrieval ranking).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision

from evaluation.retrieval import ranked_topk


def weak_label_head_metrics(logits: Tensor, targets: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """{"mAP": float, "p@k": float for k in ks with k <= num labels} from logits and multi-hot targets [N, C]."""
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"the weak-label head predicts {tuple(logits.shape)} but the targets are {tuple(targets.shape)}: "
            "the head's label space does not match the data's"
        )
    positive = targets > 0
    has_pos = positive.any(dim=0)
    metrics: dict[str, float] = {}
    if has_pos.any():
        # Only labels with positives: AP is undefined for the others (and torchmetrics warns on them).
        preds, target = logits[:, has_pos].float(), positive[:, has_pos].int()
        if target.shape[1] == 1:  # torchmetrics' multilabel form needs two labels or more
            per_label = binary_average_precision(preds[:, 0], target[:, 0])
        else:
            per_label = multilabel_average_precision(preds, target, num_labels=target.shape[1], average=None)
        metrics["mAP"] = per_label.mean().item()
    else:
        metrics["mAP"] = float("nan")
    labelled = positive.any(dim=1)
    for k in ks:
        if k > logits.shape[1]:
            continue
        if not labelled.any():
            metrics[f"p@{k}"] = float("nan")
            continue
        _, top = ranked_topk(logits[labelled].float(), k)
        hits = positive[labelled].gather(1, top).sum(1).double()
        metrics[f"p@{k}"] = (hits / k).mean().item()
    return metrics
