"""Start-up at 100k shards: per-rank time from the config to the first training batch, world 1 vs 128 (issue 15).

Writes one small real tar and a manifest listing ``--shards`` distinct shard files, all symlinks to it (so no
100k real tars are needed, and every file exists), then times, in this process (``data.num_workers=0``):

* ``manifest``: ``WeakLabelSource(cfg)`` (manifest parse and validation, scale subset, the existence check);
* ``first batch``: + ``train_source(rank, world)`` and the first batch of a pass,

for rank 0 of world 1 and for ranks 0 and 127 of a simulated world of 128 (what each of 128 ranks does), and counts
the shard-existence ``stat`` calls one rank makes. With ``--old REV`` the same for that revision's weak_label module
(default: the commit before issue 15, whose every rank stats every shard).

    python benchmarks/bench_startup.py                 # ~1 minute on a 2-core machine
    python benchmarks/bench_startup.py --shards 20000 --old none

Prints a table and writes benchmarks/results/bench_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_resume import OLD_REV, load_old, make_shards  # noqa: E402
from datamodules.resume import EpochClock, PassLoader  # noqa: E402
from tests.fixtures_data import compose_cfg  # noqa: E402


def big_manifest(root: Path, shards: int) -> Path:
    """A manifest of ``shards`` train shards, each a symlink to one real 64-sample tar."""
    small = make_shards(root, shards=1, per_shard=64)
    data = json.loads(small.read_text())
    real = root / data["splits"]["train"]["shards"][0]["url"]
    entries = []
    for i in range(shards):
        url = f"train-b0-{i:06d}.tar"
        if not (root / url).exists():
            os.symlink(real, root / url)
        entries.append({"url": url, "num_samples": 64, "scale_bucket": 1.0})
    data["splits"]["train"] = {"num_samples": 64 * shards, "shards": entries}
    (root / "manifest.json").write_text(json.dumps(data))
    return root / "manifest.json"


class CountStats:
    """Counts ``os.path.isfile`` calls (how both codes check that a shard exists) while active."""

    def __enter__(self):
        self.calls, self._orig = 0, os.path.isfile

        def isfile(path):
            self.calls += 1
            return self._orig(path)

        os.path.isfile = isfile
        return self

    def __exit__(self, *exc):
        os.path.isfile = self._orig


def startup(data_cls, cfg, rank: int, world: int) -> dict:
    with CountStats() as stats:
        t0 = time.perf_counter()
        data = data_cls(cfg)
        t1 = time.perf_counter()
    loader = PassLoader("weak_label", data.train_source(rank, world), EpochClock())
    batch = next(loader.run_pass(0, 0))
    t2 = time.perf_counter()
    assert len(batch["key"]) == cfg.data.batch_size
    return {"manifest_s": t1 - t0, "first_batch_s": t2 - t0, "stats": stats.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--old", default=OLD_REV, help="git revision to compare with, or 'none'")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "bench_startup.json"))
    args = parser.parse_args()

    from datamodules.weak_label import WeakLabelSource

    codes = {"current": WeakLabelSource}
    if args.old != "none":
        codes[f"old ({args.old})"] = load_old(args.old).WeakLabelData
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = big_manifest(Path(tmp), args.shards)
        print(
            f"{args.shards} shards (manifest {manifest.stat().st_size / 1e6:.1f} MB, written in "
            f"{time.perf_counter() - t0:.1f} s); workers=0; cores={os.cpu_count()}; "
            f"load average={os.getloadavg()[0]:.1f}"
        )
        cfg = compose_cfg(
            str(manifest), "data.num_workers=0", "data.batch_size=32", "data.img_size=64", "data.shuffle_buffer=64"
        )
        print(f"{'code':<18} {'rank/world':>11} {'manifest (s)':>13} {'first batch (s)':>16} {'stats/rank':>11}")
        for name, data_cls in codes.items():
            for rank, world in ((0, 1), (0, 128), (127, 128)):
                r = startup(data_cls, cfg, rank, world)
                results[f"{name}, rank {rank} of {world}"] = r
                print(
                    f"{name:<18} {f'{rank}/{world}':>11} {r['manifest_s']:>13.2f} {r['first_batch_s']:>16.2f} "
                    f"{r['stats']:>11}"
                )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"shards": args.shards, "cores": os.cpu_count(), "results": results}, indent=2)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
