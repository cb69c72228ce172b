"""Mining wall time with inputs and output on an S3 server vs on local disk, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_labels_s3.py [--tars 6 --per-tar 400 --repeats 2 --workers 2]

A generated img2dataset corpus (``bench_labels_kill.make_corpus``: 320x240 JPEG, caption, json per sample) is
mined with ``mine_labels.py --config configs/labels/img2dataset.yaml`` (a fresh process per run, the local
engine) three ways, alternating ``--repeats`` times: local disk -> local disk, ``s3://<bucket>/corpus`` -> local disk,
and S3 -> ``s3://<bucket>/out<r>`` (the output, report and the passes' work files on the bucket: every task stages
on local disk and uploads, collect copies the shards server-side). The S3 server is a moto_server started here on
127.0.0.1 (tests/fixtures_s3.py's ``S3Server``: a separate process over HTTP, as the tests use it). It prints each
run's wall time, the medians and their ratios to local -> local, and checks that every run's shards are
byte-identical and that the S3 output's manifest equals the local output's (but for the output path it records).
moto keeps objects in memory in one Python process on this machine's cores, so the ratios bound the cost of the
object-store paths, not a real store's throughput.
Output: benchmarks/results/bench_labels_s3.txt (also printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def mine(source: str, out: str, env: dict[str, str], workers: int) -> float:
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


def dataset_files(out: str, client) -> dict[str, bytes]:
    """The shards and manifest of a local folder or an ``s3://bench/<prefix>`` output, by name (the manifest's
    record of the output path reads OUT)."""
    if out.startswith("s3://"):
        prefix = out[len("s3://bench/") :] + "/"
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="bench", Prefix=prefix).get("Contents", [])]
        files = {
            k[len(prefix) :]: client.get_object(Bucket="bench", Key=k)["Body"].read()
            for k in keys
            if "/" not in k[len(prefix) :]
        }
    else:
        files = {p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file()}
    files = {k: v for k, v in files.items() if k.endswith(".tar") or k == "manifest.json"}
    files["manifest.json"] = files["manifest.json"].replace(json.dumps(out).encode(), b'"OUT"')
    return files


def shard_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(k for k in files if k.endswith(".tar")):
        digest.update(name.encode() + files[name])
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
            legs = ("local -> local", "S3 -> local", "S3 -> S3")
            times: dict[str, list[float]] = {leg: [] for leg in legs}
            digests: dict[str, set[str]] = {leg: set() for leg in legs}
            manifests: dict[str, set[bytes]] = {leg: set() for leg in legs}
            for r in range(args.repeats):
                for leg in legs:
                    source = str(corpus) if leg.startswith("local") else "s3://bench/corpus"
                    out = f"s3://bench/out{r}" if leg.endswith("S3") else str(tmp / f"out_{r}_{leg[:2]}")
                    wall = mine(source, out, env, args.workers)
                    files = dataset_files(out, client)
                    times[leg].append(wall)
                    digests[leg].add(shard_digest(files))
                    manifests[leg].add(files["manifest.json"])
                    say(f"  repeat {r} {leg:>14}: {wall:6.2f} s")
        finally:
            server.kill()
    base = statistics.median(times["local -> local"])
    for leg in legs:
        med = statistics.median(times[leg])
        say(f"median wall {leg:>14}: {med:6.2f} s  (x{med / base:.2f} of local -> local)")
    every = set().union(*digests.values())
    say(f"shards byte-identical across all runs and legs: {len(every) == 1} ({sorted(every)})")
    same_manifest = len(manifests["S3 -> local"] | manifests["S3 -> S3"]) == 1
    say(f"manifest of S3 -> S3 equals S3 -> local's (output path aside): {same_manifest}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
