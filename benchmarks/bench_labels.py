"""Speed and memory of the distributed label pipeline, and a projection to 1B images.

    python benchmarks/bench_labels.py --rows 50000                 # development size (minutes)
    python benchmarks/bench_labels.py --rows 500000 --memory-rows 50000 500000 --images 500   # the full run
    python benchmarks/bench_labels.py --openclipart                # also the real OpenClipArt build

(1) Text passes on a generated img2dataset-style corpus (tars of ``.jpg`` + ``.txt`` caption +
    ``.json`` tags/title, 10,000 rows per tar, Zipf vocabulary, stock-site scaffolding in a third of
    the captions), ``run.text_only=true``: the whole run (list, map, caps, reduce, vocabulary, count,
    clustering, write, collect, report; Ray start-up excluded) for each engine with 1 and 2 workers:
    samples/s per core (= rows / wall / workers) and the 1 -> 2 worker speed-up.
(2) Image pass: JPEG decode + resize to short side 256 + encode (``labels.images.prepare``, the write
    pass's per-image work) on generated 640x480 photos-like JPEGs: images per CPU-second of one core.
(3) Peak memory per worker (largest ``ru_maxrss`` over a pass's tasks) and of the driver at N and
    10N rows (local engine, 1 worker): flat when the corpus grows, since every task holds one partition.
(4) Projection to 1B images from the measured rates: core-hours per pass, work-folder and output
    disk, driver memory.

Every run is a fresh ``mine_labels.py`` subprocess; figures come from its ``report/stats.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ROWS_PER_TAR = 10_000
SCAFFOLD = ["Stock photo:", "Image of", "free download", "vector illustration", "Tags:", "royalty free"]


def make_corpus(folder: Path, rows: int, seed: int = 0) -> None:
    """img2dataset-style tars with web-like captions (Zipf words; a few frequent, a long tail)."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "ni", "pu", "qua", "ex", "zu", "bri", "tan"]
    words = sorted({rng.choice(syll) + rng.choice(syll) + rng.choice(syll) for _ in range(6000)})
    cum, acc = [], 0.0
    for r in range(len(words)):
        acc += 1.0 / (r + 1)
        cum.append(acc)

    def pick(k: int) -> list[str]:
        return rng.choices(words, cum_weights=cum, k=k)

    folder.mkdir(parents=True, exist_ok=True)

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    for t in range(0, rows, ROWS_PER_TAR):
        with tarfile.open(folder / f"{t // ROWS_PER_TAR:05d}.tar", "w") as tf:
            for i in range(t, min(rows, t + ROWS_PER_TAR)):
                key = f"{i:09d}"
                caption = " ".join(pick(rng.randint(6, 16)))
                if i % 3 == 0:
                    caption = f"{rng.choice(SCAFFOLD)} {caption}"
                meta = {"key": key, "title": " ".join(pick(rng.randint(2, 4))).title(), "tags": pick(rng.randint(2, 6))}
                add(tf, f"{key}.jpg", i.to_bytes(8, "big"))  # never read in text-only runs
                add(tf, f"{key}.json", json.dumps(meta).encode())
                add(tf, f"{key}.txt", caption.encode())


def run_cli(corpus: Path, out: Path, overrides: list[str]) -> dict:
    """One ``mine_labels.py`` run in a fresh process; returns its report stats plus the work size."""
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "bench",
                "output": str(out),
                "sources": [
                    {"type": "img2dataset", "path": str(corpus), "fields": {"title": "title", "tags": "keywords"}}
                ],
            }
        )
    )
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(cfg), "run.progress=false"]
    cmd += ["run.text_only=true", "cluster.embedder=ppmi", "vocab.min_df=5", "vocab.max_df_share=0.5", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    stats = json.loads((out / "report" / "stats.json").read_text())
    stats["process_wall_s"] = wall
    work = out / "_work"
    stats["work_bytes"] = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) if work.exists() else None
    stats["output_bytes"] = (out / "samples.jsonl").stat().st_size
    return stats


def whole_run_s(stats: dict) -> float:
    """The run's wall time without Ray's start-up (a cluster is started once, not per run)."""
    return stats["timings"]["total_s"] - stats["distributed"]["engine_startup_s"]


def bench_text(tmp: Path, corpus: Path, rows: int, engines: list[str], workers: list[int]) -> dict:
    out = {}
    for engine in engines:
        for w in workers:
            s = run_cli(corpus, tmp / f"text_{engine}_{w}", [f"run.engine={engine}", f"run.workers={w}"])
            wall = whole_run_s(s)
            out[(engine, w)] = s
            print(
                f"    {engine:>5} x{w}: whole run {wall:6.1f} s -> {rows / wall / w:7,.0f} samples/s per core"
                f"  (passes: "
                + ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in s["distributed"]["passes"].items())
                + (f"; Ray start-up {s['distributed']['engine_startup_s']:.1f} s excluded" if engine == "ray" else "")
                + ")",
                flush=True,
            )
        if len(workers) >= 2:
            a, b = out[(engine, workers[0])], out[(engine, workers[1])]
            print(f"    {engine:>5}: speed-up x{workers[0]} -> x{workers[1]}: {whole_run_s(a) / whole_run_s(b):.2f}x")
    return out


