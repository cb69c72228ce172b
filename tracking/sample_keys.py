"""A record of the training samples a run consumed, for checking exact resume (``data.record_keys``).

Each rank appends one JSON line per training batch it *consumed* (written at ``on_train_batch_end``, so prefetched
batches never appear)::

    {"epoch": 1, "batch_idx": 3, "step": 10, "keys": {"weak_label": ["3f2a...", ...], "fashion_mnist": [...]}}

Rank 0 writes ``<path>``, rank ``r > 0`` writes ``<path>.rank<r>``. The number of lines written is part of every
checkpoint (the callback's state), and a run cuts its file back to that number when training starts (to zero when it
starts without a checkpoint). So after a kill and a resume the file holds exactly the batches whose updates are in
the weights, in order, and can be compared line for line with an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from tracking.textio import json_line, split_lines

__all__ = ["SampleKeyRecorder", "rank_path", "read_records"]

log = logging.getLogger(__name__)


def rank_path(path: os.PathLike | str, rank: int) -> Path:
    """The file rank ``rank`` writes: ``path`` itself on rank 0, ``<path>.rank<r>`` on the others."""
    path = Path(path)
    return path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")


def read_records(path: os.PathLike | str) -> list[dict[str, Any]]:
    """The records of one rank's file, in order (an incomplete last line, from a kill mid-write, is left out)."""
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
    return [json.loads(line) for line in split_lines(text, keepends=True) if line.endswith("\n")]


class SampleKeyRecorder(Callback):
    """Append the sample keys of every consumed training batch to a JSON-lines file (see the module docstring).

    Args:
        path: the file rank 0 writes (``data.record_keys``).
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self.lines = 0  # lines this run's file holds: the count every checkpoint stores
        self._restored: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"lines": self.lines}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = int(state_dict.get("lines", 0))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lines past the checkpoint belong to batches the resumed run trains on again: cut them.
        path = rank_path(self.path, trainer.global_rank)
        keep = self._restored or 0
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = split_lines(path.read_text(encoding="utf-8"), keepends=True) if path.is_file() else []
        complete = [ln for ln in lines if ln.endswith("\n")]
        if len(complete) < keep:
            log.warning("%s holds %d records but the checkpoint counts %d", path, len(complete), keep)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(complete[:keep]), encoding="utf-8")
        os.replace(tmp, path)
        self.lines = min(keep, len(complete))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        keys = {
            str(name): [str(k) for k in part["key"]]
            for name, part in (batch.items() if isinstance(batch, dict) else ())
            if isinstance(part, dict) and "key" in part
        }
        record = {"epoch": trainer.current_epoch, "batch_idx": batch_idx, "step": trainer.global_step, "keys": keys}
        # One write per line, flushed at close: a kill leaves at most one incomplete last line.
        with open(rank_path(self.path, trainer.global_rank), "a", encoding="utf-8") as f:
            f.write(json_line(record))
        self.lines += 1
