"""Shared helpers for the model tests: tiny configs, synthetic dict batches and loaders."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from configs.compose import compose, to_dict

NUM_CLASSES = {"weak_label": 12, "fashion_mnist": 10}
IMG = 32

# A 2-block ViT-Ti at 32 px with 8 px patches (16 tokens), and timm's smallest ResNet.
VIT = ["model=vit_demo", "model.kwargs.depth=2"]
RESNET = ["model=resnet_demo", "model.name=resnet10t"]


def tiny_config(*overrides: str, arch: str = "vit", tasks: str = "multitask") -> dict:
    """A composed, validated plain-dict config for a tiny CPU model."""
    base = VIT if arch == "vit" else RESNET
    items = [
        *base,
        f"tasks={tasks}",
        f"data.img_size={IMG}",
        "logger=none",
        "trainer=cpu",
        "optim.warmup_steps=0",
        "trainer.max_steps=20",
        "trainer.gradient_clip_val=null",
        *overrides,
    ]
    return to_dict(compose(items))


def make_batch(datasets=("weak_label", "fashion_mnist"), batch_size: int = 4, seed: int = 0, img: int = IMG) -> dict:
    """A dict batch in the format of docs/ARCHITECTURE.md; every weak-label row has >= 1 label."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for ds in datasets:
        image = torch.randn(batch_size, 3, img, img, generator=g)
        if ds == "weak_label":
            target = (torch.rand(batch_size, NUM_CLASSES[ds], generator=g) > 0.7).float()
            target[torch.arange(batch_size), torch.randint(0, NUM_CLASSES[ds], (batch_size,), generator=g)] = 1.0
        else:
            target = torch.randint(0, NUM_CLASSES[ds], (batch_size,), generator=g)
        batch[ds] = {"image": image, "target": target, "key": [f"{ds}-{seed}-{i}" for i in range(batch_size)]}
    return batch


class SyntheticSet(Dataset):
    """``n`` fixed samples of one dataset (``nan_at``: indices whose image is NaN)."""

    def __init__(self, dataset: str, n: int, seed: int = 0, img: int = IMG, nan_at: tuple[int, ...] = ()):
        part = make_batch((dataset,), batch_size=n, seed=seed, img=img)[dataset]
        self.image, self.target, self.keys = part["image"], part["target"], part["key"]
        for i in nan_at:
            self.image[i] = float("nan")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "target": self.target[i], "key": self.keys[i]}


def combined_loader(
    datasets=("weak_label", "fashion_mnist"), n: int = 8, batch_size: int = 4, seed: int = 0, nan_at=()
) -> CombinedLoader:
    """Unshuffled loaders of every dataset, combined so each batch is ``{dataset: sub-batch}``."""
    loaders = {
        ds: DataLoader(SyntheticSet(ds, n, seed=seed + i, nan_at=nan_at if ds == "weak_label" else ()), batch_size)
        for i, ds in enumerate(datasets)
    }
    return CombinedLoader(loaders, mode="max_size_cycle")


def cpu_trainer(max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    """A quiet single-process CPU trainer."""
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    options.update(kwargs)
    return pl.Trainer(**options)


class LossRecorder(pl.Callback):
    """Keeps the training loss of every step."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if outputs and "loss" in outputs:  # a skipped step returns nothing
            self.losses.append(float(outputs["loss"]))
