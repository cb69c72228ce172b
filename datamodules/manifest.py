"""The weak-label ``manifest.json`` (format in docs/ARCHITECTURE.md "Shards"): parsed, validated, shards resolved.

Sample counts always come from here, never from scanning the shards.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import webdataset as wds

from datamodules.sources import DataConfigError
from datamodules.storage import is_remote, missing_local, read_text


class ManifestError(DataConfigError):
    """The manifest is missing, malformed or does not fit the config."""


class ManifestMismatchError(RuntimeError):
    """A shard holds a different number of samples than the manifest says."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it; ``url`` is resolved against the manifest's folder."""

    url: str
    num_samples: int
    scale_bucket: float | None = None


class Manifest:
    """A parsed, validated ``manifest.json`` (see docs/ARCHITECTURE.md)."""

    def __init__(self, data: dict, path: str) -> None:
        self.data = data
        self.path = path
        if path.startswith("pipe:"):
            self.root = None  # shard urls must then be absolute
        elif "://" in path:
            self.root = path.rsplit("/", 1)[0]
        else:
            self.root = os.path.dirname(os.path.abspath(path))
        self._validate()

    @classmethod
    def load(cls, path: str) -> Manifest:
        """Read and validate the manifest at ``path`` (a local path, an fsspec URL such as ``s3://``, or ``pipe:``)."""
        path = str(path)
        if missing_local([path]):
            raise ManifestError(
                f"data.weak_label.manifest: file not found: {path} (build the shards with mine_labels.py, or point "
                "data.weak_label.manifest at an existing manifest.json)"
            )
        try:
            data = json.loads(read_text(path))
        except (OSError, ValueError) as err:
            raise ManifestError(f"data.weak_label.manifest: cannot read {path}: {err}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"manifest {path} must hold a JSON object")
        return cls(data, path)

    def _fail(self, field_name: str, msg: str) -> None:
        raise ManifestError(f"manifest {self.path}: field '{field_name}' {msg}")

    def _validate(self) -> None:
        d = self.data
        if d.get("format_version") != 1:
            self._fail("format_version", f"is {d.get('format_version')!r}; this reader understands 1")
        spaces = d.get("label_spaces")
        if not isinstance(spaces, dict) or not spaces:
            self._fail("label_spaces", "must map a label space name to {num_classes, names}")
        for name, space in spaces.items():
            n = space.get("num_classes") if isinstance(space, dict) else None
            names = space.get("names") if isinstance(space, dict) else None
            if not isinstance(n, int) or n <= 0 or not isinstance(names, list) or len(names) != n:
                self._fail(f"label_spaces.{name}", "needs a positive num_classes and that many names")
        scales = d.get("scales")
        if not isinstance(scales, list) or not scales or not all(isinstance(s, (int, float)) for s in scales):
            self._fail("scales", "must be a non-empty list of fractions")
        splits = d.get("splits")
        if not isinstance(splits, dict) or "train" not in splits:
            self._fail("splits", "must hold at least 'train'")
        for split, entry in splits.items():
            shards = entry.get("shards") if isinstance(entry, dict) else None
            if not isinstance(shards, list) or not shards:
                self._fail(f"splits.{split}.shards", "must be a non-empty list")
            for i, shard in enumerate(shards):
                if not isinstance(shard, dict) or not isinstance(shard.get("url"), str):
                    self._fail(f"splits.{split}.shards[{i}].url", "is missing")
                if not isinstance(shard.get("num_samples"), int) or shard["num_samples"] < 0:
                    self._fail(f"splits.{split}.shards[{i}].num_samples", "must be a non-negative integer")
            total = sum(s["num_samples"] for s in shards)
            if entry.get("num_samples") != total:
                self._fail(
                    f"splits.{split}.num_samples", f"is {entry.get('num_samples')} but its shards sum to {total}"
                )

    @property
    def scales(self) -> list[float]:
        return [float(s) for s in self.data["scales"]]

    def label_space(self, space: str) -> tuple[int, list[str]]:
        """(num_classes, names) of a label space; a clear error naming data.weak_label.label_space otherwise."""
        spaces = self.data["label_spaces"]
        if space not in spaces:
            raise ManifestError(
                f"data.weak_label.label_space='{space}' is not in manifest {self.path}; it has {sorted(spaces)}"
            )
        return spaces[space]["num_classes"], list(spaces[space]["names"])

    def resolve(self, url: str) -> str:
        """A shard url as written in the manifest, made absolute against the manifest's folder."""
        if is_remote(url) or os.path.isabs(url):
            return url
        if self.root is None:
            raise ManifestError(f"manifest {self.path} is read through a pipe, so shard url '{url}' must be absolute")
        return f"{self.root}/{url}" if "://" in self.root else os.path.join(self.root, url)

    def shards(self, split: str) -> list[ShardInfo]:
        """Every shard of a split, in manifest order."""
        if split not in self.data["splits"]:
            raise ManifestError(f"manifest {self.path} has no '{split}' split (it has {sorted(self.data['splits'])})")
        return [
            ShardInfo(self.resolve(s["url"]), int(s["num_samples"]), s.get("scale_bucket"))
            for s in self.data["splits"][split]["shards"]
        ]

    def train_shards(self, scale: float, override: str | None = None) -> list[ShardInfo]:
        """Train shards of the nested dataset-scale subset ``scale`` (every shard whose scale_bucket <= scale).

        Args:
            scale: one of the manifest's scales (``data.weak_label.scale``).
            override: ``data.weak_label.shards``, a brace pattern or several joined by ``::``; each shard must be
                listed in the manifest (counts come from the manifest, never from scanning).
        """
        scales = self.scales
        if not any(math.isclose(scale, s, rel_tol=1e-9, abs_tol=1e-12) for s in scales):
            raise ManifestError(
                f"data.weak_label.scale={scale} is not one of the scales of manifest {self.path}: valid scales are "
                f"{scales}"
            )
        shards = self.shards("train")
        if override:
            by_name: dict[str, ShardInfo] = {}
            for s in shards:
                by_name[s.url] = s
                by_name.setdefault(_shard_name(s.url), s)
            chosen = []
            for url in wds.shardlists.expand_urls(override):
                info = by_name.get(self.resolve(url)) if not is_remote(url) else None
                info = info or by_name.get(_shard_name(url))
                if info is None:
                    raise ManifestError(
                        f"data.weak_label.shards: shard '{url}' is not listed in manifest {self.path}; sample counts "
                        "come from the manifest, so every shard must be in it"
                    )
                chosen.append(
                    ShardInfo(url if is_remote(url) else self.resolve(url), info.num_samples, info.scale_bucket)
                )
            return chosen
        if math.isclose(scale, max(scales)):
            return shards
        missing = [s.url for s in shards if s.scale_bucket is None]
        if missing:
            raise ManifestError(
                f"manifest {self.path}: train shard {missing[0]} has no scale_bucket, needed for "
                f"data.weak_label.scale={scale}"
            )
        return [s for s in shards if s.scale_bucket <= scale + 1e-12]


def _shard_name(url: str) -> str:
    """The tar file name inside a url or pipe command (how an override is matched to the manifest)."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    return names[-1] if names else url
