"""Fashion-MNIST, the downstream shopping task: an auxiliary classifier during multi-task training and the
retrieval / probe benchmark (query = test split, gallery = train split).

Files are the IDX archives of the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or
any folder ``data.fashion_mnist.root`` names: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (uncompressed copies without ``.gz`` also work). They
are parsed with numpy; nothing is downloaded.

``data.fashion_mnist.train_limit`` / ``test_limit`` keep the *first* N images of a split in file order (the files are
already in a class-mixed order), so a limited split is the same on every machine and every run. Images are 28x28
grayscale, replicated to 3 channels and resized to ``data.img_size``; sample keys are ``fashion_mnist/<split>/<index>``.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.loaders import MapSource, map_eval_loader
from datamodules.sources import DataConfigError, DatasetSource
from datamodules.transforms import image_transform

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NUM_CLASSES = len(CLASSES)
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) into an array; a clear error names the file when malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataConfigError(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataConfigError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(x) for x in np.frombuffer(data[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataConfigError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def idx_path(root: str, stem: str) -> str:
    """The .gz (preferred) or uncompressed file for ``stem`` under ``root``; clear error when neither exists."""
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise DataConfigError(
        f"Fashion-MNIST file not found: {os.path.join(root, stem + '.gz')} (data.fashion_mnist.root={root}); install "
        f"the Debian package dataset-fashion-mnist or point data.fashion_mnist.root at a folder holding "
        f"{', '.join(s + '.gz' for pair in SPLITS.values() for s in pair)}"
    )


def load_split(root: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8[N,28,28], labels int64[N]) of ``split`` ("train" or "test"), the first ``limit`` if given."""
    if split not in SPLITS:
        raise DataConfigError(f"Fashion-MNIST has splits {sorted(SPLITS)}, not '{split}'")
    images = read_idx(idx_path(root, SPLITS[split][0]))
    labels = read_idx(idx_path(root, SPLITS[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataConfigError(
            f"Fashion-MNIST {split} under {root}: images {images.shape} do not match labels {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataConfigError(f"Fashion-MNIST {split} under {root}: labels outside 0..{NUM_CLASSES - 1}")
    if limit is not None:
        if limit <= 0:
            raise DataConfigError(f"data.fashion_mnist.{split}_limit={limit} must be positive")
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Map-style Fashion-MNIST split; items ``{"image": uint8[3,H,W], "target": int, "key": str}`` (normalized on the
    device: ``datamodules.targets``)."""

    def __init__(self, root: str, split: str, transform: Any, limit: int | None = None) -> None:
        self.split = split
        self.images, self.labels = load_split(root, split, limit)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return {
            "image": self.transform(img),
            "target": int(self.labels[index]),
            "key": f"fashion_mnist/{self.split}/{index:05d}",
        }


class FashionMNISTSource(DatasetSource):
    """Fashion-MNIST as a dataset source: train split for training, test split for validation, and evaluate.py's
    ``fashion_mnist`` retrieval (gallery = train, queries = test). Images are read when a loader is built."""

    retrieval = {"fashion_mnist": ("train", "test")}
    num_classes = NUM_CLASSES
    label_names = CLASSES
    val_split = "test"

    def __init__(self, cfg: Any, name: str = "fashion_mnist") -> None:
        self.cfg = cfg
        self.name = name

    @classmethod
    def check_files(cls, cfg: Any) -> None:
        root = str(cfg.data.fashion_mnist.root)
        if not os.path.exists(root):
            raise FileNotFoundError(
                f"data.fashion_mnist.root={root}: no such directory "
                "(install the Debian package dataset-fashion-mnist or set data.fashion_mnist.root)"
            )

    def dataset(self, split: str, train: bool) -> FashionMNIST:
        """The ``split`` with train or eval transforms (limits from data.fashion_mnist)."""
        fm = self.cfg.data.fashion_mnist
        limit = fm.train_limit if split == "train" else fm.test_limit
        return FashionMNIST(str(fm.root), split, image_transform(self.cfg.data, train, grayscale_safe=True), limit)

    def train_source(self, rank: int, world: int) -> MapSource:
        dataset = self.dataset("train", train=True)
        balanced = bool(self.cfg.data.fashion_mnist.class_balanced)
        labels = dataset.labels if balanced else None
        return MapSource(self.name, dataset, self.cfg.data, int(self.cfg.seed), rank, world, class_labels=labels)

    def eval_loader(self, split: str, rank: int, world: int) -> tuple[DataLoader, int]:
        return map_eval_loader(self.dataset(split, train=False), self.cfg.data, rank, world)
