"""Checkpoint save/load time and training-loader images/s, local disk vs a local S3 server, side by side in one run
(issue 24).

``--case checkpoint`` (default):

Starts moto's ``moto_server`` on 127.0.0.1 (the server the tests use: tests/fixtures_s3.py), builds a ~100 MB state
dict, and times, interleaved per repeat so both see the same machine load:

  * save, local:  ``AtomicCheckpointIO.save_checkpoint`` to a file (temp file in the folder, fsync, rename);
  * save, S3:     the same call to ``s3://bench/ckpt/last.ckpt`` (torch.save streamed into one multipart upload);
  * save, S3 via Lightning's own writer (``_atomic_save``: serialize to memory, then one transaction), for reference;
  * load, local:  ``AtomicCheckpointIO.load_checkpoint`` (what a resume does);
  * load, S3 cold: the same from the URL with an empty cache (download into STORAGE_CACHE_DIR, then torch.load);
  * load, S3 warm: again, the copy cached (only the version check: one listing request).

The S3 server is on loopback, so the S3 figures are the client's and the protocol's cost (signing, HTTP, moto's
in-memory store), not a network's: on a real bucket add size / bandwidth.

``--case loader``: one training pass of the weak-label loader (the same shards, workers, batch and transforms) with
the shards and manifest on local disk, on the bucket (streamed: ``datamodules.storage.RemoteStream``), and on the
bucket through the shard cache (``data.cache_dir``: cold, i.e. downloading, then warm), interleaved per repeat; the
figure is images/s over a pass of persistent workers (started, with their S3 clients, in an untimed first pass). The aim is s3 / local >= 0.9.

    OMP_NUM_THREADS=1 python benchmarks/bench_storage.py [--mb 100] [--repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/bench_storage.py --case loader [--images 2000] [--workers 2]

Prints a table and writes benchmarks/results/bench_storage.json (checkpoint) or bench_storage_loader.json (loader).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.fixtures_s3 import S3Server, clear_fs_cache  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("checkpoint", "loader"), default="checkpoint")
    parser.add_argument("--mb", type=float, default=100.0, help="checkpoint: state dict size in MB (default 100)")
    parser.add_argument("--images", type=int, default=2000, help="loader: train images (default 2000)")
    parser.add_argument("--shard-size", type=int, default=250, help="loader: images per shard (default 250)")
    parser.add_argument("--img-size", type=int, default=128, help="loader: stored image side in px (default 128)")
    parser.add_argument("--workers", type=int, default=2, help="loader: data.num_workers (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="default benchmarks/results/bench_storage[_loader].json")
    args = parser.parse_args()
    name = "bench_storage.json" if args.case == "checkpoint" else "bench_storage_loader.json"
    args.out = args.out or str(REPO / "benchmarks" / "results" / name)
    if args.case == "loader":
        bench_loader(args)
    else:
        bench_checkpoint(args)


def bench_loader(args: argparse.Namespace) -> None:
    """images/s of one training pass: local disk vs the bucket (streamed, cached cold, cached warm)."""
    from datamodules.resume import EpochClock, PassLoader
    from datamodules.weak_label import WeakLabelSource
    from tests.fixtures_data import compose_cfg, make_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_storage_loader-"))
    server = S3Server(work / "moto_server.log")
    server.start()
    os.environ.update(server.env())
    clear_fs_cache()
    rows: dict[str, list[float]] = {k: [] for k in ("local", "s3", "s3 cache cold", "s3 cache warm")}
    try:
        info = make_dataset(
            work / "shards",
            n_train=args.images,
            n_val=8,
            shard_size=args.shard_size,
            scales=(1.0,),
            img_size=args.img_size,
        )
        client = server.client()
        client.create_bucket(Bucket="bench")
        root = Path(info["manifest"]).parent
        for path in sorted(root.iterdir()):
            client.upload_file(str(path), "bench", f"shards/{path.name}")
        common = [
            "data.img_size=64",
            "data.batch_size=32",
            f"data.num_workers={args.workers}",
            "data.shuffle_buffer=256",
            "data.weak_label.resampled=false",
        ]
        local = compose_cfg(info["manifest"], *common)
        remote = "s3://bench/shards/manifest.json"
        s3 = compose_cfg(remote, *common)
        cache = work / "cache"
        cached = compose_cfg(remote, *common, f"data.cache_dir={cache}")

        def make(cfg) -> PassLoader:
            return PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock())

        def one_pass(loader: PassLoader, epoch: int) -> float:
            loader.counts.clear()
            start = time.perf_counter()
            images = sum(len(b["key"]) for b in loader.run_pass(epoch, 0))
            seconds = time.perf_counter() - start
            assert not loader.counts, f"skips in the benchmark: {dict(loader.counts)}"
            return images / seconds

        # Persistent workers, as in training: each loader's workers start (and open their S3 clients) in an untimed
        # first pass, which also warms the page cache, so the timed passes compare steady-state reading.
        loaders = {"local": make(local), "s3": make(s3), "cached": make(cached)}
        for loader in loaders.values():
            one_pass(loader, 1000)

        def cached_pair(rep: int) -> None:
            shutil.rmtree(cache, ignore_errors=True)
            rows["s3 cache cold"].append(one_pass(loaders["cached"], rep))
            rows["s3 cache warm"].append(one_pass(loaders["cached"], rep))

        steps = [
            lambda rep: rows["local"].append(one_pass(loaders["local"], rep)),
            lambda rep: rows["s3"].append(one_pass(loaders["s3"], rep)),
            cached_pair,
        ]
        for rep in range(args.repeats):
            for k in range(len(steps)):  # the order rotates per repeat: no mode always runs first
                steps[(rep + k) % len(steps)](rep)
        loaders.clear()  # workers end
        shard_mb = sum(p.stat().st_size for p in root.glob("train-*.tar")) / 1e6
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "images": args.images,
        "shards": -(-args.images // args.shard_size),
        "shard_mb_total": round(shard_mb, 1),
        "workers": args.workers,
        "repeats": args.repeats,
        "median_images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "all_images_per_s": {k: [round(x, 1) for x in v] for k, v in rows.items()},
        "ratio_over_local": {k: round(v / medians["local"], 3) for k, v in medians.items() if k != "local"},
        # per repeat, mode / local of the same repeat (neighbours in time), then the median: steadier on a busy box
        "paired_ratio_median": {
            k: round(statistics.median(x / y for x, y in zip(v, rows["local"], strict=True)), 3)
            for k, v in rows.items()
            if k != "local"
        },
        "aim": "s3 / local >= 0.9",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # a busy machine makes every figure noisier
        "cpus": os.cpu_count(),
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_storage.py " + " ".join(sys.argv[1:]),
    }
    print(
        f"training loader, {args.images} images in {result['shards']} shards ({result['shard_mb_total']} MB), "
        f"{args.workers} workers, median of {args.repeats} (interleaved):"
    )
    for name, value in medians.items():
        ratio = "" if name == "local" else f"   {result['paired_ratio_median'][name]:.3f} x local (paired median)"
        print(f"  {name:<16} {value:8.1f} images/s{ratio}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def bench_checkpoint(args: argparse.Namespace) -> None:

    work = Path(tempfile.mkdtemp(prefix="bench_storage-"))
    server = S3Server(work / "moto_server.log")
    server.start()
    os.environ.update(server.env())
    os.environ["STORAGE_CACHE_DIR"] = str(work / "cache")
    clear_fs_cache()
    try:
        from lightning.fabric.utilities.cloud_io import _atomic_save

        import storage
        from lit_modules.trainer import AtomicCheckpointIO

        server.client().create_bucket(Bucket="bench")
        n = int(args.mb * 1e6 / 4)
        chunks = 16
        state = {f"layer{i}.weight": torch.randn(n // chunks) for i in range(chunks)}
        ckpt = {"state_dict": state, "global_step": 1}
        size = sum(t.numel() * t.element_size() for t in state.values())
        io = AtomicCheckpointIO()
        local = work / "local" / "last.ckpt"
        url = "s3://bench/ckpt/last.ckpt"
        lightning_url = "s3://bench/ckpt/lightning.ckpt"
        rows: dict[str, list[float]] = {
            k: []
            for k in (
                "save local",
                "save s3",
                "save s3 (Lightning _atomic_save)",
                "load local",
                "load s3 cold",
                "load s3 warm",
            )
        }
        for _ in range(args.repeats):
            rows["save local"].append(timed(lambda: io.save_checkpoint(ckpt, local)))
            rows["save s3"].append(timed(lambda: io.save_checkpoint(ckpt, url)))
            rows["save s3 (Lightning _atomic_save)"].append(timed(lambda: _atomic_save(ckpt, lightning_url)))
            rows["load local"].append(timed(lambda: io.load_checkpoint(local, weights_only=True)))
            shutil.rmtree(storage.cache_dir(), ignore_errors=True)
            rows["load s3 cold"].append(timed(lambda: io.load_checkpoint(url, weights_only=True)))
            rows["load s3 warm"].append(timed(lambda: io.load_checkpoint(url, weights_only=True)))
        loaded = io.load_checkpoint(url, weights_only=True)
        assert all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "mb": round(size / 1e6, 1),
        "repeats": args.repeats,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "ratio_s3_over_local": {
            "save": round(medians["save s3"] / medians["save local"], 2),
            "load cold": round(medians["load s3 cold"] / medians["load local"], 2),
            "load warm": round(medians["load s3 warm"] / medians["load local"], 2),
        },
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_storage.py " + " ".join(sys.argv[1:]),
    }
    print(f"checkpoint of {result['mb']} MB, median of {args.repeats} (interleaved):")
    for name, value in medians.items():
        print(f"  {name:<34} {value:7.3f} s   {size / 1e6 / value:7.0f} MB/s")
    print("  s3 / local: " + ", ".join(f"{k} {v}x" for k, v in result["ratio_s3_over_local"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
