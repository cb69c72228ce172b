"""Label ids on the way in, dense targets on the device: the batch contract between loaders and the module.

Batches leave the loader workers small and flat in the number of labels C (CONVENTIONS pitfall 16):

* weak-label batches: ``"image"`` uint8 ``[B, 3, H, W]`` (no normalization on the CPU), ``"label_ids"`` int32
  ``[B, L]`` padded with ``-1`` (``L`` = the manifest's ``vocab.max_labels_per_image``, or the batch's longest
  label list when the manifest does not say or a sample holds more), ``"label_weights"`` float32 ``[B, L]`` (the
  label's score when the shard carries ``scores.<space>``, else 1; 0 on padding), ``"key"`` list[str];
* other datasets (Fashion-MNIST, image folders): ``"image"`` uint8 ``[B, 3, H, W]``, ``"target"`` int64 ``[B]``.

``BatchTransform`` runs after the batch reached the device (``MultiTaskDataModule.on_after_batch_transfer`` under
Lightning; ``evaluation.embeddings.extract_outputs`` outside it, through ``EvalLoader.batch_transform``): uint8 ->
float normalized by mean/std (timm's ``PrefetchLoader`` arithmetic), ``"target"`` float ``[B, C]`` multi-hot (or
soft: the weights) built by ``scatter_``, and, for training weak-label batches only, timm ``Mixup`` on the dense
target. The LightningModule then sees what it always saw: ``{"image": float, "target": float [B, C] | long [B]}``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from datamodules.loaders import mix_seed

PAD_ID = -1
ID_DTYPE = torch.int32  # 2**31 labels is far beyond any label space; half the bytes of int64


def label_arrays(ids: Sequence[int], scores: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sample's labels as ``(ids int32 [n], weights float32 [n])``; weights are the scores, or 1 without them.

    The caller has checked ``ids`` (integers in ``[0, C)``); ``scores`` must have the same length when given.
    """
    out_ids = np.asarray(ids, dtype=np.int32)
    if scores is None:
        return out_ids, np.ones(len(out_ids), dtype=np.float32)
    weights = np.asarray(scores, dtype=np.float32)
    if weights.shape != out_ids.shape:
        raise ValueError(f"{len(weights)} scores for {len(out_ids)} label ids")
    return out_ids, weights


