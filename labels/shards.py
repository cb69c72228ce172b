"""Shard writing (webdataset.ShardWriter) per split and scale bucket, and the dataset manifest.

Layout (docs/ARCHITECTURE.md): train shards ``train-b<i>-%06d.tar`` per nested scale bucket ``i``,
val shards ``val-%06d.tar``; ``manifest.json`` lists every shard with its exact sample count and,
for train shards, its ``scale_bucket`` (the bucket's upper scale). Tar headers carry a fixed integer mtime
(an int: a float mtime makes tarfile add a PAX header to every member),
so equal inputs give byte-identical shards.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import storage

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class _Writer:
    """One ShardWriter, opened on first use, recording each finished shard's sample count."""

    def __init__(self, pattern: str, maxcount: int, maxsize: int) -> None:
        self.pattern = pattern
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.writer = None  # webdataset.ShardWriter
        self.shards: list[tuple[str, int]] = []

    def _done(self, fname: str) -> None:
        assert self.writer is not None
        self.shards.append((os.path.basename(fname), self.writer.count))

    def write(self, sample: dict) -> None:
        if self.writer is None:
            import webdataset as wds  # imports torch: only when shards are written

            self.writer = wds.ShardWriter(
                self.pattern, maxcount=self.maxcount, maxsize=self.maxsize, post=self._done, verbose=0, mtime=0
            )
        self.writer.write(sample)

    def close(self) -> list[tuple[str, int]]:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.shards


class ShardSet:
    """Writes samples to ``val`` shards or to the ``train`` shards of their scale bucket.

    Args:
        out_dir: the dataset folder (stale shards and manifest of an earlier run are removed).
        scales: increasing nested scales ending at 1.0; bucket ``i`` holds ``scales[i-1] <= u < scales[i]``.
    """

    def __init__(self, out_dir: str, scales: Sequence[float], maxcount: int, maxsize: int) -> None:
        self.out_dir = out_dir
        self.scales = list(scales)
        os.makedirs(out_dir, exist_ok=True)
        remove_dataset(out_dir)
        self.val = _Writer(os.path.join(out_dir, "val-%06d.tar"), maxcount, maxsize)
        self.train = [
            _Writer(os.path.join(out_dir, f"train-b{i}-%06d.tar"), maxcount, maxsize) for i in range(len(self.scales))
        ]

    def write(self, sample: dict, split: str, bucket: int) -> None:
        (self.val if split == "val" else self.train[bucket]).write(sample)

    def close(self) -> dict:
        """Finish every shard; returns the manifest's ``splits`` entry."""
        train_shards = []
        by_scale: dict[str, int] = {}
        running = 0
        for i, writer in enumerate(self.train):
            for url, n in writer.close():
                train_shards.append({"url": url, "num_samples": n, "scale_bucket": self.scales[i]})
                running += n
            # Scale s reads every bucket up to s: the count is cumulative.
            by_scale[repr(self.scales[i])] = running
        val_shards = [{"url": url, "num_samples": n} for url, n in self.val.close()]
        return {
            "train": {
                "num_samples": sum(s["num_samples"] for s in train_shards),
                "num_samples_by_scale": by_scale,
                "shards": train_shards,
            },
            "val": {"num_samples": sum(s["num_samples"] for s in val_shards), "shards": val_shards},
        }


DATASET_FILES = ("train-b*-*.tar", "val-*.tar", MANIFEST, "samples.jsonl")


def dataset_files(out_dir: str) -> list[str]:
    """The shards, manifest and text-only samples in ``out_dir`` (a folder or an object-store URL), as
    ``os.path.join(out_dir, name)``."""
    if not storage.is_remote(out_dir):
        return [p for pattern in DATASET_FILES for p in glob.glob(os.path.join(out_dir, pattern))]
    names = {p.name for pattern in DATASET_FILES for p in storage.glob(out_dir, pattern)}
    return [os.path.join(out_dir, n) for n in sorted(names)]


def remove_dataset(out_dir: str) -> None:
    """Delete the shards and manifest of an earlier run (so none is listed stale or left orphaned)."""
    for path in dataset_files(out_dir):
        storage.remove(path)


def write_json(path: str, obj) -> None:
    """Write JSON atomically (temp file + rename; on an object store one PUT), sorted keys, so a reader never sees
    half a file."""
    if storage.is_remote(path):
        text = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        storage.write_text(path, text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def manifest_urls(manifest: dict, split: str, scale: float | None = None) -> list[str]:
    """Shard urls of a split (train: those with ``scale_bucket <= scale``), relative to the manifest."""
    shards = manifest["splits"][split]["shards"]
    if split == "train" and scale is not None:
        shards = [s for s in shards if s["scale_bucket"] <= scale + 1e-12]
    return [s["url"] for s in shards]
