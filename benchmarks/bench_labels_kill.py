"""What a killed mining run leaves behind, and what the img2dataset preset costs in memory on this machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_labels_kill.py                       # this checkout
    OMP_NUM_THREADS=1 python benchmarks/bench_labels_kill.py --repo /path/to/other/checkout   # e.g. the code before

(1) kill -9 of the driver mid-pass: a real ``mine_labels.py --config configs/labels/img2dataset.yaml`` run on a
    generated img2dataset corpus (tars of JPEG + caption + json), once per engine (``local``: the process pool;
    ``ray``: a local Ray the driver starts). The driver's descendants are recorded every 10 ms; once the map pass has
    finished its first tar, the driver gets SIGKILL; the script prints how many of the recorded processes (pid and
    start time, so a reused pid does not count) are alive 1 s and 5 s later, and their names. Survivors are killed
    afterwards, so the script leaves nothing running.
(2) Peak memory of the preset's defaults run to completion on the same corpus: the sum of the resident memory (RSS,
    and PSS, which splits shared pages between processes) of the driver and all its descendants, sampled every 50 ms,
    plus the worker count the run used; then the same with ``run.workers=8`` (the preset's count before it followed
    the CPUs), side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "cat dog car tree house flower bird boat mountain river beach city road bridge horse cloud sun moon star "
    "forest lake snow rain apple bike train plane chair table lamp book cup phone clock door window garden"
).split()


def make_corpus(folder: Path, tars: int, per_tar: int, seed: int = 0) -> None:
    """img2dataset-style tars: a 320x240 JPEG of random blocks, a caption and json tags/title per sample."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = [1.0 / (r + 1) for r in range(len(WORDS))]

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    for t in range(tars):
        with tarfile.open(folder / f"{t:05d}.tar", "w") as tf:
            for i in range(t * per_tar, (t + 1) * per_tar):
                blocks = nrng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                img = Image.fromarray(blocks).resize((320, 240), Image.NEAREST)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85)
                words = rng.choices(WORDS, weights=weights, k=rng.randint(3, 8))
                meta = {"key": f"{i:09d}", "title": " ".join(words[:2]).title(), "tags": sorted(set(words[:4]))}
                add(tf, f"{i:09d}.jpg", buf.getvalue())
                add(tf, f"{i:09d}.json", json.dumps(meta).encode())
                add(tf, f"{i:09d}.txt", ("a photo of " + " ".join(words)).encode())


def process_table() -> dict[int, tuple[int, int]]:
    """Live processes: pid -> (parent pid, start time)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                table[int(d)] = (int(fields[1]), int(fields[19]))
    return table


def tree(root: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """Processes below ``root``: pid -> start time."""
    table = table if table is not None else process_table()
    found, stack = {}, [root]
    while stack:
        parent = stack.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                stack.append(pid)
    return found


def alive(procs: dict[int, int]) -> list[tuple[int, str]]:
    table = process_table()
    out = []
    for pid, start in sorted(procs.items()):
        if table.get(pid, (0, None))[1] == start:
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.append((pid, name.strip()[:60]))
    return out


def command(repo: Path, corpus: Path, out: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        str(repo / "mine_labels.py"),
        "--config",
        str(repo / "configs" / "labels" / "img2dataset.yaml"),
        f"sources.0.path={corpus}",
        f"output={out}",
        "run.progress=false",
        *overrides,
    ]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e["OMP_NUM_THREADS"] = e.get("OMP_NUM_THREADS", "1")
    return e


def kill_mid_pass(repo: Path, corpus: Path, out: Path, engine: str) -> dict:
    proc = subprocess.Popen(
        command(repo, corpus, out, [f"run.engine={engine}"]),
        cwd=repo,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[int, int] = {}
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        seen.update(tree(proc.pid))
        if list((out / "_work" / "map").glob("*/stats.json")):
            break
        time.sleep(0.01)
    seen.update(tree(proc.pid))
    proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    killed_at = time.monotonic()
    result = {"engine": engine, "killed": code == -signal.SIGKILL, "processes": len(seen)}
    for at in (1.0, 5.0):
        time.sleep(max(0.0, killed_at + at - time.monotonic()))
        result[f"alive_{at:.0f}s"] = alive(seen)
    for pid, _ in alive(seen):  # leave nothing running
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return result


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(repo: Path, corpus: Path, out: Path, overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command(repo, corpus, out, overrides), cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = [proc.pid, *tree(proc.pid)]
            rss = sum(_rss_kb(p) for p in pids) / 1024
            pss = sum(_pss_kb(p) for p in pids) / 1024
            peak["rss_mb"] = max(peak["rss_mb"], rss)
            peak["pss_mb"] = max(peak["pss_mb"], pss)
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    stats = json.loads((out / "report" / "stats.json").read_text())
    peak.update(
        wall_s=time.perf_counter() - t0,
        workers=stats["distributed"]["workers"],
        written=stats["counts"]["written"],
        driver_peak_mb=stats["peak_rss_mb"],
        worker_peak_mb=max(p.get("peak_worker_rss_mb", 0.0) for p in stats["distributed"]["passes"].values()),
    )
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose mine_labels.py and preset to run")
    ap.add_argument("--tars", type=int, default=6)
    ap.add_argument("--per-tar", type=int, default=400)
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        f"checkout {repo} @ {commit.stdout.strip()}; CPUs available {len(os.sched_getaffinity(0))} "
        f"(os.cpu_count {os.cpu_count()}); load avg {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_labels_kill_") as d:
        tmp = Path(d)
        corpus = tmp / "corpus"
        make_corpus(corpus, args.tars, args.per_tar)
        print(f"corpus: {args.tars} tars x {args.per_tar} samples (320x240 JPEG, caption, json)", flush=True)
        print("\n(1) kill -9 of the driver once the map pass finished its first tar")
        for engine in args.engines:
            r = kill_mid_pass(repo, corpus, tmp / f"kill_{engine}", engine)
            names = sorted({n.split(" ")[0].rsplit("/", 1)[-1] for _, n in r["alive_5s"]})
            print(
                f"    {engine:>5}: {r['processes']} processes started by the run; alive 1 s after: "
                f"{len(r['alive_1s'])}, 5 s after: {len(r['alive_5s'])} {names if names else ''}"
                + ("" if r["killed"] else "  (the run ended before the kill: figures void)"),
                flush=True,
            )
        if args.skip_memory:
            return
        print("\n(2) peak memory of configs/labels/img2dataset.yaml run to completion (driver + all its processes)")
        for label, overrides in (("preset defaults", []), ("run.workers=8", ["run.workers=8"])):
            m = peak_memory(repo, corpus, tmp / f"mem_{label.replace(' ', '_').replace('=', '')}", overrides)
            print(
                f"    {label:>16}: {m['workers']} workers, peak RSS sum {m['rss_mb']:,.0f} MB, PSS sum "
                f"{m['pss_mb']:,.0f} MB over {m['processes']} processes (driver {m['driver_peak_mb']:.0f} MB, "
                f"largest worker {m['worker_peak_mb']:.0f} MB); {m['written']} written in {m['wall_s']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
