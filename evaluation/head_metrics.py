"""Metrics of a pretrained weak-label head on held-out labels.

mAP: per-label average precision (torchmetrics' multilabel_average_precision, exact, no
     thresholds binning), averaged over the labels that have at least one positive among the
     evaluated items. torchmetrics' own ``average="macro"`` counts labels without positives as 0,
     which would make the figure depend on how many rare labels a small split happens to miss.
p@k: per item with at least one label, |top-k predicted labels ∩ true labels| / k, averaged; ties
     among logits go to the lowest label id (as ``evaluation.retrieval.ranked_topk``).

``weak_label_head_metrics`` takes dense logits and multi-hot targets [N, C]. ``streaming_head_metrics``
computes the same figures from backbone features and the head, block by block, with label sets
instead of dense targets: it keeps logits only for the labels that occur among the evaluated items
(at most N x labels per item columns) and one [block, C] block at a time, so its memory does not
grow with C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision

from evaluation.retrieval import PAD, LabelSets, label_sets, ranked_topk

HEAD_BLOCK_SCORES = 1 << 22  # logits per head block in streaming_head_metrics (16 MiB of float32)


def _map_over_present(preds: Tensor, positive: Tensor) -> float:
    """Mean AP over the columns of ``positive`` [N, P] that hold a positive (``preds`` [N, P] logits)."""
    has_pos = positive.any(dim=0)
    if not has_pos.any():
        return float("nan")
    # Only labels with positives: AP is undefined for the others (and torchmetrics warns on them).
    preds, target = preds[:, has_pos].float(), positive[:, has_pos].int()
    if target.shape[1] == 1:  # torchmetrics' multilabel form needs two labels or more
        return binary_average_precision(preds[:, 0], target[:, 0]).item()
    return multilabel_average_precision(preds, target, num_labels=target.shape[1], average=None).mean().item()


def weak_label_head_metrics(logits: Tensor, targets: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """{"mAP": float, "p@k": float for k in ks with k <= num labels} from logits and multi-hot targets [N, C]."""
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"the weak-label head predicts {tuple(logits.shape)} but the targets are {tuple(targets.shape)}: "
            "the head's label space does not match the data's"
        )
    positive = targets > 0
    metrics = {"mAP": _map_over_present(logits, positive)}
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


@torch.inference_mode()
def streaming_head_metrics(
    head: Callable[[Tensor], Tensor],
    features: Tensor,
    targets: Tensor | LabelSets,
    num_labels: int,
    ks: Sequence[int],
) -> dict[str, float]:
    """``weak_label_head_metrics`` of ``head(features)`` without the dense [N, C] logits or targets.

    Args:
        head: the weak-label head (features [B, D] -> logits [B, num_labels]).
        features: the head's input for the evaluated items, float [N, D].
        targets: anything ``evaluation.retrieval.label_sets`` takes (dense multi-hot or padded ids).
        num_labels: C, the head's output size.
        ks: p@k cut-offs (those above C are skipped).

    Returns:
        {"mAP": float, "p@k": float}, equal to ``weak_label_head_metrics`` on the dense tensors.
    """
    sets = label_sets(targets)
    n = features.shape[0]
    present = torch.unique(sets.ids[sets.ids != PAD])  # the only columns mAP can use
    if present.numel() and int(present[-1]) >= num_labels:
        raise ValueError(
            f"the weak-label head predicts {num_labels} labels but the data holds label id {int(present[-1])}: "
            "the head's label space does not match the data's"
        )
    # Position of each item's labels among the present columns -> a dense [N, P] positive mask (P <= N x L).
    positive = torch.zeros(n, present.numel(), dtype=torch.bool)
    rows, slots = torch.nonzero(sets.ids != PAD, as_tuple=True)
    positive[rows, torch.searchsorted(present, sets.ids[rows, slots])] = True
    kept = torch.empty(n, present.numel())
    ks = [k for k in ks if k <= num_labels]
    hits = {k: torch.zeros(n, dtype=torch.float64) for k in ks}
    block = max(1, HEAD_BLOCK_SCORES // max(num_labels, 1))
    for s in range(0, n, block):
        logits = head(features[s : s + block]).float()
        if logits.shape[1] != num_labels:
            raise ValueError(f"the weak-label head predicts {logits.shape[1]} labels, expected {num_labels}")
        kept[s : s + block] = logits[:, present]
        if ks:
            _, top = ranked_topk(logits, max(ks))
            for k in ks:
                hits[k][s : s + block] = _in_sets(top[:, :k], sets[s : s + block]).sum(1).double()
    metrics = {"mAP": _map_over_present(kept, positive)}
    labelled = sets.sizes > 0
    for k in ks:
        metrics[f"p@{k}"] = (hits[k][labelled] / k).mean().item() if labelled.any() else float("nan")
    return metrics


def _in_sets(ids: Tensor, sets: LabelSets) -> Tensor:
    """bool [B, k]: whether ids[i, j] is in the label set of item i (sorted-set lookup)."""
    pos = torch.searchsorted(sets.ids.contiguous(), ids.contiguous()).clamp_(max=sets.ids.shape[1] - 1)
    return sets.ids.gather(1, pos) == ids
