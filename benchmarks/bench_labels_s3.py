"""Mining wall time with the input tars on an S3 server vs on local disk, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_labels_s3.py [--tars 6 --per-tar 400 --repeats 2 --workers 2]

A generated img2dataset corpus (``bench_labels_kill.make_corpus``: 320x240 JPEG, caption, json per sample) is
mined with ``mine_labels.py --config configs/labels/img2dataset.yaml`` (a fresh process per run, the local
engine) from a local folder and from ``s3://<bucket>/corpus`` on a moto_server started here on 127.0.0.1
(tests/fixtures_s3.py's ``S3Server``: a separate process over HTTP, as the tests use it), alternating
local / S3 ``--repeats`` times; it prints each run's wall time, the medians and their ratio, and checks the two
datasets' shards are byte-identical. moto keeps objects in memory in one Python process on this machine's cores,
so the ratio bounds the cost of the download-per-task path, not a real store's throughput.
Output: benchmarks/results/bench_labels_s3.txt (also printed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_labels_kill import make_corpus  # noqa: E402
from tests.fixtures_s3 import S3Server  # noqa: E402


def mine(source: str, out: Path, env: dict[str, str], workers: int) -> float:
    cmd = [
        sys.executable,
        str(REPO / "mine_labels.py"),
        "--config",
        str(REPO / "configs" / "labels" / "img2dataset.yaml"),
        f"sources.0.path={source}",
        f"output={out}",
        "run.progress=false",
        f"run.workers={workers}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mining {source} failed:\n{proc.stderr[-3000:]}")
    return wall


def shard_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(out.glob("*.tar")):
        digest.update(p.name.encode() + p.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tars", type=int, default=6)
    ap.add_argument("--per-tar", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_labels_s3.txt")
    args = ap.parse_args()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    say(
        f"commit {commit.stdout.strip()}; CPUs {len(os.sched_getaffinity(0))}; load avg {os.getloadavg()[0]:.1f}; "
        f"corpus {args.tars} tars x {args.per_tar} samples; run.workers={args.workers}; local engine"
    )
    with tempfile.TemporaryDirectory(prefix="bench_labels_s3_") as d:
        tmp = Path(d)
        corpus = tmp / "corpus"
        make_corpus(corpus, args.tars, args.per_tar)
        size = sum(p.stat().st_size for p in corpus.glob("*.tar"))
        server = S3Server(tmp / "moto_server.log")
        server.start()
        try:
            client = server.client()
            client.create_bucket(Bucket="bench")
            for tar in sorted(corpus.glob("*.tar")):
                client.upload_file(str(tar), "bench", f"corpus/{tar.name}")
            env = {
                k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3")
            }
            env.update(server.env())
            env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
            say(f"input bytes {size / 2**20:.1f} MiB; S3: moto_server at {server.endpoint}")
            times: dict[str, list[float]] = {"local": [], "s3": []}
            digests: dict[str, set[str]] = {"local": set(), "s3": set()}
            for r in range(args.repeats):
                for where, source in (("local", str(corpus)), ("s3", "s3://bench/corpus")):
                    out = tmp / f"out_{where}_{r}"
                    wall = mine(source, out, env, args.workers)
                    times[where].append(wall)
                    digests[where].add(shard_digest(out))
                    say(f"  repeat {r} {where:>5}: {wall:6.2f} s")
        finally:
            server.kill()
    local, s3 = statistics.median(times["local"]), statistics.median(times["s3"])
    say(f"median wall: local disk {local:.2f} s, S3 {s3:.2f} s; S3 / local = {s3 / local:.2f}")
    same = len(digests["local"] | digests["s3"]) == 1
    say(f"shards byte-identical across all runs: {same} ({sorted(digests['local'] | digests['s3'])})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
