"""Linear probe: a softmax classifier trained on frozen features, reported on held-out features.

Recipe: features standardized with the training set's mean and std; one ``nn.Linear``; cross-entropy;
minibatch SGD with Nesterov momentum 0.9 and a cosine learning-rate decay over ``epochs``; weight
decay as given (eval.linear_probe.*). Initialisation and batch order come from a seeded
``torch.Generator``, so the same inputs and seed give the same probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class LinearProbe:
    """A trained probe: standardization statistics and the linear layer."""

    mean: Tensor
    std: Tensor
    linear: nn.Linear

    @torch.no_grad()
    def predict(self, features: Tensor, batch_size: int = 8192) -> Tensor:
        """Class ids long [N] for float features [N, D]."""
        device = self.linear.weight.device
        preds = []
        for s in range(0, features.shape[0], batch_size):
            x = (features[s : s + batch_size].float().to(device) - self.mean) / self.std
            preds.append(self.linear(x).argmax(dim=1).cpu())
        return torch.cat(preds)


def train_linear_probe(
    features: Tensor,
    targets: Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
) -> LinearProbe:
    """Fit a linear classifier on frozen features.

    Args:
        features: float [N, D]; targets: class ids long [N].
        num_classes: label count (default: max class id + 1).
        epochs, lr, weight_decay, batch_size: the eval.linear_probe.* keys.
        seed: seeds the initialisation and the batch order.
        device: where to train.

    Returns:
        The trained ``LinearProbe``.
    """
    if targets.ndim != 1 or targets.is_floating_point():
        raise ValueError("the linear probe needs single-label integer targets [N]")
    if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
        raise ValueError(f"features ({features.shape[0]}) and targets ({targets.shape[0]}) must be equal and non-empty")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("eval.linear_probe needs epochs >= 1, batch_size >= 1 and lr > 0")
    device = torch.device(device or "cpu")
    num_classes = num_classes or int(targets.max().item()) + 1
    x = features.float().to(device)
    y = targets.long().to(device)
    mean = x.mean(dim=0, keepdim=True)
    std = x.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)  # constant features stay finite
    x = (x - mean) / std

    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(x.shape[1])
        linear.weight.copy_(torch.empty_like(linear.weight).uniform_(-bound, bound, generator=gen))
        linear.bias.zero_()
    linear.to(device)
    opt = torch.optim.SGD(linear.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    with torch.enable_grad():  # callers may sit inside inference_mode / no_grad
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen).to(device)
            for s in range(0, x.shape[0], batch_size):
                idx = order[s : s + batch_size]
                loss = loss_fn(linear(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    linear.eval()
    return LinearProbe(mean, std, linear)


def linear_probe_accuracy(
    train_features: Tensor,
    train_targets: Tensor,
    test_features: Tensor,
    test_targets: Tensor,
    *args: Any,
    **kwargs: Any,
) -> float:
    """Top-1 accuracy in [0, 1] on the test features of a probe trained on the train features; further
    arguments as ``train_linear_probe``'s after ``num_classes`` (epochs, lr, weight_decay, batch_size, seed, device)."""
    num_classes = int(max(train_targets.max().item(), test_targets.max().item())) + 1
    probe = train_linear_probe(train_features, train_targets, num_classes, *args, **kwargs)
    return (probe.predict(test_features) == test_targets.long()).double().mean().item()
