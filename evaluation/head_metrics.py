"""Weak-label head metrics: the one implementation behind training validation (``val/weak_label/*``, through
``lit_modules.tasks``) and evaluate.py (``eval/weak_label_val/head/*``, through ``evaluation.runner``).

mAP: per-label average precision (torchmetrics' definition), averaged over the labels that have at least
     one positive among the evaluated items. torchmetrics' own ``average="macro"`` counts labels without
     positives as 0, which would make the figure depend on how many rare labels a split happens to miss.
p@k: per item with at least one label, |top-k predicted labels ∩ true labels| / k, averaged; ties among
     scores go to the lowest label id (``evaluation.retrieval.ranked_topk``), so the value is deterministic.

* ``mean_ap_over_present`` and ``precision_at_k``: the two rules, on dense ``[N, C]`` scores and targets.
* ``WeakLabelMAP``: mAP as a torchmetrics ``Metric`` for validation under DDP, exact for small passes and
  from a bounded score histogram otherwise.
* ``streaming_head_metrics``: both figures from backbone features and the head, block by block, with label
  sets instead of dense targets: it keeps logits only for the labels that occur among the evaluated items
  (at most N x labels per item columns) and one ``[block, C]`` block at a time, so its memory does not grow
  with N x C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

from evaluation.retrieval import PAD, LabelSets, label_sets, ranked_topk

__all__ = [
    "EXACT_MAP_MAX_ELEMENTS",
    "MAP_THRESHOLDS",
    "WeakLabelMAP",
    "mean_ap_over_present",
    "precision_at_k",
    "streaming_head_metrics",
]

HEAD_BLOCK_SCORES = 1 << 22  # logits per head block in streaming_head_metrics (16 MiB of float32)
MAP_THRESHOLDS = 100  # score bins of the bounded mAP state: 2 x C x T int64 (16 MB per 10k labels)
# Exact mAP when the gathered predictions of a validation pass hold at most this many rows x labels (about
# 5 bytes each: fp32 scores + bool targets, i.e. <= 84 MB): e.g. 40k rows at C=400, 800 rows at C=20k.
EXACT_MAP_MAX_ELEMENTS = 1 << 24


def mean_ap_over_present(preds: Tensor, positive: Tensor) -> Tensor:
    """Exact mean AP over the columns of ``positive`` [N, C] (bool or 0/1) that hold a positive; NaN when none
    does. ``preds`` [N, C] scores (torchmetrics maps scores outside [0, 1] through a sigmoid: the same AP)."""
    has_pos = positive.sum(dim=0) > 0
    if not bool(has_pos.any()):
        return torch.tensor(float("nan"), device=preds.device)
    # Only labels with positives: AP is undefined for the others (and torchmetrics warns on them).
    preds, target = preds[:, has_pos].float(), positive[:, has_pos].long()
    if target.shape[1] == 1:  # torchmetrics' multilabel form needs two labels or more
        return binary_average_precision(preds[:, 0], target[:, 0], thresholds=None, validate_args=False)
    return multilabel_average_precision(
        preds, target, num_labels=target.shape[1], average="macro", thresholds=None, validate_args=False
    )


def precision_at_k(scores: Tensor, positives: Tensor, k: int) -> Tensor:
    """Per-row precision@k: the fraction of the ``k`` top-scored labels that are positives.

    Args:
        scores: ``[B, C]`` label scores.
        positives: ``[B, C]`` 0/1 (or bool) targets.
        k: how many top labels count; at most C (p@k is not defined with fewer labels than k).

    Returns:
        float64 ``[B']`` values for the rows with at least one positive (rows without labels are not scored).
    """
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"precision@{k} needs 1 <= k <= the number of labels ({scores.shape[1]})")
    _, top = ranked_topk(scores, k)
    hits = (positives.gather(1, top) > 0).sum(dim=1).double() / k
    return hits[(positives > 0).sum(dim=1) > 0]


class WeakLabelMAP(Metric):
    """``mean_ap_over_present`` as a metric whose state syncs over DDP ranks.

    Two modes, chosen before a pass with ``plan`` (the module does it per evaluation epoch from the number of
    batches, the same on every rank):

    * exact: every score and target is kept, then ``mean_ap_over_present``; for passes up to
      ``EXACT_MAP_MAX_ELEMENTS`` rows x labels;
    * binned (default): per label, counts of positives and negatives in ``thresholds`` score bins, a fixed
      ``int64 [2, C, T]`` state whatever the number of samples, summed over ranks. The AP equals torchmetrics'
      ``MultilabelAveragePrecision(thresholds=T)``. Written here because torchmetrics' binned update materializes a
      ``[B, C, T]`` int64 tensor per batch (20 GB at B=256, C=100k, T=100); this one needs ``[B, C]``.

    Scores must lie in [0, 1] (probabilities).
    """

    full_state_update = False

    def __init__(self, num_labels: int, thresholds: int = MAP_THRESHOLDS, exact: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if thresholds < 2:
            raise ValueError(f"thresholds={thresholds}: need at least 2 score bins")
        self.num_labels = int(num_labels)
        self.num_thresholds = int(thresholds)
        self.exact = bool(exact)
        self.register_buffer("edges", torch.linspace(0, 1, self.num_thresholds), persistent=False)
        self.add_state("hist", torch.zeros(2, self.num_labels, self.num_thresholds, dtype=torch.long), "sum")
        self.add_state("preds", [], "cat")
        self.add_state("target", [], "cat")

    def plan(self, rows: float) -> None:
        """Choose the mode of the next pass from the rows it will hold over all ranks (call on every rank alike,
        before the first update): exact up to ``EXACT_MAP_MAX_ELEMENTS`` rows x labels, else binned."""
        self.exact = rows * self.num_labels <= EXACT_MAP_MAX_ELEMENTS

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds`` float ``[B, C]`` in [0, 1], ``target`` ``[B, C]`` (> 0 = positive)."""
        positive = target > 0
        if self.exact:
            self.preds.append(preds.float())
            self.target.append(positive)
            return
        # bin j holds scores in [edge_j, edge_j+1): a score counts as predicted positive at thresholds 0..j
        bins = torch.bucketize(preds.float().clamp(0, 1), self.edges, right=True) - 1
        labels = torch.arange(self.num_labels, device=preds.device)
        index = (positive.long() * self.num_labels + labels) * self.num_thresholds + bins
        counts = torch.bincount(index.flatten(), minlength=self.hist.numel())
        self.hist += counts.view_as(self.hist)

    def state_bytes(self) -> int:
        """Bytes held by the metric state now (the bounded part plus any exact rows)."""
        rows = [t for state in (self.preds, self.target) for t in (state if isinstance(state, list) else [state])]
        return self.hist.numel() * self.hist.element_size() + sum(t.numel() * t.element_size() for t in rows)

    def compute(self) -> Tensor:
        if self.exact:
            if isinstance(self.target, list) and not self.target:  # after a DDP sync the state is one tensor
                return torch.tensor(float("nan"), device=self.hist.device)
            return mean_ap_over_present(dim_zero_cat(self.preds), dim_zero_cat(self.target))
        neg, pos = self.hist[0].double(), self.hist[1].double()
        has_positive = pos.sum(dim=1) > 0
        if not bool(has_positive.any()):
            return torch.tensor(float("nan"), device=self.hist.device)
        neg, pos = neg[has_positive], pos[has_positive]
        # counts at or above each threshold (reverse cumulative sum over the bins)
        tps = pos.flip(1).cumsum(1).flip(1)
        fps = neg.flip(1).cumsum(1).flip(1)
        precision = tps / (tps + fps).clamp_min(1)  # 0 where nothing is predicted positive, as torchmetrics
        recall = tps / pos.sum(dim=1, keepdim=True)
        ones = torch.ones_like(precision[:, :1])
        precision, recall = torch.cat([precision, ones], 1), torch.cat([recall, 0 * ones], 1)
        ap = -((recall[:, 1:] - recall[:, :-1]) * precision[:, :-1]).sum(1)
        return ap.mean().float()


@torch.inference_mode()
def streaming_head_metrics(
    head: Callable[[Tensor], Tensor],
    features: Tensor,
    targets: Tensor | LabelSets,
    num_labels: int,
    ks: Sequence[int],
) -> dict[str, float]:
    """mAP (``mean_ap_over_present``) and p@k (``precision_at_k``) of ``head(features)`` without the dense
    [N, C] logits or targets of the whole split.

    Args:
        head: the weak-label head (features [B, D] -> logits [B, num_labels]).
        features: the head's input for the evaluated items, float [N, D].
        targets: anything ``evaluation.retrieval.label_sets`` takes (dense multi-hot or padded ids).
        num_labels: C, the head's output size.
        ks: p@k cut-offs (those above C are skipped).

    Returns:
        {"mAP": float, "p@k": float}; NaN where no item has a label.
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
    per_row: dict[int, list[Tensor]] = {k: [] for k in ks}
    block = max(1, HEAD_BLOCK_SCORES // max(num_labels, 1))
    for s in range(0, n, block):
        logits = head(features[s : s + block]).float()
        if logits.shape[1] != num_labels:
            raise ValueError(f"the weak-label head predicts {logits.shape[1]} labels, expected {num_labels}")
        kept[s : s + block] = logits[:, present]
        if ks:
            # This block's positives as a dense [block, C] mask (the size of its logits).
            dense = torch.zeros(logits.shape, dtype=torch.bool)
            b_rows, b_slots = torch.nonzero(sets.ids[s : s + block] != PAD, as_tuple=True)
            dense[b_rows, sets.ids[s : s + block][b_rows, b_slots]] = True
            for k in ks:
                per_row[k].append(precision_at_k(logits, dense, k))
    metrics = {"mAP": mean_ap_over_present(kept, positive).item()}
    for k in ks:
        values = torch.cat(per_row[k])
        metrics[f"p@{k}"] = values.mean().item() if values.numel() else float("nan")
    return metrics
