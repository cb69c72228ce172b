"""Weak-label shards (``labels/`` writes them) as a dataset source: the manifest, the training stream and the val
stream of a run config. The shard format, the stage chain and the rules for bad data are in docs/ARCHITECTURE.md
("Shards", "Streaming a shard set"); the stages live in ``datamodules.stages``, the streams in
``datamodules.streams``, the resume bookkeeping in ``datamodules.resume``.

Config: ``data.weak_label.{manifest, shards, label_space, scale, resampled}``, ``data.{img_size, batch_size,
eval_batch_size, num_workers, shuffle_buffer, stream_slots, augment.*, cache_dir, cache_limit_gb}``, ``seed``. The manifest and
shards may be on any fsspec URL (``datamodules.storage``). Sample counts always come from the manifest.

Guarantees:

* **Equal batch counts per rank**, by construction: a pass is ``ceil(N / batch)`` batches (N from the manifest) rounded
  up to a multiple of the ranks, dealt to the (rank, worker) pairs in equal runs per rank (``datamodules.slots``),
  whatever the shard count or sizes.
* **Slots** (``datamodules.slots``): a pass is ``data.stream_slots`` logical slots (at most one per ``shuffle_buffer``
  samples), each its own stream: its range of the pass's sample sequence (non-resampled) or its own shard draws
  (resampled), its shuffle and its augmentation seeds, all from (seed, epoch, pass, slot), never from who reads it.
  The (rank, worker) pairs of the cluster that starts a pass serve whole slots.
* **Determinism**: given seed, batch size, shuffle_buffer, stream_slots and manifest, pass ``p`` of epoch ``e`` yields
  the same samples with the same augmentations (per-sample RNGs seeded from the sample's raw index in its slot); on
  the same world size and worker count, in the same order.
* **Mid-epoch resume** (``datamodules.resume.TrainLoader.state_dict``): the checkpoint stores the pass's plan and each
  piece's (batches done, raw index after the last sample it turned into a consumed batch; counted in the raw,
  pre-decode stream, so undecodable samples do not shift it): O(slots) integers. On the same world size and worker
  count, worker roles are rotated, so the resumed run yields the same batches in the same order as an uninterrupted
  run, in both modes; on another, what is left is cut over the new (rank, worker) pairs and every slot continues
  where it stopped (docs/reliability.md). The cost is bounded: at most one shuffle group of tar headers per piece
  (payloads seeked past) plus an in-memory replay of that group's shuffle, whatever the position in the epoch
  (benchmarks/bench_resume.py); the slot's shard source is re-enumerated up to the position (no I/O). Limits: batch
  size, seed, shuffle_buffer, stream_slots and the shards must be unchanged (otherwise a warning and the epoch
  restarts from a fresh pass); a shard that became unreadable or changed its count in between changes the stream
  from its group on.
* **Non-resampled passes** read each sample once before repeating any: the shard list shuffled per pass and laid end
  to end is one sample sequence, and each slot reads its range of it (a shard may be shared by slots: each reads its
  range, payloads outside it seeked past). The last batches' round-up reads the first samples again (the price of
  equal batch counts), after every first read of their slot. Resampled passes draw shards with replacement per slot:
  samples repeat within a pass, as the design of resampling intends.
* **Validation** (``EvalStream``): every val sample of the manifest is yielded exactly once over all ranks and
  workers. Val shards are assigned whole to (rank, worker) slots by size when that balances them, else every slot
  reads every val shard and keeps sample ``g`` of the split when ``g % slots`` is its slot (ranks then differ by at
  most one sample). Every rank yields the same number of batches (batches are cut by a plan from the manifest
  counts; a rank with fewer samples gets smaller batches), so metrics gathered over ranks equal a single-process
  evaluation, independent of the world size. Undecodable val samples are counted and left out (a batch then has
  fewer samples); a val shard that is truncated or disagrees with the manifest raises, because the plan would no
  longer cover it. Equal counts need every rank to hold at least as many val samples as batches; a val split too
  small for that (e.g. fewer samples than ranks) raises.

Workers are persistent; the pass state they read (epoch, pass, worker rotation, layout, plan and progress) is in shared
memory (``TrainStream``). Skip counts reach the main process inside the batches; skips after a worker's last batch of a
pass are not reported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from datamodules.manifest import Manifest, ManifestError, ShardInfo
from datamodules.sources import DataConfigError, DatasetSource
from datamodules.storage import ShardOpener, missing_local
from datamodules.streams import EvalStream, StreamSource, StreamSpec, TrainStream, effective_slots
from datamodules.transforms import draft_size, image_transform

CHECK_SHARDS = 16  # local shards whose existence start-up checks (a sample, not all)


class WeakLabelSource(DatasetSource):
    """The weak-label dataset of a run config: manifest, label space, scale subset, and its loaders.

    Construction reads only the manifest (no shard is opened).
    """

    retrieval = {"weak_label_val": ("val", None)}  # leave-one-out retrieval on the val split

    def __init__(self, cfg: Any, name: str = "weak_label") -> None:
        wl = cfg.data.weak_label
        self.cfg = cfg
        self.name = name
        self.manifest = Manifest.load(wl.manifest)
        self.label_space = str(wl.label_space)
        self.num_classes, self.label_names = self.manifest.label_space(self.label_space)
        self.train_shards = self.manifest.train_shards(float(wl.scale), wl.shards)
        self.num_train_samples = sum(s.num_samples for s in self.train_shards)
        # Fixed label-id width from the miner's cap (labels/ configs: vocab.max_labels_per_image), when recorded.
        cap = (self.manifest.data.get("pipeline_config") or {}).get("vocab", {}).get("max_labels_per_image")
        self.max_labels = int(cap) if isinstance(cap, int) and cap > 0 else 0
        self._check_local(self.train_shards, "train")
        self.val_split = "val" if "val" in self.manifest.data["splits"] else None
        self.opener = ShardOpener.from_config(cfg.data)

    @classmethod
    def check_files(cls, cfg: Any) -> None:
        manifest = str(cfg.data.weak_label.manifest)
        if missing_local([manifest]):
            raise FileNotFoundError(f"data.weak_label.manifest={manifest}: no such file (run mine_labels.py first)")

    def manifests(self) -> list[str]:
        return [str(self.cfg.data.weak_label.manifest)]

    def _check_local(self, shards: list[ShardInfo], split: str) -> None:
        """Fail early when local shards are missing, checking at most CHECK_SHARDS of them (first, last, evenly spaced
        between): start-up costs the same at 100k shards and on every one of 128 ranks. A shard missing later is a
        counted skip in training and an error in validation."""
        step = max(1, -(-len(shards) // CHECK_SHARDS))
        sample = [*shards[::step], shards[-1]] if shards else []
        missing = missing_local([s.url for s in sample])
        if missing:
            raise ManifestError(
                f"manifest {self.manifest.path} lists {split} shard(s) that do not exist, e.g. {missing[0]} "
                f"({len(missing)} missing of the {len(sample)} checked)"
            )

    def _spec(
        self,
        shards: list[ShardInfo],
        batch_size: int,
        rank: int,
        world: int,
        train: bool,
        num_workers: int | None = None,
    ) -> StreamSpec:
        d = self.cfg.data
        return StreamSpec(
            shards=shards,
            label_space=self.label_space,
            num_classes=self.num_classes,
            batch_size=batch_size,
            rank=rank,
            world_size=world,
            num_workers=d.num_workers if num_workers is None else num_workers,
            seed=int(self.cfg.seed),
            transform=image_transform(d, train),
            draft=draft_size(int(d.img_size), float(d.augment.scale_min), train),
            numpy_rng=train and bool(d.augment.rand_augment),
            max_labels=self.max_labels,
            opener=self.opener,
        )

    def train_source(self, rank: int, world: int) -> StreamSource:
        d = self.cfg.data
        spec = self._spec(self.train_shards, int(d.batch_size), rank, world, train=True)
        resampled = bool(d.weak_label.resampled)
        if d.augment.mixup_alpha > 0 and d.batch_size % 2:
            raise DataConfigError(f"data.batch_size={d.batch_size} must be even when data.augment.mixup_alpha > 0")
        if int(d.stream_slots) < 1:
            raise DataConfigError(f"data.stream_slots={d.stream_slots} must be at least 1")
        slots = effective_slots(int(d.stream_slots), self.num_train_samples, int(d.shuffle_buffer))
        stream = TrainStream(spec, resampled, int(d.shuffle_buffer), slots)
        return StreamSource(stream)

    def eval_stream(self, rank: int = 0, world: int = 1, num_workers: int | None = None) -> EvalStream:
        """The val split for ``rank`` of ``world`` (every val sample once across ranks)."""
        shards = self.manifest.shards("val")
        self._check_local(shards, "val")
        d = self.cfg.data
        return EvalStream(
            self._spec(
                shards, int(d.eval_batch_size or d.batch_size), rank, world, train=False, num_workers=num_workers
            )
        )

    def eval_loader(
        self, split: str, rank: int = 0, world: int = 1, num_workers: int | None = None
    ) -> tuple[DataLoader, int]:
        if split != "val":
            raise DataConfigError(f"weak_label evaluation reads the 'val' split, not '{split}'")
        stream = self.eval_stream(rank, world, num_workers)
        workers = stream.spec.num_workers
        return DataLoader(
            stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available()
        ), stream.num_batches
