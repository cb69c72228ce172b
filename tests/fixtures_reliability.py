"""Fixtures for tests/test_reliability.py: tiny train.py command lines, subprocess helpers that can kill a run, and
hostile inputs (shards with broken samples, tars with escaping member names, pickle payloads, YAML tags).

Everything is generated under the test's tmp folder; nothing touches the repo's runs/ or wandb/ folders.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import webdataset as wds

from tests.fixtures_data import PickleBomb, make_dataset

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# A one-block ViT-Ti at 16 px (4 tokens), batch 8, deterministic kernels, no W&B: ~30 ms a step on one CPU core.
TINY = [
    "experiment=demo_cpu",
    "data.img_size=16",
    "model.kwargs.depth=1",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=5",
    "logger=none",
]


def train_args(manifest: str, output_dir: os.PathLike, run_name: str, *overrides: str) -> list[str]:
    """train.py overrides for a tiny weak-label run on the fixture shards."""
    return [
        *TINY,
        f"data.weak_label.manifest={manifest}",
        f"output_dir={output_dir}",
        f"run_name={run_name}",
        *overrides,
    ]


def subprocess_env(**extra: str | None) -> dict[str, str]:
    """The environment for a child train.py: one thread, offline W&B unless overridden (None removes a variable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = str(REPO)
    # An in-process W&B run of an earlier test leaves its service's address here; a child must start its own.
    env.pop("WANDB_SERVICE", None)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_train(args: list[str], log: Path, cwd: os.PathLike | None = None, **env: str | None) -> subprocess.Popen:
    """Start ``python train.py ARGS`` in its own session (so a kill reaches every process it started)."""
    return subprocess.Popen(
        [PYTHON, str(REPO / "train.py"), *args],
        cwd=str(cwd or REPO),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=subprocess_env(**env),
        start_new_session=True,
    )


def run_train(args: list[str], log: Path, timeout: float = 240, cwd: os.PathLike | None = None, **env: str | None):
    """Run train.py to the end; returns ``(returncode, output)``."""
    proc = start_train(args, log, cwd=cwd, **env)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, log.read_text()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by ``start_train`` and everything in its session (a preemption, a ``kill -9``)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.endswith(b"\n"))


def kill_when(proc: subprocess.Popen, path: Path, lines: int, timeout: float = 240) -> int:
    """SIGKILL ``proc`` (its whole session) as soon as ``path`` holds ``lines`` complete lines; returns the count
    seen then. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = count_lines(path)
        if seen >= lines:
            kill_group(proc)
            return seen
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended (rc {proc.returncode}) before {path} reached {lines} lines")
        time.sleep(0.005)
    kill_group(proc)
    raise AssertionError(f"{path} did not reach {lines} lines in {timeout} s")


# ------------------------------------------------------------------------------------------------ bad shards


def add_bad_shard(info: dict[str, Any], samples: list[dict[str, Any]], name: str = "train-bad-%06d.tar") -> str:
    """Append one train shard holding ``samples`` (raw webdataset dicts) to a ``make_dataset`` set and its manifest
    (counts kept consistent, scale bucket 1.0). Returns the shard url."""
    root = Path(info["root"])
    with wds.ShardWriter(str(root / name), maxcount=10_000, encoder=False, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    url = name % 0
    manifest = json.loads(Path(info["manifest"]).read_text())
    train = manifest["splits"]["train"]
    train["shards"].append({"url": url, "num_samples": len(samples), "scale_bucket": manifest["scales"][-1]})
    train["num_samples"] += len(samples)
    Path(info["manifest"]).write_text(json.dumps(manifest, indent=1))
    return url


def label_json(labels: list[int] | None, space: str = "clustered") -> bytes:
    meta: dict[str, Any] = {"key": "x", "source": "fixture", "text": {"title": "x"}}
    if labels is not None:
        meta["labels"] = {space: labels}
    return json.dumps(meta).encode()


# -------------------------------------------------------------------------------------------- hostile files


def escaping_tar(path: Path, outside: Path, image: bytes) -> list[str]:
    """A tar whose members try to land outside any extraction folder: ``../`` names, an absolute path, a symlink
    to ``outside`` and a hard link, next to one honest img2dataset sample. Returns the member names."""
    members = [
        ("good.jpg", image),
        ("good.txt", b"a red car"),
        ("../../escape.jpg", image),
        ("../../escape.txt", b"escaped caption"),
        (str(outside / "absolute.jpg"), image),
        (str(outside / "absolute.txt"), b"absolute caption"),
    ]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = str(outside / "symlinked.jpg")
        tf.addfile(link)
        hard = tarfile.TarInfo("hard.jpg")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "../../hard-target.jpg"
        tf.addfile(hard)
    return [m[0] for m in members] + ["link.jpg", "hard.jpg"]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (relative), to compare before and after."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def poison_checkpoint(src: Path, dst: Path, marker: Path) -> None:
    """A copy of a real checkpoint with one extra entry whose unpickling creates ``marker``."""
    import torch

    ckpt = torch.load(src, weights_only=True)
    ckpt["extra_state"] = PickleBomb(str(marker))
    torch.save(ckpt, dst)


__all__ = [
    "PickleBomb",
    "REPO",
    "TINY",
    "add_bad_shard",
    "count_lines",
    "escaping_tar",
    "kill_group",
    "kill_when",
    "label_json",
    "make_dataset",
    "poison_checkpoint",
    "run_train",
    "start_train",
    "subprocess_env",
    "train_args",
    "tree",
]
