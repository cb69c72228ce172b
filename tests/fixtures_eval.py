"""Shared helpers of the evaluation tests: an independent brute-force numpy reference, tie-rich
embeddings, a fake MultiTaskModule and fake eval loaders (dependency injection, no real data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------ brute-force reference


def brute_scores(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """Full [Q, G] score matrix in float64: cosine, or minus the Hamming distance of the sign bits."""
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return qn.astype(np.float64) @ gn.astype(np.float64).T
    qb, gb = q > 0, g > 0
    return -(qb[:, None, :] != gb[None, :, :]).sum(-1).astype(np.float64)


def brute_ranking(scores: np.ndarray, self_index: Sequence[int] | None = None) -> list[np.ndarray]:
    """Per query, gallery indices sorted by score desc then index asc, self removed."""
    out = []
    for i, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), -row))  # last key is primary
        if self_index is not None and self_index[i] >= 0:
            order = order[order != self_index[i]]
        out.append(order)
    return out


def brute_relevant(q_t: np.ndarray, g_t: np.ndarray) -> np.ndarray:
    """[Q, G] bool: same class (1-D targets) or a shared label (multi-hot)."""
    if q_t.ndim == 1:
        return q_t[:, None] == g_t[None, :]
    return (q_t.astype(float) @ g_t.astype(float).T) > 0


def strict_metrics(rel_ranked: np.ndarray, total: int, ks) -> dict[str, float]:
    """One query's metrics on a strict ranking, by their textbook definitions (``rel_ranked``: 0/1 in rank order)."""
    out = {}
    for k in ks:
        hits = rel_ranked[:k].sum()
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = float(hits > 0)  # metric-learning Recall@K: any relevant item in the top k
        out[f"ir_recall@{k}"] = hits / total
        ap = sum(rel_ranked[:i_].sum() / i_ * rel_ranked[i_ - 1] for i_ in range(1, k + 1))
        out[f"mAP@{k}"] = ap / min(total, k)
    return out


def brute_metrics(q, q_t, g, g_t, ks, metric="cosine", self_index=None) -> dict[str, float]:
    """precision/recall/ir_recall/mAP@k by their textbook definitions, query by query in Python, on the
    ranking "score desc, then gallery index asc": equal to the tie-aware figures only on untied data."""
    q, q_t, g, g_t = (np.asarray(x) for x in (q, q_t, g, g_t))
    rel_all = brute_relevant(q_t, g_t)
    ranking = brute_ranking(brute_scores(q, g, metric), self_index)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("precision", "recall", "ir_recall", "mAP")}
    used = 0
    for i, order in enumerate(ranking):
        rel_row = rel_all[i].copy()
        if self_index is not None and self_index[i] >= 0:
            rel_row[self_index[i]] = False
        total = int(rel_row.sum())
        if total == 0:
            continue
        used += 1
        for name, value in strict_metrics(rel_row[order].astype(float), total, ks).items():
            sums[name] += value
    return {name: value / used for name, value in sums.items()}


def brute_tie_average(scores: np.ndarray, rel: np.ndarray, ks) -> dict[str, float]:
    """Expected metrics over every ordering of tied items, by enumeration: average the strict metrics of
    the ranking "score desc, then position in a permutation" over ALL permutations of the gallery
    (each ordering of the tied groups is equally likely). ``scores``/``rel``: [Q, G], G <= 7; queries
    without relevant items are skipped."""
    import itertools

    sums: dict[str, float] = {}
    used = 0
    for row, rel_row in zip(scores, rel, strict=True):
        total = int(rel_row.sum())
        if total == 0:
            continue
        used += 1
        perms = list(itertools.permutations(range(row.size)))
        for perm in perms:
            perm = np.asarray(perm)
            order = perm[np.lexsort((np.arange(row.size), -row[perm]))]
            for name, value in strict_metrics(rel_row[order].astype(float), total, ks).items():
                sums[name] = sums.get(name, 0.0) + value / len(perms)
    return {name: value / used for name, value in sums.items()}


# --------------------------------------------------------------------------------- embeddings


def weak_label_head_metrics(logits: torch.Tensor, targets: torch.Tensor, ks) -> dict[str, float]:
    """Dense reference of ``evaluation.head_metrics``: {"mAP", "p@k" for k <= C} from logits and multi-hot
    targets [N, C], written independently: sklearn's average precision per label with a positive, and
    p@k from a stable descending sort (equal logits keep label-id order)."""
    from sklearn.metrics import average_precision_score

    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ: label space")
    positive = (targets > 0).numpy()
    scores = logits.double().numpy()
    present = [j for j in range(positive.shape[1]) if positive[:, j].any()]
    aps = [average_precision_score(positive[:, j], scores[:, j]) for j in present]
    metrics = {"mAP": float(np.mean(aps)) if aps else float("nan")}
    labelled = positive.any(axis=1)
    order = torch.sort(logits.double(), dim=1, descending=True, stable=True).indices.numpy()
    for k in ks:
        if k > logits.shape[1]:
            continue
        hits = np.take_along_axis(positive, order[:, :k], axis=1).sum(1) / k
        metrics[f"p@{k}"] = float(hits[labelled].mean()) if labelled.any() else float("nan")
    return metrics


# ------------------------------------------- test-side views of evaluation.retrieval's building blocks