def bench_images(tmp: Path, n: int) -> dict:
    """Images per CPU-second for the write pass's per-image work (decode, resize to 256, encode)."""
    import numpy as np
    from PIL import Image

    from labels.images import ImageJob, ImageSettings, prepare

    rng = np.random.default_rng(0)
    folder = tmp / "imgs"
    folder.mkdir()
    jobs = []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        base = (np.sin(xx / (20 + i % 7)) * 60 + np.cos(yy / (15 + i % 5)) * 60 + 120)[..., None]
        img = np.clip(base + rng.normal(0, 12, (480, 640, 3)) + [i % 50, 0, 30], 0, 255).astype(np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(img).save(path, quality=90)
        data = path.read_bytes()
        import hashlib

        jobs.append(ImageJob(i, hashlib.sha1(data).hexdigest()[:16], str(path), 0, -1, "jpg"))
    st = ImageSettings(short_side=256, quality=90)
    c0 = time.process_time()
    sizes = []
    for job in jobs:
        _, jpeg, reason = prepare(job, st)
        assert reason is None, reason
        sizes.append(len(jpeg))
    cpu = time.process_time() - c0
    return {"images": n, "images_per_cpu_s": n / cpu, "mean_output_bytes": sum(sizes) / n}


def projection(stats1: dict, rows: int, img: dict, driver_mb: float) -> None:
    """Core-hours per pass for 1B rows from the measured task seconds of a 1-worker run."""
    billion = 1e9
    print("\n(4) projection to 1B images (linear in rows, from the measured 1-worker rates)")
    total = 0.0
    for name, p in stats1["distributed"]["passes"].items():
        ch = p["task_s"] / rows * billion / 3600
        total += ch
        print(f"    {name:>6} pass (text): {ch:10,.0f} core-hours")
    ch_img = billion / img["images_per_cpu_s"] / 3600
    print(f"    image re-encode (write pass, short side 256): {ch_img:10,.0f} core-hours")
    print(f"    total: {total + ch_img:10,.0f} core-hours (= {(total + ch_img) / 24 / 1000:.1f} days on 1,000 cores)")
    work_tb = stats1["work_bytes"] / rows * billion / 1e12
    json_b = stats1["output_bytes"] / rows
    out_tb = (img["mean_output_bytes"] + json_b + 1024 * 2) * billion / 1e12  # + tar headers of jpg and json
    print(f"    work folder (map units + reduce samples, text only): {work_tb:.1f} TB (freed at the end)")
    print(
        f"    output shards: {out_tb:.1f} TB ({img['mean_output_bytes'] / 1e3:.1f} kB JPEG + {json_b:.0f} B json per image)"
    )
    print(
        f"    driver memory: {driver_mb:.0f} MB measured; it holds the vocabulary (vocab.max_terms terms), the"
        " merged co-occurrence of those terms and one stats record at a time: no rows, no candidate-term table"
        " (document frequencies are counted per term partition by the df pass)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the text-pass corpus (the target: 500000)")
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=200, help="JPEGs for the image-pass rate")
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[5_000, 50_000], help="N and 10N rows")
    ap.add_argument("--openclipart", action="store_true", help="also time the whole OpenClipArt build")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}  python {sys.version.split()[0]}  load avg {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_labels_") as d:
        tmp = Path(d)
        corpus = tmp / "corpus"
        t = time.perf_counter()
        make_corpus(corpus, args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.0f} s", flush=True)
        print(f"\n(1) text passes, {args.rows:,} img2dataset rows ({-(-args.rows // ROWS_PER_TAR)} tars), text only")
        text = bench_text(tmp, corpus, args.rows, args.engines, args.workers)
        img = bench_images(tmp, args.images)
        print(f"\n(2) image pass: {img['images_per_cpu_s']:.1f} images/s per core (640x480 JPEG -> short side 256)")
        print("\n(3) peak memory (local engine, 1 worker)")
        mem = []
        for n in args.memory_rows:
            c = tmp / f"mem_{n}"
            make_corpus(c, n, seed=1)
            s = run_cli(c, tmp / f"mem_out_{n}", ["run.workers=1", "run.keep_work=true"])
            workers_mb = {k: v["peak_worker_rss_mb"] for k, v in s["distributed"]["passes"].items()}
            mem.append((n, s))
            print(f"    {n:>9,} rows: driver {s['peak_rss_mb']:.0f} MB; worker peak by pass (MB) {workers_mb}")
        if len(mem) >= 2:
            (n0, a), (n1, b) = mem[0], mem[-1]
            wa = max(v["peak_worker_rss_mb"] for v in a["distributed"]["passes"].values())
            wb = max(v["peak_worker_rss_mb"] for v in b["distributed"]["passes"].values())
            print(
                f"    rows x{n1 / n0:.0f} -> worker peak x{wb / wa:.2f}, driver x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
            )
        base = mem[-1][1] if mem else text[(args.engines[0], args.workers[0])]
        rows = mem[-1][0] if mem else args.rows
        projection(base, rows, img, base["peak_rss_mb"])
        if args.openclipart:
            out = tmp / "openclipart"
            cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", "configs/labels/openclipart.yaml"]
            t = time.perf_counter()
            subprocess.run([*cmd, f"output={out}", "run.progress=false"], cwd=REPO, check=True, capture_output=True)
            s = json.loads((out / "report" / "stats.json").read_text())
            print(f"\n(5) OpenClipArt build: {time.perf_counter() - t:.0f} s wall; counts {s['counts']}")


if __name__ == "__main__":
    main()
