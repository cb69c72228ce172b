"""Data-loading throughput: the full weak-label DataModule pipeline against PIL decode + augment alone.

In one run, on the same images and with the same number of loader workers, it measures

  (a) PIL alone: JPEG bytes held in memory -> decode (PIL) -> timm train transform -> batch, in a plain DataLoader;
  (a') the same, but the undecoded JPEG goes to the loader's transform, whose ``DraftResizedCrop`` decodes at the
       DCT scale its random crop needs (what the loader does): (b)/(a') isolates the stream machinery's cost;
  (b) the pipeline: ``build_datamodule(cfg)``'s training loader reading the tar shards (shard source, tar reading,
      shuffle buffer, json labels -> label ids, decode, transform, batching, worker metadata),
  (p) the peer: open_clip's training chain (``get_wds_dataset`` in src/open_clip_train/data.py, resampled mode) built
      from webdataset's own stages on the same shards, transform, batch size and workers: ``ResampledShards`` ->
      ``tarfile_to_samples`` -> ``shuffle`` -> ``decode("pilrgb")`` -> (image, label ids) -> ``batched`` ->
      ``WebLoader``, the pass fixed per worker by ``with_epoch`` from the manifest count (``webdataset_peer``),

and prints, at 224 px and at the CPU demo's 64 px: wall-clock images/s, (b)/(a) and images/s per worker (what
training sees on this machine now), and CPU milliseconds per image of the loader workers plus the main process (read
from /proc), whose ratio (a)/(b) is the pipeline's efficiency against PIL alone (target >= 0.9) independent of
whatever else loads the machine. All loaders stay alive (persistent workers) and are timed in ``--repeats``
alternating short chunks, so all see the same background load; figures are medians (the wall ratios: the median of
the per-chunk-pair ratios). (b)/(p) is the loader against what a plain webdataset user gets (the issue's "keep it
ahead": > 1). Cores per GPU for a ViT-B/16 at 3,000 images/s = 3,000 / (images/s per core at 224 px).
(b) and (p) cross pass boundaries as training does.

Images: ``data/openclipart`` when its manifest exists (the real shards), else synthetic JPEGs (short side 256, like
the label pipeline writes) in a temporary folder.

    python benchmarks/bench_data.py                      # ~2-3 minutes on a 2-core machine
    python benchmarks/bench_data.py --workers 4 --images 2048
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.compose import compose  # noqa: E402
from datamodules import build_datamodule  # noqa: E402
from datamodules.transforms import decode_image, draft_size, image_transform  # noqa: E402

VIT_B16_TARGET = 3000  # images/s one GPU consumes training ViT-B/16 (the figure the issue asks about)


def synthetic_shards(
    root: Path, n: int = 2048, shard_size: int = 256, classes: int = 50, mtime: float | int = 0
) -> Path:
    """JPEG shards + manifest in the docs/ARCHITECTURE.md format: smooth shapes, 256 px short side; integer mtime as
    labels/shards.py writes (a float one gives every member a PAX header)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    shards = []
    with wds.ShardWriter(
        str(root / "train-b0-%06d.tar"), maxcount=shard_size, encoder=False, verbose=0, mtime=mtime
    ) as sink:
        for i in range(n):
            w = int(rng.integers(256, 384))
            img = Image.new("RGB", (w, 256), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = int(rng.integers(0, w)), int(rng.integers(0, 256))
                r = int(rng.integers(10, 90))
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            labels = sorted(set(rng.integers(0, classes, 3).tolist()))
            meta = {"key": f"{i:016x}", "labels": {"raw": labels, "clustered": labels}}
            sink.write({"__key__": f"{i:016x}", "jpg": buf.getvalue(), "json": json.dumps(meta).encode()})
    for start in range(0, n, shard_size):
        shards.append(
            {
                "url": f"train-b0-{start // shard_size:06d}.tar",
                "num_samples": min(shard_size, n - start),
                "scale_bucket": 1.0,
            }
        )
    names = [f"c{i}" for i in range(classes)]
    manifest = {
        "format_version": 1,
        "name": "bench",
        "label_spaces": {
            "raw": {"num_classes": classes, "names": names},
            "clustered": {"num_classes": classes, "names": names},
        },
        "scales": [1.0],
        "splits": {"train": {"num_samples": n, "shards": shards}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "manifest.json"


def shard_images(manifest: Path, limit: int) -> list[bytes]:
    """The image bytes of the first ``limit`` train samples (what baseline (a) decodes)."""
    data = json.loads(manifest.read_text())
    out: list[bytes] = []
    for shard in data["splits"]["train"]["shards"]:
        with tarfile.open(manifest.parent / shard["url"]) as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png"):
                    out.append(tar.extractfile(member).read())
                    if len(out) >= limit:
                        return out
    return out


class PilBaseline(Dataset):
    """(a): PIL decode (with the loader's global draft) + the same timm train transform, nothing else; ``lazy``
    (a'): the undecoded image to the loader's transform, whose ``DraftResizedCrop`` decodes at the crop's scale."""

    def __init__(self, images: list[bytes], transform, draft: int, length: int, lazy: bool = False) -> None:
        self.images, self.transform, self.draft, self.length, self.lazy = images, transform, draft, length, lazy

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        data = self.images[i % len(self.images)]
        return self.transform(Image.open(io.BytesIO(data)) if self.lazy else decode_image(data, self.draft))


def _cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of processes, from /proc/<pid>/stat (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _worker_pids(iterator) -> list[int]:
    return [w.pid for w in getattr(iterator, "_workers", [])]  # torch's multi-process iterator (private field)


def _measure(it, n_images: int, warmup: int, workers: list[int]) -> tuple[float, float]:
    """(images/s, CPU ms per image of the loader workers + this process) over ``n_images``.

    Starts after a pause (the other loader's workers finish their prefetching, untimed) and after ``warmup`` batches
    (this loader's already-prefetched ones). CPU time is what other processes' load does not distort.
    """
    time.sleep(0.3)
    for _ in range(warmup):
        next(it)
    cpu0, start = _cpu_seconds(workers) + time.process_time(), time.perf_counter()
    seen = 0
    while seen < n_images:
        seen += len(next(it))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds(workers) + time.process_time() - cpu0
    return seen / wall, 1000 * cpu / seen


def pil_batches(cfg, images: list[bytes], lazy: bool = False):
    """(a) (or (a') with ``lazy``): an endless batch iterator over the in-memory images, and its worker pids."""
    d = cfg.data
    dataset = PilBaseline(
        images,
        image_transform(d, train=True),
        draft_size(d.img_size, d.augment.scale_min, True),
        length=1 << 30,
        lazy=lazy,
    )
    loader = DataLoader(
        dataset, batch_size=d.batch_size, num_workers=d.num_workers, drop_last=True, persistent_workers=True
    )
    iterator = iter(loader)
    next(iterator)  # workers started
    return iterator, _worker_pids(iterator)


def pipeline_batches(cfg):
    """(b): the DataModule's training batches, pass after pass as training reads them, and its worker pids."""
    dm = build_datamodule(cfg)
    dm.train_dataloader()
    loader = dm.train_loaders["weak_label"]

    def batches():
        while True:  # the next pass when one ends (the workers are persistent)
            for batch in loader:
                yield batch["key"]

    iterator = batches()
    next(iterator)
    return iterator, _worker_pids(loader.source.dataloader._iterator)


class PaddedLabelIds:
    """A sample's decoded JSON -> its label ids in ``label_space`` as an int64 tensor padded with -1 to ``width`` (so
    webdataset's default collation stacks them); a sample without them raises, and the handler skips it."""

    def __init__(self, label_space: str, width: int) -> None:
        self.label_space, self.width = label_space, width

    def __call__(self, meta: dict) -> torch.Tensor:
        ids = meta["labels"][self.label_space]
        if not ids or len(ids) > self.width:
            raise ValueError(f"{len(ids)} labels in '{self.label_space}' (1..{self.width} allowed)")
        out = torch.full((self.width,), -1, dtype=torch.int64)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


def webdataset_peer(cfg):
    """(p): open_clip's ``get_wds_dataset`` training chain in resampled mode (src/open_clip_train/data.py), written with
    webdataset's own stages only, on the shards, label space, transform, batch size and workers of ``cfg``'s weak-label
    loader. Returns ``(WebLoader yielding (images uint8 [B, 3, H, W], label ids [B, width], keys), batches per pass)``.

    As open_clip: resampled shards; ``tarfile_to_samples`` with a log-and-continue handler; a sample shuffle whose
    initial fill is a fifth of its buffer (open_clip's 1000 of 5000), the buffer the loader's (``data.shuffle_buffer``);
    full PIL decode to RGB, then the transform; ``batched(partial=False)``; ``with_epoch`` set to
    ceil(ceil(samples / batch) / workers) batches per worker (one rank). Its decoder has only the image and JSON
    handlers (webdataset's default post-handlers would unpickle ``.pyd`` members). The transform is the loader's own
    (``image_transform``): its ``DraftResizedCrop`` hands an already decoded image to timm's crop unchanged.
    """
    import webdataset as wds

    from datamodules.weak_label import WeakLabelSource

    d = cfg.data
    source = WeakLabelSource(cfg)
    urls = [s.url for s in source.train_shards]
    batch, workers, buffer = int(d.batch_size), int(d.num_workers), int(d.shuffle_buffer)
    labels = PaddedLabelIds(source.label_space, source.max_labels or source.num_classes)
    dataset = wds.DataPipeline(
        wds.ResampledShards(urls, seed=int(cfg.seed), deterministic=True),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(buffer, initial=max(1, buffer // 5)),
        wds.decode(
            wds.imagehandler("pilrgb"),
            wds.handle_extension("json", json.loads),
            post=[],  # no default handlers: they include pickle
            handler=wds.warn_and_continue,
        ),
        wds.rename(image="jpg;jpeg;png;webp", labels="json", key="__key__", keep=False),
        wds.map_dict(image=image_transform(d, train=True), labels=labels, handler=wds.warn_and_continue),
        wds.to_tuple("image", "labels", "key"),
        wds.batched(batch, partial=False),
    )
    per_worker = math.ceil(math.ceil(source.num_train_samples / batch) / max(1, workers))
    dataset = dataset.with_epoch(per_worker)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=workers > 0)
    return loader, per_worker * max(1, workers)


def peer_batches(cfg):
    """(p): the peer's batches (their keys), pass after pass, and its worker pids."""
    loader, _ = webdataset_peer(cfg)

    def batches():
        while True:
            for _images, _labels, keys in loader:
                yield keys

    iterator = batches()
    next(iterator)
    return iterator, _worker_pids(loader.pipeline[0]._iterator)  # WebLoader wraps one DataLoader


def tar_reading(manifest: Path, repeats: int = 3) -> dict:
    """Microseconds per sample to read the shards into raw samples: the repo's reader (``ReadShards``) vs
    ``webdataset.tarfile_to_samples`` (stdlib tarfile + group_by_keys); best of ``repeats``."""
    import webdataset as wds

    from datamodules.stages import ReadShards, SkipCounter

    data = json.loads(manifest.read_text())
    urls = [str(manifest.parent / s["url"]) for s in data["splits"]["train"]["shards"]]
    counts = {u: s["num_samples"] for u, s in zip(urls, data["splits"]["train"]["shards"])}
    readers = {
        "repo": lambda: ReadShards(counts, SkipCounter(), max_empty=1 << 30)(iter({"url": u} for u in urls)),
        "tarfile_to_samples": lambda: wds.tarfile_to_samples()(iter({"url": u} for u in urls)),
    }
    out = {}
    for name, make in readers.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            n = sum(1 for _ in make())
            best = min(best, time.perf_counter() - start)
        out[name] = 1e6 * best / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of every loader compared")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=768, help="images timed per chunk at 224 px (x3 at 64)")
    parser.add_argument("--repeats", type=int, default=4, help="alternating (a)/(b) chunks; medians are reported")
    parser.add_argument("--manifest", default=str(REPO / "data" / "openclipart" / "manifest.json"))
    parser.add_argument(
        "--synthetic",
        type=int,
        default=4096,
        help="synthetic images when no real manifest exists: one pass of (b) reads them all once, and every pass "
        "restarts the workers' streams (shuffle fill, a first-batch bubble); 1024 makes passes of 32 batches, far "
        "shorter than a training epoch, and costs (b) ~0.1 at 64 px",
    )
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "bench_data.json"))
    args = parser.parse_args()
    results: dict = {
        "synthetic_images": args.synthetic,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "command": " ".join(["python", *sys.argv]),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": list(os.getloadavg()),
        "sizes": {},
    }

    tmp = None
    manifest = Path(args.manifest)
    if not manifest.is_file():
        tmp = tempfile.TemporaryDirectory()
        manifest = synthetic_shards(Path(tmp.name), n=args.synthetic)
    source = "synthetic JPEGs" if tmp else str(manifest.parent)
    warmup = 2 * max(1, args.workers)
    images = shard_images(manifest, 1024)
    print(f"command: {results['command']} (OMP_NUM_THREADS={results['omp_num_threads']})")
    print(
        f"images: {source}; {len(images)} held in memory for (a); workers={args.workers}; "
        f"batch={args.batch_size}; cores={os.cpu_count()}; load average (1, 5, 15 min)="
        f"{', '.join(f'{x:.1f}' for x in results['load_average_start'])}"
    )
    print(f"{'':>5} {'wall-clock images/s':^42} {'CPU ms per image (workers + main)':^44}")
    print(
        f"{'size':>5} {'(a) PIL':>9} {'(b) pipeline':>13} {'(b)/(a)':>8} {'/worker':>9} "
        f"{'(a) PIL':>9} {'(b) pipeline':>13} {'(a)/(b)':>8} {'img/s/core':>11}"
    )
    per_core = {}
    for size, n_images in ((224, args.images), (64, 3 * args.images)):
        cfg = compose(
            [
                "logger=none",
                "trainer=cpu",
                "tasks=weak_label",
                f"data.weak_label.manifest={manifest}",
                f"data.img_size={size}",
                f"data.batch_size={args.batch_size}",
                f"data.num_workers={args.workers}",
                "data.shuffle_buffer=500",
                "data.weak_label.scale=1.0",
            ]
        )
        a_it, a_pids = pil_batches(cfg, images)
        c_it, c_pids = pil_batches(cfg, images, lazy=True)
        b_it, b_pids = pipeline_batches(cfg)
        p_it, p_pids = peer_batches(cfg)
        pil, pil_draft, pipe, peer = [], [], [], []
        for _ in range(args.repeats):  # alternate short chunks, so all see the same background load
            pil.append(_measure(a_it, n_images, warmup, a_pids))
            pil_draft.append(_measure(c_it, n_images, warmup, c_pids))
            pipe.append(_measure(b_it, n_images, warmup, b_pids))
            peer.append(_measure(p_it, n_images, warmup, p_pids))
        del a_it, b_it, c_it, p_it
        gc.collect()  # shut these workers down here, not inside the next loaders' forked workers
        a_wall = float(np.median([x[0] for x in pil]))
        b_wall = float(np.median([x[0] for x in pipe]))
        ratio = float(np.median([b[0] / a[0] for a, b in zip(pil, pipe)]))
        machinery = float(np.median([b[0] / c[0] for c, b in zip(pil_draft, pipe)]))
        a_cpu, b_cpu = float(np.median([x[1] for x in pil])), float(np.median([x[1] for x in pipe]))
        c_cpu = float(np.median([x[1] for x in pil_draft]))
        per_core[size] = 1000 / b_cpu
        results["sizes"][size] = {
            "pil_images_per_s": a_wall,
            "pipeline_images_per_s": b_wall,
            "wall_ratio": ratio,
            "pil_cpu_ms": a_cpu,
            "pipeline_cpu_ms": b_cpu,
            "cpu_ratio": a_cpu / b_cpu,
            # (a'): the loader's own decode (crop-aware JPEG draft) without the loader: (b)/(a') is what the stream
            # machinery (tar reading, shuffle, labels, batching, worker metadata) costs
            "pil_draft_crop_images_per_s": float(np.median([x[0] for x in pil_draft])),
            "pil_draft_crop_cpu_ms": c_cpu,
            "machinery_wall_ratio": machinery,
            "machinery_cpu_ratio": c_cpu / b_cpu,
            # (p): open_clip-style plain webdataset on the same shards; (b)/(p) > 1 means the loader is ahead
            "peer_images_per_s": float(np.median([x[0] for x in peer])),
            "peer_cpu_ms": float(np.median([x[1] for x in peer])),
            "peer_wall_ratio": float(np.median([b[0] / q[0] for q, b in zip(peer, pipe)])),
            "peer_cpu_ratio": float(np.median([x[1] for x in peer])) / b_cpu,
            "peer_wall_ratio_rounds": [b[0] / q[0] for q, b in zip(peer, pipe)],
        }
        print(
            f"{size:>5} {a_wall:>9.0f} {b_wall:>13.0f} {ratio:>8.2f} {b_wall / max(1, args.workers):>9.0f} "
            f"{a_cpu:>9.2f} {b_cpu:>13.2f} {a_cpu / b_cpu:>8.2f} {per_core[size]:>11.0f}"
        )
        print(
            f"{'':>5} (a') PIL + the loader's crop-aware decode: {results['sizes'][size]['pil_draft_crop_images_per_s']:.0f} "
            f"img/s, {c_cpu:.2f} CPU ms/img; (b)/(a') wall {machinery:.2f}, CPU {c_cpu / b_cpu:.2f} (the stream machinery)"
        )
        r = results["sizes"][size]
        print(
            f"{'':>5} (p) open_clip-style webdataset peer: {r['peer_images_per_s']:.0f} img/s, {r['peer_cpu_ms']:.2f} "
            f"CPU ms/img; (b)/(p) wall {r['peer_wall_ratio']:.2f} (rounds: "
            f"{', '.join(f'{x:.2f}' for x in r['peer_wall_ratio_rounds'])}), CPU {r['peer_cpu_ratio']:.2f}"
        )
    cores = VIT_B16_TARGET / per_core[224]
    print(
        f"ViT-B/16 at {VIT_B16_TARGET:,} img/s (224 px) needs ~{cores:.0f} cores of this kind per GPU for data loading "
        f"({VIT_B16_TARGET:,} / {per_core[224]:.0f} img/s per core, from CPU time)."
    )
    # Tar reading alone, on integer-mtime shards (what labels/shards.py writes) and, for reference, float-mtime ones
    # (PAX header per member: what third-party shards written with a float mtime carry).
    with tempfile.TemporaryDirectory() as float_tmp:
        (Path(float_tmp) / "int").mkdir()
        (Path(float_tmp) / "float").mkdir()
        int_manifest = synthetic_shards(Path(float_tmp) / "int", n=1024)
        float_manifest = synthetic_shards(Path(float_tmp) / "float", n=1024, mtime=0.0)
        for label, m in (("int mtime", int_manifest), ("float mtime", float_manifest)):
            us = tar_reading(m)
            share = (us["tarfile_to_samples"] - us["repo"]) / (1000 * results["sizes"][224]["pipeline_cpu_ms"])
            results[f"tar_us_per_sample ({label})"] = {**us, "gain_share_of_224px_sample": share}
            print(
                f"tar reading, {label}: repo reader {us['repo']:.0f} us/sample, tarfile_to_samples "
                f"{us['tarfile_to_samples']:.0f} us/sample; the difference is {100 * share:.1f}% of the pipeline's "
                "CPU time per 224 px sample"
            )
    results["load_average_end"] = list(os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in results['load_average_end'])}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