def unpack_signs(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed codes [N, ceil(D/8)] (``pack_signs``) -> float32 +-1 vectors [N, D] (bit 1 -> +1, bit 0 -> -1)."""
    bits = np.unpackbits(codes.cpu().numpy(), axis=1, count=dim)
    return torch.from_numpy(bits).float().mul_(2).sub_(1)


def relevance(q_targets, g_targets, indices: torch.Tensor, self_index: torch.Tensor | None = None):
    """(rel bool [Q, k], num_relevant long [Q]) of retrieved gallery ``indices`` [Q, k], from the library's
    ``label_sets``, ``share_label`` and ``count_relevant``; the query itself is not counted as relevant."""
    from evaluation.retrieval import count_relevant, label_sets, share_label

    q_sets, g_sets = label_sets(q_targets), label_sets(g_targets)
    k = indices.shape[1]
    rel = share_label(q_sets[torch.arange(len(q_sets)).repeat_interleave(k)], g_sets[indices.reshape(-1)])
    return rel.view(-1, k), count_relevant(q_sets, g_sets, self_index)


def retrieval_metrics(rel: torch.Tensor, num_relevant: torch.Tensor, ks):
    """``tie_aware_metrics`` of a strict ranking (no ties): ``rel`` bool [Q, K] in rank order."""
    from evaluation.retrieval import RankedLists, tie_aware_metrics

    num_q, width = rel.shape
    ranked = RankedLists(
        -torch.arange(width, dtype=torch.float64).expand(num_q, width),
        rel.bool(),
        torch.ones(num_q, dtype=torch.long),
        rel[:, -1].long(),
    )
    return tie_aware_metrics(ranked, num_relevant, ks)


def tied_embeddings(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """+-1 vectors with dim = 16: normalized entries are +-0.25 and every cosine a multiple of 1/16,
    all exact in float32, so ties are real ties whatever the blocking."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, dim), generator=gen).float() * 2 - 1


def class_clusters(n: int, num_classes: int, dim: int = 8, noise: float = 0.05, seed: int = 0, centers_seed: int = 99):
    """Separable data: class c sits around a random direction (the same for every ``seed``, so
    splits drawn with different seeds share classes). Returns (features [n, dim], labels [n])."""
    centers = F.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(centers_seed)), dim=1)
    centers = centers * 3
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    return centers[labels] + noise * torch.randn(n, dim, generator=gen), labels


# ------------------------------------------------------------------------------- fake module


class NormLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)


class FakeMultiTaskModule(nn.Module):
    """The MultiTaskModule contract in miniature: embed(images, feature) and heads{embedding, weak_label}.

    The backbone is the identity on the first ``width`` pixels, so features are the images' content.
    """

    def __init__(self, width: int = 8, dim: int = 6, num_labels: int | None = None, embedding: bool = True):
        super().__init__()
        self.width = width
        self.heads = nn.ModuleDict()
        if embedding:
            self.heads["embedding"] = NormLinear(width, dim)
        if num_labels:
            self.heads["weak_label"] = nn.Linear(width, num_labels)
        self.calls: list[str] = []

    def embed(self, images: torch.Tensor, feature: str = "embedding") -> torch.Tensor:
        self.calls.append(feature)
        feat = images.flatten(1)[:, : self.width].float()
        if feature == "backbone":
            return feat
        if feature == "embedding":
            return self.heads["embedding"](feat)
        raise ValueError(feature)


def images_from_features(features: torch.Tensor, size: int = 4) -> torch.Tensor:
    """[N, D] -> [N, 3, size, size] images whose first D pixels (flattened) are the features."""
    n, d = features.shape
    flat = torch.zeros(n, 3 * size * size)
    flat[:, :d] = features
    return flat.view(n, 3, size, size)


def make_loader(features: torch.Tensor, targets: torch.Tensor, batch_size: int = 16, prefix: str = "s"):
    """A list of {"image", "target", "key"} batches, as datamodules.eval_loader yields."""
    images = images_from_features(features)
    return [
        {
            "image": images[s : s + batch_size],
            "target": targets[s : s + batch_size],
            "key": [f"{prefix}{i:05d}" for i in range(s, min(s + batch_size, len(targets)))],
        }
        for s in range(0, len(targets), batch_size)
    ]


class FakeLoaders:
    """loader_fn(cfg, dataset, split) over fixed tensors; records the calls."""

    def __init__(self, splits: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]], batch_size: int = 16):
        self.splits = splits
        self.batch_size = batch_size
        self.calls: list[tuple[str, str]] = []

    def __call__(self, cfg, dataset: str, split: str):
        self.calls.append((dataset, split))
        if (dataset, split) not in self.splits:
            raise FileNotFoundError(f"no fake data for {dataset}/{split}")
        x, y = self.splits[(dataset, split)]
        return make_loader(x, y, self.batch_size, prefix=f"{dataset}-{split}-")


def fashion_and_weak_label_splits(n_train: int = 60, n_test: int = 30, n_val: int = 40, num_labels: int = 5):
    """Separable 'fashion_mnist' (3 classes) and multi-hot 'weak_label' val data for the runner."""
    x_tr, y_tr = class_clusters(n_train, 3, seed=1)
    x_te, y_te = class_clusters(n_test, 3, seed=2)
    x_val, c_val = class_clusters(n_val, num_labels, seed=3)
    multi_hot = F.one_hot(c_val, num_labels).float()
    multi_hot[::4, (c_val[::4] + 1) % num_labels] = 1.0  # some items carry a second label
    return {
        ("fashion_mnist", "train"): (x_tr, y_tr),
        ("fashion_mnist", "test"): (x_te, y_te),
        ("weak_label", "val"): (x_val, multi_hot),
    }
