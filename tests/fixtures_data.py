"""Test fixtures for datamodules/: tiny weak-label shard sets in the docs/ARCHITECTURE.md format, tiny IDX files, and
Lightning jobs (``run_fit``, or ``python tests/fixtures_data.py JOB.json`` for DDP, which re-launches the same command
for its other ranks) that train a dummy module and record every sample key it sees, per rank.

The shards are written with ``webdataset.ShardWriter`` from random PIL images; the split and scale buckets follow
the architecture's hash rules (independent of the real label pipeline in labels/).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def hash_unit(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


class PickleBomb:
    """Unpickling this creates ``path``: proof that a pickle entry was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _image_bytes(rng: np.random.Generator, size: int, fmt: str) -> bytes:
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=90)
    return buf.getvalue()


def _signal_image_bytes(rng: np.random.Generator, size: int, fmt: str, labels: list[int], num_labels: int) -> bytes:
    """A noisy grey image whose spatial pattern says its labels: label c adds a fixed +-A pattern of 4x4 blocks
    (seeded by c) on uniform noise. Every pattern has the same mean colour, so an average of random features
    (a random-init network) sees the label only faintly, while a trained network learns to read it."""
    arr = rng.integers(64, 192, size=(size, size)).astype(np.float32)
    blocks = -(-size // 4)
    for c in labels:
        sign = np.random.default_rng(1000 + c).choice([-1.0, 1.0], size=(blocks, blocks))
        arr += 48.0 * np.kron(sign, np.ones((4, 4)))[:size, :size]
    buf = io.BytesIO()
    grey = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert("RGB")
    grey.save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buf.getvalue()


def make_dataset(
    root: os.PathLike,
    n_train: int = 30,
    n_val: int = 9,
    shard_size: int = 7,
    val_shard_size: int | None = None,
    num_raw: int = 12,
    num_clustered: int = 5,
    img_size: int = 20,
    scales: tuple[float, ...] = (0.5, 1.0),
    val_fraction: float = 0.25,
    seed: int = 0,
    corrupt: int = 0,
    out_of_vocab: int = 0,
    pickle_marker: str | None = None,
    fmt: str = "jpg",
    label_signal: bool = False,
) -> dict[str, Any]:
    """Write train/val shards + manifest.json under ``root``.

    Args:
        n_train, n_val: samples per split (images are generated until both splits are full, split by hash rule).
        shard_size: ShardWriter maxcount for train (per scale bucket) and val (``val_shard_size`` if given).
        corrupt: the first ``corrupt`` train samples get undecodable image bytes.
        out_of_vocab: the next ``out_of_vocab`` train samples get a clustered label id == num_clustered.
        pickle_marker: if set, the first train sample also carries a ``.pyd`` member whose unpickling creates
            this file.
        label_signal: images carry their clustered labels (``_signal_image_bytes``), so a model can learn them;
            the default images are pure noise, unrelated to the labels.

    Returns:
        ``{"manifest": path, "train_keys", "val_keys", "corrupt_keys", "oov_keys", "train_shards", "val_shards"}``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    train: list[dict] = []
    val: list[dict] = []
    special = {"corrupt": [], "oov": []}
    while len(train) < n_train or len(val) < n_val:
        if label_signal:  # labels first: the image is drawn from them
            raw = sorted(pyrng.sample(range(num_raw), pyrng.randint(1, 3)))
            clustered = [pyrng.randrange(num_clustered)]  # one label: its pattern is the whole signal
            data = _signal_image_bytes(rng, img_size, fmt, clustered, num_clustered)
        else:
            data = _image_bytes(rng, img_size, fmt)
        is_train_slot = len(train) < n_train
        kind = None
        if is_train_slot and len(special["corrupt"]) < corrupt:
            data = b"\xff\xd8\xff\xe0 this is not a jpeg " + rng.bytes(64)
            kind = "corrupt"
        key = hashlib.sha1(data).hexdigest()[:16]
        is_val = hash_unit("split:" + key) < val_fraction
        if kind is None and (is_val and len(val) >= n_val or not is_val and len(train) >= n_train):
            continue
        if kind is not None:
            is_val = False
        if not label_signal:
            raw = sorted(pyrng.sample(range(num_raw), pyrng.randint(1, 3)))
            clustered = sorted(pyrng.sample(range(num_clustered), pyrng.randint(1, 2)))
        if not is_val and kind is None and len(special["oov"]) < out_of_vocab:
            clustered = [*clustered, num_clustered]
            kind = "oov"
        if kind:
            special[kind].append(key)
        meta = {
            "key": key,
            "source": "fixture",
            "labels": {"raw": raw, "clustered": clustered},
            "scores": {"raw": [1.0] * len(raw), "clustered": [1.0] * len(clustered)},
            "terms": [f"term{i}" for i in raw],
            "text": {"title": key},
        }
        sample = {"__key__": key, fmt: data, "json": json.dumps(meta).encode()}
        (val if is_val else train).append(sample)
    if pickle_marker:
        train[0]["pyd"] = pickle.dumps(PickleBomb(pickle_marker))

    shards: dict[str, list[dict]] = {"train": [], "val": []}
    buckets: dict[int, list[dict]] = {}
    for sample in train:
        u = hash_unit("scale:" + sample["__key__"])
        bucket = next(i for i, s in enumerate(scales) if u < s or i == len(scales) - 1)
        buckets.setdefault(bucket, []).append(sample)
    for bucket in sorted(buckets):
        _write(root, f"train-b{bucket}-%06d.tar", buckets[bucket], shard_size, shards["train"], scales[bucket])
    _write(root, "val-%06d.tar", val, val_shard_size or shard_size, shards["val"], None)
    manifest = {
        "format_version": 1,
        "name": "fixture",
        "label_spaces": {
            "raw": {"num_classes": num_raw, "names": [f"raw{i}" for i in range(num_raw)]},
            "clustered": {
                "num_classes": num_clustered,
                "names": [f"cl{i}" for i in range(num_clustered)],
                "members": [[f"raw{i}"] for i in range(num_clustered)],
            },
        },
        "scales": list(scales),
        "splits": {s: {"num_samples": sum(x["num_samples"] for x in v), "shards": v} for s, v in shards.items()},
        "pipeline_config": {},
        "input_fingerprint": "sha256:fixture",
        "counts": {"read": n_train + n_val, "written": n_train + n_val, "skipped": {}},
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return {
        "manifest": str(path),
        "train_keys": [s["__key__"] for s in train],
        "val_keys": [s["__key__"] for s in val],
        "corrupt_keys": special["corrupt"],
        "oov_keys": special["oov"],
        "train_shards": shards["train"],
        "val_shards": shards["val"],
        "root": str(root),
    }


def _write(root: Path, pattern: str, samples: list[dict], size: int, out: list[dict], bucket: float | None) -> None:
    with wds.ShardWriter(str(root / pattern), maxcount=size, encoder=False, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    for i in range(0, len(samples), size):
        entry = {"url": pattern % (i // size), "num_samples": len(samples[i : i + size])}
        if bucket is not None:
            entry["scale_bucket"] = bucket
        out.append(entry)


def write_idx(path: os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip IDX file (the Fashion-MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root: os.PathLike, n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    """Tiny Fashion-MNIST-format IDX files (random 28x28 images, labels i % 10)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    return root


def compose_cfg(manifest: str, *overrides: str) -> Any:
    """A run config for the tiny data: 16 px images, batch 4, no W&B."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from configs.compose import compose

    base = [
        "logger=none",
        "tasks=weak_label",
        "trainer=cpu",
        f"data.weak_label.manifest={manifest}",
        "data.img_size=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.shuffle_buffer=16",
        "data.weak_label.scale=1.0",
    ]
    return compose([*base, *overrides])


# -------------------------------------------------------------------------------- Lightning job


def _lightning_classes():
    import lightning as L
    import torch

    class KeyRecorder(L.LightningModule):
        """A linear head per dataset on the flattened 16x16 images; records the keys of every batch it sees."""

        def __init__(self, num_classes: dict[str, int]) -> None:
            super().__init__()
            self.heads = torch.nn.ModuleDict({n: torch.nn.Linear(3 * 16 * 16, c) for n, c in num_classes.items()})
            self.train_keys: list = []
            self.val_keys: list = []

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            loss = torch.zeros(())
            for name, head in self.heads.items():
                if name not in batch:  # interleave: keep every parameter in DDP's graph
                    loss = loss + 0.0 * sum(p.sum() for p in head.parameters())
                    continue
                b = batch[name]
                self.train_keys.append([self.current_epoch, batch_idx, name, list(b["key"])])
                logits = head(b["image"].flatten(1))
                if b["target"].dtype == torch.long:
                    loss = loss + torch.nn.functional.cross_entropy(logits, b["target"])
                else:
                    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits, b["target"])
            return loss

        def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
            # a dict of val loaders: one dataset's plain batch per step, named by its dataloader_idx
            name = self.trainer.datamodule.val_dataset_name(dataloader_idx)
            self.val_keys.append([self.current_epoch, name, list(batch["key"])])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return L, KeyRecorder


def run_fit(spec: dict) -> dict:
    """Train the key-recording module on ``build_datamodule(compose_cfg(spec["manifest"], *spec["overrides"]))``.

    spec keys: manifest, overrides, max_steps, devices (1 or 2; 2 = DDP on CPU/gloo), ckpt_every + ckpt_dir (save a
    checkpoint every n steps), ckpt_on_epoch_end (+ ckpt_dir), resume (checkpoint path), limit_val_batches.

    Returns:
        ``{"train": [[epoch, batch_idx, dataset, keys]], "val": [[epoch, dataset, keys]], "counts",
        "num_training_batches", "global_step", "rank", "logged"}`` of this process ("logged": the data/ metrics
        DataCountsLogger logged, summed over ranks, on rank 0).
    """
    from datetime import timedelta

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy

    from datamodules import build_datamodule

    L, KeyRecorder = _lightning_classes()
    cfg = compose_cfg(spec["manifest"], *spec.get("overrides", []))
    dm = build_datamodule(cfg)
    model = KeyRecorder(dm.num_classes)
    callbacks = [*dm.callbacks()]
    if spec.get("ckpt_every"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=spec["ckpt_dir"], every_n_train_steps=spec["ckpt_every"], save_top_k=-1, filename="{step}"
            )
        )
    if spec.get("ckpt_on_epoch_end"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=spec["ckpt_dir"], save_on_train_epoch_end=True, save_top_k=-1, filename="end-{epoch}"
            )
        )
    devices = spec.get("devices", 1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        # a rank that dies or desyncs fails the others within 3 minutes, not gloo's default 30 (a hung CI job)
        strategy=DDPStrategy(timeout=timedelta(seconds=180)) if devices > 1 else "auto",
        max_steps=spec["max_steps"],
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_checkpointing=len(callbacks) > len(dm.callbacks()),
        limit_val_batches=spec.get("limit_val_batches"),
    )
    trainer.fit(model, datamodule=dm, ckpt_path=spec.get("resume"))
    return {
        "train": model.train_keys,
        "val": model.val_keys,
        "counts": dm.data_counts(),
        "num_training_batches": trainer.num_training_batches,
        "global_step": trainer.global_step,
        "rank": trainer.global_rank,
        "logged": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("data/")},
    }


if __name__ == "__main__":
    # python tests/fixtures_data.py JOB.json: JOB = {"runs": [spec, ...]}, each spec as run_fit's plus "out"; the runs
    # go one after the other in the same processes (after the first launch Lightning reuses the DDP processes and
    # process group); every rank writes <out>/rank<r>.json per run.
    sys.path.insert(0, str(REPO))
    for spec in json.loads(Path(sys.argv[1]).read_text())["runs"]:
        result = run_fit(spec)
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        (Path(spec["out"]) / f"rank{result['rank']}.json").write_text(json.dumps(result))
