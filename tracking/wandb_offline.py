"""Read offline W&B runs (``wandb/offline-run-*``) with W&B's own reader, merged per run id as the server merges them.

Each start of a training run (and each evaluation that writes into its W&B run) opens a new offline folder under the
same run id; `wandb sync` uploads them one after another as resumes of one run. W&B's own reader of a folder's
transaction log is ``wandb leet inspect --json`` (wandb >= 0.31), which prints each record (run, config, history,
summary, exit, ...) as a JSON line; it is called here as a subprocess, so what is read is what W&B itself reads.
Folders of one id are merged in start order, as the server applies resumed segments: config and summary updates
in order, history rows appended, the state of the last segment.

``OfflineRun`` has the attributes of ``wandb.apis.public.Run`` that ``studies.collect.record_from_wandb_run`` reads, so
``make_report.py --wandb-dir wandb`` builds the same tables from offline folders as from the W&B API after a sync.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A segment without an exit record whose log has not been written for this long belongs to a dead process.
STALE_AFTER_S = 300.0


def read_records(folder: os.PathLike | str) -> list[dict[str, Any]]:
    """The records of one offline run folder, in log order, from ``wandb leet inspect --json``.

    Raises:
        RuntimeError: W&B's reader failed on the folder (its message is included).
    """
    logs = sorted(Path(folder).glob("*.wandb"))
    if not logs:
        return []  # a process killed before W&B created its log
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(logs[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wandb leet inspect {folder} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return [json.loads(line) for line in proc.stdout.split("\n") if line.strip()]


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass
class Segment:
    """One offline folder: one process's part of a run."""

    folder: Path
    run_id: str
    start_time: str
    records: list[dict[str, Any]]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r[kind] for r in self.records if r.get("type") == kind]

    @property
    def exit_code(self) -> int | None:
        exits = self.of_type("exit")
        return int(exits[-1].get("exit_code", 0)) if exits else None

    @property
    def steps(self) -> list[int]:
        return [int(h["item"]["_step"]) for h in self.of_type("history") if "_step" in h.get("item", {})]


@dataclass
class OfflineRun:
    """One W&B run merged from its offline folders (see the module docstring)."""

    id: str
    name: str = ""
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"
    segments: list[Segment] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        """Every history row's ``_step``, in the order the server receives them."""
        return [int(row["_step"]) for row in self.history if "_step" in row]

    @property
    def monotonic(self) -> bool:
        """Whether the merged history's steps strictly increase (what the server needs to keep every row)."""
        steps = self.steps
        return all(a < b for a, b in zip(steps, steps[1:]))


def _segment(folder: Path) -> Segment | None:
    records = read_records(folder)
    runs = [r["run"] for r in records if r.get("type") == "run"]
    if not runs:
        return None  # a folder whose process died before W&B wrote its run record
    run = runs[0]
    return Segment(folder, str(run.get("run_id")), str(run.get("start_time") or ""), records)


def _state(segment: Segment) -> str:
    code = segment.exit_code
    if code is not None:
        return "finished" if code == 0 else "failed"
    log = next(segment.folder.glob("*.wandb"), None)
    if log is not None:
        written = _dt.datetime.fromtimestamp(log.stat().st_mtime, _dt.UTC)
        if (_dt.datetime.now(_dt.UTC) - written).total_seconds() > STALE_AFTER_S:
            return "crashed"
    return "running"


def next_step(run_id: str, wandb_dir: os.PathLike | str = "wandb") -> int | None:
    """One past the largest history step the offline folders of ``run_id`` hold on disk (what `wandb sync` will
    upload), or None when there is no such folder here. A killed process loses the rows W&B had not yet written
    (its log is written in blocks, and the last step's row is committed only when a later step or the end comes),
    so this, not the last step the process sent, is where a restart may begin without a gap or a repeat."""
    folders = sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}"))
    if not folders:
        return None
    steps = [s for f in folders if (seg := _segment(f)) is not None for s in seg.steps]
    return max(steps) + 1 if steps else 0


def read_offline_runs(wandb_dir: os.PathLike | str = "wandb") -> dict[str, OfflineRun]:
    """Every run under a ``wandb`` folder, its ``offline-run-*`` folders merged per run id.

    Raises:
        FileNotFoundError: ``wandb_dir`` does not exist.
    """
    root = Path(wandb_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"W&B folder not found: {root}")
    segments = [s for f in sorted(root.glob("offline-run-*")) if f.is_dir() and (s := _segment(f)) is not None]
    runs: dict[str, OfflineRun] = {}
    for seg in sorted(segments, key=lambda s: (s.start_time, s.folder.name)):
        run = runs.setdefault(seg.run_id, OfflineRun(id=seg.run_id))
        run.segments.append(seg)
        info = seg.of_type("run")[0]
        run.name = info.get("display_name") or run.name or seg.run_id
        run.group = info.get("run_group") or run.group
        run.tags = list(info.get("tags") or run.tags)
        for update in [info.get("config", {}), *seg.of_type("config")]:
            _merge(run.config, {k: v for k, v in update.get("update", {}).items() if k != "_wandb"})
        for update in seg.of_type("summary"):
            _merge(run.summary, update.get("update", {}))
        run.history += [h.get("item", {}) for h in seg.of_type("history")]
        run.state = _state(seg)
    return runs
