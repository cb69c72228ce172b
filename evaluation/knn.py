"""k-nearest-neighbour classification on frozen embeddings, reusing the blockwise top-k search.

Vote: each of the k nearest training items (cosine similarity, found by ``evaluation.retrieval.topk_search``,
faiss when installed; an exact tie at the k-th place lets either item in) votes for its class with weight exp(cos / T), T = 0.07:
the similarity-weighted k-NN of Wu et al. (2018) used by DINO's evaluation. Closer neighbours count
more; with T -> infinity it is a plain majority vote. Equal vote totals go to the lowest class id.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evaluation.retrieval import topk_search

DEFAULT_TEMPERATURE = 0.07


def knn_predict(
    train_features: Tensor,
    train_targets: Tensor,
    test_features: Tensor,
    k: int,
    num_classes: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    block_size: int = 1024,
    device: str | torch.device | None = "cpu",
) -> Tensor:
    """Class predictions long [N_test] by a similarity-weighted vote of the k nearest training items.

    Args:
        train_features: float [N_train, D]; train_targets: class ids long [N_train].
        test_features: float [N_test, D].
        k: neighbours (<= N_train, else ValueError).
        num_classes: label count (default: max class id + 1).
        temperature: T in exp(cos / T); must be positive.
        block_size, device: as in ``topk_search``.
    """
    if train_targets.ndim != 1 or train_targets.is_floating_point():
        raise ValueError("k-NN needs single-label integer training targets [N]")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    num_classes = num_classes or int(train_targets.max().item()) + 1
    found = topk_search(test_features, train_features, k, "cosine", block_size, device=device)
    weights = torch.exp(found.scores.double() / temperature)
    votes = torch.zeros(test_features.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_targets.long()[found.indices], weights)
    return votes.argmax(dim=1)  # argmax returns the first maximum: ties go to the lowest class id


def knn_accuracy(
    train_features: Tensor, train_targets: Tensor, test_features: Tensor, test_targets: Tensor, k: int, **kwargs: Any
) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict`` on the test items; keyword arguments as ``knn_predict``'s
    (temperature, block_size, device)."""
    num_classes = int(max(train_targets.max().item(), test_targets.max().item())) + 1
    pred = knn_predict(train_features, train_targets, test_features, k, num_classes, **kwargs)
    return (pred == test_targets.long()).double().mean().item()
