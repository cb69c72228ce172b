"""A user's own classification data for an extra task head (``data.user_tasks.<name>``).

Two layouts:

* ``root``: an image folder with one sub-folder per class (class names = sorted sub-folder names);
* ``manifest``: a CSV (header with ``path`` and ``label`` columns) or JSONL (``{"path": ..., "label": ...}`` per
  line) file; paths are relative to the manifest's folder (or absolute); labels are class names, or integers
  ``0..C-1`` (then the names are the integers as strings).

Split: an image is in ``val`` when ``sha1("split:" + relative path)`` read as a fraction is below ``val_fraction``,
else in ``train`` -- stable when images are added or removed. Unreadable images are counted skips: in training the
next readable image takes the slot (the batch keeps its size), in evaluation the image is left out (the batch is
one smaller). Sample keys are the relative paths.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.loaders import MapSource, map_eval_loader
from datamodules.sources import DataConfigError, DatasetSource
from datamodules.transforms import image_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def hash_unit(text: str) -> float:
    """First 8 bytes of SHA-1 of ``text`` as a fraction in [0, 1) (the same rule as the shard splits)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


class ImageFolderTask:
    """Items and classes of one user task; classes are known right after construction (no image is opened)."""

    def __init__(self, name: str, task_cfg: Any) -> None:
        self.name = name
        key = f"data.user_tasks.{name}"
        root, manifest = task_cfg.root, task_cfg.manifest
        if (root is None) == (manifest is None):
            raise DataConfigError(f"{key}: set exactly one of root (image folder) or manifest (CSV/JSONL)")
        if not 0.0 <= float(task_cfg.val_fraction) < 1.0:
            raise DataConfigError(f"{key}.val_fraction={task_cfg.val_fraction} must be in [0, 1)")
        self.val_fraction = float(task_cfg.val_fraction)
        self._items: list[tuple[str, int]] | None = None
        if root is not None:
            self.base = str(root)
            if not os.path.isdir(self.base):
                raise DataConfigError(f"{key}.root: folder not found: {self.base}")
            self.classes = sorted(e.name for e in os.scandir(self.base) if e.is_dir() and not e.name.startswith("."))
            if not self.classes:
                raise DataConfigError(f"{key}.root: {self.base} has no class sub-folders")
        else:
            self.base = os.path.dirname(os.path.abspath(str(manifest)))
            self._items, self.classes = self._read_manifest(str(manifest), key)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _read_manifest(self, path: str, key: str) -> tuple[list[tuple[str, int]], list[str]]:
        if not os.path.isfile(path):
            raise DataConfigError(f"{key}.manifest: file not found: {path}")
        rows: list[tuple[str, Any]] = []
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith((".jsonl", ".json")):
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                        rows.append((obj["path"], obj["label"]))
                    except (ValueError, KeyError, TypeError):
                        raise DataConfigError(f"{path}:{line_no}: expected a JSON object with path and label") from None
            else:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                    raise DataConfigError(f"{path}: CSV header must have 'path' and 'label' columns")
                for line_no, row in enumerate(reader, 2):
                    if not row["path"] or row["label"] in (None, ""):
                        raise DataConfigError(f"{path}:{line_no}: empty path or label")
                    rows.append((row["path"], row["label"]))
        if not rows:
            raise DataConfigError(f"{key}.manifest: {path} lists no images")
        labels = [lbl for _, lbl in rows]
        if all(isinstance(x, int) or (isinstance(x, str) and x.strip().isdigit()) for x in labels):
            ids = [int(x) for x in labels]
            classes = [str(i) for i in range(max(ids) + 1)]
        else:
            classes = sorted({str(x) for x in labels})
            index = {c: i for i, c in enumerate(classes)}
            ids = [index[str(x)] for x in labels]
        return [(p, i) for (p, _), i in zip(rows, ids)], classes

    def items(self, split: str) -> list[tuple[str, int]]:
        """(relative or absolute path, class index) of ``split`` ("train" or "val"), in a stable order."""
        if split not in ("train", "val"):
            raise DataConfigError(f"data.user_tasks.{self.name}: splits are train and val, not '{split}'")
        if self._items is None:
            items = []
            for idx, cls in enumerate(self.classes):
                folder = os.path.join(self.base, cls)
                for dirpath, _, files in sorted(os.walk(folder)):
                    for fname in sorted(files):
                        if fname.lower().endswith(IMAGE_SUFFIXES):
                            items.append((os.path.relpath(os.path.join(dirpath, fname), self.base), idx))
            self._items = items
        want_val = split == "val"
        return [it for it in self._items if (hash_unit("split:" + it[0]) < self.val_fraction) == want_val]

    def dataset(self, split: str, transform: Any, train: bool) -> ImageFolderDataset:
        items = self.items(split)
        if not items:
            raise DataConfigError(f"data.user_tasks.{self.name}: the {split} split is empty")
        return ImageFolderDataset(items, self.base, transform, replace_unreadable=train)


class ImageFolderDataset(Dataset):
    """Items ``{"image": uint8 [3, H, W], "target", "key"}``; an unreadable image is a counted skip (see the module
    docstring)."""

    def __init__(self, items: list[tuple[str, int]], base: str, transform: Any, replace_unreadable: bool) -> None:
        self.items = items
        self.base = base
        self.transform = transform
        self.replace_unreadable = replace_unreadable

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict:
        path, label = self.items[index]
        full = path if os.path.isabs(path) else os.path.join(self.base, path)
        with Image.open(full) as img:
            rgb = img.convert("RGB")
        return {"image": self.transform(rgb), "target": label, "key": path}

    def __getitem__(self, index: int) -> dict:
        tries = len(self.items) if self.replace_unreadable else 1
        for attempt in range(tries):
            try:
                sample = self._load((index + attempt) % len(self.items))
            except (OSError, ValueError, SyntaxError):  # PIL's errors for missing/corrupt/truncated files
                continue
            if attempt:
                sample["__counts__"] = {"unreadable_image": attempt}
            return sample
        if self.replace_unreadable:
            raise RuntimeError(f"no image of this task could be read (first: {self.items[index][0]})")
        return {"__skip__": "unreadable_image"}


class ImageFolderSource(DatasetSource):
    """A ``data.user_tasks.<name>`` entry as a dataset source: its train split for training, its val split for
    validation. Classes are known at construction (no image is opened)."""

    val_split = "val"

    def __init__(self, cfg: Any, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.task = ImageFolderTask(name, cfg.data.user_tasks[name])
        self.num_classes = self.task.num_classes
        self.label_names = list(self.task.classes)

    def train_source(self, rank: int, world: int) -> MapSource:
        dataset = self.task.dataset("train", image_transform(self.cfg.data, True), train=True)
        balanced = bool(self.cfg.data.user_tasks[self.name].class_balanced)
        labels = [label for _, label in dataset.items] if balanced else None
        return MapSource(self.name, dataset, self.cfg.data, int(self.cfg.seed), rank, world, class_labels=labels)

    def eval_loader(self, split: str, rank: int, world: int) -> tuple[DataLoader, int]:
        dataset = self.task.dataset(split, image_transform(self.cfg.data, False), train=False)
        return map_eval_loader(dataset, self.cfg.data, rank, world)
