"""Speed and memory of the label pipeline.

    python benchmarks/bench_labels.py                 # (1) text->labels rate, (2) peak memory 50k vs 500k rows
    python benchmarks/bench_labels.py --memory-rows 20000 200000   # quicker (about a minute)
    python benchmarks/bench_labels.py --openclipart   # (3) also the whole OpenClipArt build (minutes)

(1) Text -> labels on a generated JSONL manifest, no image work (``run.text_only``): samples per
    CPU-second of one process (= per core; CPU time, so other load on the machine does not distort
    it), for the scorer alone (normalize + terms + scores) and for the whole text-only run (read,
    duplicate merge, document frequency, vocabulary, label choice, clustering, samples.jsonl).
(2) Peak resident memory (ru_maxrss of a fresh subprocess) of the text-only run on generated
    manifests whose sizes differ tenfold: the pipeline streams, so it should stay flat.
(3) Wall time of ``mine_labels.py --config configs/labels/openclipart.yaml`` into a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_manifest(path: Path, rows: int, seed: int = 0) -> None:
    """A JSONL manifest with web-like text: Zipf-distributed words, title, tags and a description."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "ni", "pu", "qua", "ex", "zu", "bri", "tan"]
    words = sorted({rng.choice(syll) + rng.choice(syll) + rng.choice(syll) for _ in range(6000)})
    weights = [1.0 / (r + 1) for r in range(len(words))]  # Zipf: a few frequent words, a long tail
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)

    def pick(k: int) -> list[str]:
        return rng.choices(words, cum_weights=cum, k=k)

    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {
                "image": f"images/{i:08d}.jpg",
                "title": " ".join(pick(rng.randint(2, 4))).title(),
                "tags": pick(rng.randint(2, 6)),
                "caption": " ".join(pick(rng.randint(6, 16))) + ".",
            }
            f.write(json.dumps(row) + "\n")


def text_only_config(manifest: Path, out: Path, extra: list[str] = ()):
    from configs.labels_schema import load_labels_config

    cfg_file = out.parent / f"{out.name}.yaml"
    cfg_file.write_text(
        json.dumps(
            {
                "name": "bench",
                "output": str(out),
                "sources": [
                    {
                        "type": "manifest",
                        "path": str(manifest),
                        "fields": {"title": "title", "tags": "keywords", "caption": "description"},
                    }
                ],
            }
        )
    )
    overrides = ["run.text_only=true", "run.progress=false", "cluster.embedder=ppmi", "vocab.min_df=5", *extra]
    return load_labels_config(cfg_file, overrides)


def bench_rate(tmp: Path, rows: int) -> dict:
    from labels.pipeline import build_scorer, run
    from labels.scoring import eligible_terms

    manifest = tmp / f"rate_{rows}.jsonl"
    make_manifest(manifest, rows)
    cfg = text_only_config(manifest, tmp / "rate_out")
    scorer = build_scorer(cfg)
    records = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            records.append({"title": [r["title"]], "keywords": r["tags"], "description": [r["caption"]]})
    c0, w0 = time.process_time(), time.perf_counter()
    for sig in records:
        eligible_terms(scorer.score(sig), cfg.vocab.min_score)
    scorer_cpu, scorer_wall = time.process_time() - c0, time.perf_counter() - w0
    c0, w0 = time.process_time(), time.perf_counter()
    result = run(cfg)
    run_cpu, run_wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "rows": rows,
        "scorer_samples_per_cpu_s": rows / scorer_cpu,
        "scorer_samples_per_wall_s": rows / scorer_wall,
        "pipeline_samples_per_cpu_s": rows / run_cpu,
        "pipeline_samples_per_wall_s": rows / run_wall,
        "timings": result.stats["timings"],
        "vocab": result.vocab_sizes,
    }


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from benchmarks.bench_labels import text_only_config
from labels.pipeline import run
cfg = text_only_config(Path({manifest!r}), Path({out!r}))
t, c = time.perf_counter(), time.process_time()
r = run(cfg)
print(json.dumps({{"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "written": r.counts["written"], "candidate_terms": r.stats["vocab"]["candidate_terms"],
                  "df_prune_floor": r.stats["vocab"]["df_prune_floor"], "df_prunes": r.stats["vocab"]["df_prunes"]}}))
"""


def bench_memory(tmp: Path, sizes: list[int]) -> list[dict]:
    out = []
    for rows in sizes:
        manifest = tmp / f"mem_{rows}.jsonl"
        make_manifest(manifest, rows, seed=1)
        code = CHILD.format(repo=str(REPO), manifest=str(manifest), out=str(tmp / f"mem_out_{rows}"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["rows"] = rows
        res["manifest_mb"] = manifest.stat().st_size / 1e6
        out.append(res)
        manifest.unlink()
    return out


def bench_openclipart(tmp: Path) -> dict:
    out = tmp / "openclipart"
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", "configs/labels/openclipart.yaml", f"output={out}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    stats = json.loads((out / "report" / "stats.json").read_text())
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "cpu_s_incl_workers": kids.ru_utime + kids.ru_stime, "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000, help="manifest rows for the rate benchmark")
    ap.add_argument("--memory-rows", type=int, nargs="+", default=[50_000, 500_000])
    ap.add_argument("--openclipart", action="store_true", help="also time the whole OpenClipArt build")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}  python {sys.version.split()[0]}  load avg {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench_labels_") as d:
        tmp = Path(d)
        r = bench_rate(tmp, args.rows)
        print(f"\n(1) text -> labels, {r['rows']} generated manifest rows, one process, no image work")
        print(f"    scorer only (normalize + terms + scores): {r['scorer_samples_per_cpu_s']:,.0f} samples/CPU-s")
        print(f"    whole text-only run:                      {r['pipeline_samples_per_cpu_s']:,.0f} samples/CPU-s")
        print(
            f"    (wall: {r['scorer_samples_per_wall_s']:,.0f} and {r['pipeline_samples_per_wall_s']:,.0f} samples/s)"
        )
        print(f"    stage timings (s): {r['timings']}  vocab: {r['vocab']}")
        mem = bench_memory(tmp, args.memory_rows)
        print("\n(2) peak memory of the text-only run (fresh subprocess, ru_maxrss)")
        for m in mem:
            print(
                f"    {m['rows']:>9,} rows ({m['manifest_mb']:.0f} MB manifest): peak RSS {m['maxrss_mb']:.0f} MB, "
                f"{m['wall_s']:.1f} s wall, {m['rows'] / m['cpu_s']:,.0f} samples/CPU-s; df table "
                f"{m['candidate_terms']:,} terms ({m['df_prunes']} prunes, floor {m['df_prune_floor']})"
            )
        if len(mem) >= 2:
            print(
                f"    rows x{mem[-1]['rows'] / mem[0]['rows']:.0f} -> peak RSS x{mem[-1]['maxrss_mb'] / mem[0]['maxrss_mb']:.2f}"
            )
        if args.openclipart:
            o = bench_openclipart(tmp)
            s = o["stats"]
            print("\n(3) whole OpenClipArt build (render + mine + cluster + write)")
            print(
                f"    wall {o['wall_s']:.0f} s, CPU {o['cpu_s_incl_workers']:.0f} s incl. workers; counts {s['counts']}"
            )
            print(
                f"    vocab raw {s['vocab']['raw']} clustered {s['vocab']['clustered']}; peak RSS {s['peak_rss_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
