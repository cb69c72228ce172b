"""Time from a mid-epoch resume to the first training batch, at 10%, 50% and 90% of an epoch (issues 15 and 25).

Generates a 200-shard weak-label set (synthetic 256 px JPEGs, integer-mtime tars like labels/shards.py writes) in a
temporary folder, then for each position builds the weak-label training loader afresh (as a requeued job does) and
times ``run_pass(epoch, pass, position)`` up to its first batch, in the main process (``data.num_workers=0``, so
worker start-up is not in the figure). The current code should be flat (90% / 10% <= 1.5). With ``--old REV`` (default:
the commit before the bounded resume) the same is timed for that revision's ``datamodules/weak_label.py``, loaded from
git into a side module: it replays the consumed part of the epoch, so its time grows with the position. The world-size
case (issue 25, ``--saved-world``, default 4) resumes on 1 rank a position saved by a 4-rank run at the same
fractions of its epoch: the plan's remaining pieces are cut over the new rank and the first piece starts at its raw
index, so it should be flat too.

    python benchmarks/bench_resume.py                       # ~1-2 minutes on a 2-core machine
    python benchmarks/bench_resume.py --old none --repeats 5

Prints a table and writes benchmarks/results/bench_resume.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.resume import EpochClock, PassLoader  # noqa: E402
from tests.fixtures_data import compose_cfg  # noqa: E402

OLD_REV = "4aaf971"  # main before issue 15: index_and_skip replays the consumed samples


def make_shards(root: Path, shards: int, per_shard: int, classes: int = 50) -> Path:
    """``shards`` tars of ``per_shard`` samples (a few distinct 256 px JPEGs, ~20 KB, reused under distinct keys)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(8):
        img = Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).resize((320, 256))
        draw = ImageDraw.Draw(img)
        draw.ellipse((40, 40, 200, 200), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=60)
        jpegs.append(buf.getvalue())
    entries, i = [], 0
    names = [f"c{c}" for c in range(classes)]
    for s in range(shards):
        url = f"train-b0-{s:06d}.tar"
        with wds.TarWriter(str(root / url), encoder=False, mtime=0) as sink:
            for _ in range(per_shard):
                labels = sorted(set(rng.integers(0, classes, 3).tolist()))
                meta = {"key": f"{i:016x}", "labels": {"raw": labels, "clustered": labels}}
                sink.write({"__key__": f"{i:016x}", "jpg": jpegs[i % 8], "json": json.dumps(meta).encode()})
                i += 1
        entries.append({"url": url, "num_samples": per_shard, "scale_bucket": 1.0})
    manifest = {
        "format_version": 1,
        "name": "bench-resume",
        "label_spaces": {
            "raw": {"num_classes": classes, "names": names},
            "clustered": {"num_classes": classes, "names": names},
        },
        "scales": [1.0],
        "splits": {
            "train": {"num_samples": i, "shards": entries},
            "val": {"num_samples": per_shard, "shards": entries[:1]},
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "manifest.json"


def load_old(rev: str):
    """``datamodules/weak_label.py`` of git revision ``rev`` as a side module (shares the current loaders)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:datamodules/weak_label.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_weak_label.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_weak_label", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_weak_label"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def saved_position(cfg, batches: int, world: int = 1) -> dict:
    """The data position after ``batches`` steps of every rank of a ``world``-rank run (the current code's format,
    no sample skipped), as its checkpoint would hold it."""
    from datamodules.weak_label import WeakLabelSource

    source = WeakLabelSource(cfg).train_source(0, world)
    start, _ = source.begin(0, 0, None)
    plan = start["plan"]
    progress = plan.progress_after(batches, cfg.data.batch_size)
    return {"pass": 0, "layout": start["layout"], "plan": plan.state(), "progress": progress, "plan_batches": batches}


def time_to_first_batch(data_cls, cfg, batches: int, repeats: int, saved_world: int | None = None) -> float:
    """Median seconds from building the loader and starting the pass at ``batches`` to its first batch. With
    ``saved_world`` the position is that of a run on that many ranks (a resume on another world size)."""
    times = []
    current = saved_world is not None
    pos = saved_position(cfg, batches, saved_world) if current else None
    for _ in range(repeats):
        start = time.perf_counter()
        source = data_cls(cfg).train_source(0, 1)
        if current:
            batch = next(PassLoader("weak_label", source, EpochClock()).run_pass(0, 0, pos))
        else:  # an old revision's source: (epoch, pass, batches, offsets), its DataLoader read directly
            source.begin(0, 0, batches, None)
            batch = next(iter(source.dataloader))
        times.append(time.perf_counter() - start)
        assert len(batch["key"]) == cfg.data.batch_size
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=250, help="data.shuffle_buffer (group = 4 buffers)")
    parser.add_argument("--resampled", default="false,true", help="data.weak_label.resampled values, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--saved-world", type=int, default=4, help="ranks of the run whose position is resumed on 1")
    parser.add_argument("--old", default=OLD_REV, help="git revision to compare with, or 'none'")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "bench_resume.json"))
    args = parser.parse_args()

    from datamodules.weak_label import WeakLabelSource

    codes = {"current": WeakLabelSource}
    if args.old != "none":
        codes[f"old ({args.old})"] = load_old(args.old).WeakLabelData
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_shards(Path(tmp), args.shards, args.per_shard)
        results = {}
        for resampled in args.resampled.split(","):
            cfg = compose_cfg(
                str(manifest),
                "data.num_workers=0",
                f"data.batch_size={args.batch_size}",
                f"data.shuffle_buffer={args.shuffle_buffer}",
                f"data.weak_label.resampled={resampled}",
                "data.img_size=64",
            )
            epoch = len(PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock()))
            fractions = (0.1, 0.5, 0.9)
            print(
                f"{args.shards} shards x {args.per_shard} samples, batch {args.batch_size}, {epoch} batches per "
                f"epoch, shuffle_buffer {args.shuffle_buffer}, resampled={resampled}, workers=0, "
                f"cores={os.cpu_count()}, load average={os.getloadavg()[0]:.1f}"
            )
            print(f"{'code':<28}" + "".join(f"{f'{int(f * 100)}% (s)':>10}" for f in fractions) + f"{'90%/10%':>10}")
            cases = [(name, data_cls, 1 if name == "current" else None) for name, data_cls in codes.items()]
            cases.append((f"current, saved on {args.saved_world} ranks", WeakLabelSource, args.saved_world))
            for name, data_cls, world in cases:
                steps = epoch // world if world else epoch  # the saving run's steps per epoch
                secs = [time_to_first_batch(data_cls, cfg, int(f * steps), args.repeats, world) for f in fractions]
                ratio = secs[-1] / secs[0]
                results[f"{name}, resampled={resampled}"] = {
                    "seconds": dict(zip([str(f) for f in fractions], secs)),
                    "ratio_90_10": ratio,
                }
                print(f"{name:<28}" + "".join(f"{s:>10.3f}" for s in secs) + f"{ratio:>10.2f}")
    out = {
        "shards": args.shards,
        "per_shard": args.per_shard,
        "batch_size": args.batch_size,
        "batches_per_epoch": epoch,
        "shuffle_buffer": args.shuffle_buffer,
        "cores": os.cpu_count(),
        "saved_world": args.saved_world,
        "load_average": os.getloadavg()[0],
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