def pad_labels(
    ids: Sequence[np.ndarray], weights: Sequence[np.ndarray], width: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-sample label arrays into ``(label_ids int32 [B, L], label_weights float32 [B, L])``.

    ``L = max(width, longest list)``: a fixed ``width`` keeps batch shapes constant; a sample with more labels widens
    the batch rather than losing labels. Padding is id ``-1`` with weight 0.
    """
    width = max([int(width), *(len(i) for i in ids)])
    out_ids = np.full((len(ids), width), PAD_ID, dtype=np.int32)
    out_w = np.zeros((len(ids), width), dtype=np.float32)
    for row, (i, w) in enumerate(zip(ids, weights)):
        out_ids[row, : len(i)] = i
        out_w[row, : len(w)] = w
    return torch.from_numpy(out_ids), torch.from_numpy(out_w)


def unpad_labels(label_ids: torch.Tensor, label_weights: torch.Tensor) -> list[tuple[list[int], list[float]]]:
    """Inverse of ``pad_labels``: per row, ``(ids, weights)`` without the padding."""
    rows = []
    for i, w in zip(label_ids.tolist(), label_weights.tolist()):
        n = sum(1 for x in i if x != PAD_ID)
        rows.append((i[:n], w[:n]))
    return rows


def dense_targets(
    label_ids: torch.Tensor, label_weights: torch.Tensor, num_classes: int, soft: bool = False
) -> torch.Tensor:
    """``[B, L]`` padded ids -> float32 ``[B, C]``: 1 at every label (``soft``: the label's weight), 0 elsewhere.

    Built where the tensors are (the device): one ``scatter_`` into a zero ``[B, C + 1]`` whose extra column takes
    the padding, then dropped.
    """
    ids = label_ids.long()
    ids = torch.where(ids < 0, num_classes, ids)
    values = label_weights.float() if soft else (label_ids >= 0).float()
    out = torch.zeros(ids.shape[0], num_classes + 1, dtype=torch.float32, device=ids.device)
    out.scatter_(1, ids, values)
    return out[:, :num_classes]


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std`` (timm ``PrefetchLoader``: one sub and one div).

    A float batch is returned unchanged (already normalized: tests, benchmarks, user loaders).
    """
    if images.is_floating_point():
        return images
    m = torch.tensor([x * 255 for x in mean], device=images.device).view(1, -1, 1, 1)
    s = torch.tensor([x * 255 for x in std], device=images.device).view(1, -1, 1, 1)
    return images.float().sub_(m).div_(s)


def batch_seed(seed: int, epoch: int, keys: Sequence[str]) -> int:
    """Mixup seed of a batch: from its sample keys, so a resumed run mixes the same batch the same way whatever
    Lightning's step counters say."""
    return mix_seed(seed, epoch, zlib.crc32("\n".join(map(str, keys)).encode()))


class BatchTransform:
    """The device side of the batch contract (module docstring); one object per DataModule.

    Args:
        num_classes: classes of the dataset whose batches carry ``label_ids`` (the weak-label label space).
        mixup_alpha: timm Mixup alpha for training weak-label batches; 0 = off.
        seed: run seed (mixup draws are seeded per batch from it, the epoch and the batch's keys).
        soft_targets: dense targets carry the label weights instead of 1.
        mean, std: normalization (ImageNet by default, the same as timm's transforms).
    """

    def __init__(
        self,
        num_classes: int | None,
        mixup_alpha: float = 0.0,
        seed: int = 0,
        soft_targets: bool = False,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.num_classes = num_classes
        self.seed = int(seed)
        self.soft = bool(soft_targets)
        self.mean, self.std = tuple(mean), tuple(std)
        self.mixup = None
        if mixup_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=float(mixup_alpha),
                cutmix_alpha=0.0,
                label_smoothing=0.0,
                num_classes=int(num_classes or 0),
                multi_label=True,
            )

    def __call__(self, batch: Mapping[str, Any], train: bool = False, epoch: int = 0) -> dict:
        """One dataset's batch (already on its device) -> the module's input format; other keys pass through."""
        out = dict(batch)
        if "image" in out:
            out["image"] = normalize_images(out["image"], self.mean, self.std)
        if "label_ids" in out:
            if self.num_classes is None:
                raise ValueError("a batch carries label_ids but this BatchTransform has no num_classes")
            out["target"] = dense_targets(out["label_ids"], out["label_weights"], self.num_classes, self.soft)
            if train and self.mixup is not None:
                out["image"], out["target"] = self.mix(out["image"], out["target"], out.get("key", ()), epoch)
        return out

    def mix(self, images: torch.Tensor, target: torch.Tensor, keys: Sequence[str], epoch: int):
        """timm Mixup (mode "batch") with its numpy draw seeded by ``batch_seed``; the global numpy state is kept."""
        state = np.random.get_state()
        try:
            np.random.seed(batch_seed(self.seed, epoch, keys) & 0xFFFFFFFF)
            return self.mixup(images, target)
        finally:
            np.random.set_state(state)

    def to_device(self, batch: Mapping[str, Any], device: torch.device | str) -> dict:
        """Move a batch's tensors to ``device`` and apply the eval transform (evaluation outside Lightning)."""
        moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return self(moved, train=False)

    def apply(self, batch: Mapping[str, Any], train: bool = False, epoch: int = 0) -> dict:
        """A training/val batch: ``{dataset: batch}`` (every part transformed) or one dataset's plain batch."""
        if "image" in batch or "label_ids" in batch:
            return self(batch, train, epoch)
        return {name: self(part, train, epoch) if isinstance(part, Mapping) else part for name, part in batch.items()}
