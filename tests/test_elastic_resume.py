"""A run preempted on 4 ranks x 2 loader workers at 40% of an epoch and resumed on 2 ranks, on 3 ranks and on 1 rank x 3
workers (issue 25), on gloo CPU processes (``tests/elastic_job.py``, launched by ``torch.distributed.run``).

The known answer is the uninterrupted 4-rank epoch: the keys consumed before the save plus those consumed after the
resume hold every sample of that epoch as often as the uninterrupted epoch does, plus at most ``ranks - 1`` batches
that keep the new ranks' batch counts equal (``datamodules.slots``: ``Plan.padded``), and nothing else. In
each-sample-once mode that is every train sample once (the uninterrupted epoch repeats only the round-up of its last
batches); in resampled mode it is the same stream continued, the epoch's budget not restarted.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures_data import make_dataset

REPO = Path(__file__).resolve().parents[1]
N, BATCH, RANKS, WORKERS = 150, 4, 4, 2
STEPS = RANKS * math.ceil(math.ceil(N / BATCH) / RANKS) // RANKS  # steps per rank of an epoch on 4 ranks: 10
SAVE_AT = 4  # 40% of the epoch


def _launch(tmp: Path, name: str, manifest: str, ranks: int, workers: int, resampled: str, *extra: str) -> list[dict]:
    config = tmp / f"{name}.json"
    overrides = [f"data.num_workers={workers}", f"data.weak_label.resampled={resampled}", f"data.batch_size={BATCH}"]
    config.write_text(json.dumps({"manifest": manifest, "overrides": overrides}))
    with socket.socket() as sock:  # a free port (torchrun's --master-port=0 waits forever)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", f"--master-port={port}"]
    # A session of its own, so that a job that hangs is ended with all its ranks (killing torchrun alone leaves them).
    proc = subprocess.Popen(
        [*command, str(REPO / "tests" / "elastic_job.py"), str(config), str(tmp / name), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{name}: the {ranks}-process job did not end in 300 s: {stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    return [json.loads((tmp / name / f"rank{r}.json").read_text()) for r in range(ranks)]


def _keys(ranks: list[dict]) -> Counter:
    return Counter(k for r in ranks for batch in r["keys"] for k in batch)


@pytest.fixture(scope="module", params=["false", "true"], ids=["each_sample_once", "resampled"])
def interrupted(request, tmp_path_factory):
    """The uninterrupted 4 x 2 epoch, which also writes the data position after its 4th step."""
    tmp = tmp_path_factory.mktemp(f"elastic-{request.param}")
    data = make_dataset(tmp / "data", n_train=N, n_val=4, shard_size=10, scales=(1.0,))
    full = _launch(tmp, "full", data["manifest"], RANKS, WORKERS, request.param, "--save-at", str(SAVE_AT))
    return {"tmp": tmp, "data": data, "full": full, "resampled": request.param}


@pytest.mark.slow
@pytest.mark.parametrize("ranks,workers", [(2, 2), (3, 2), (1, 3)])
def test_a_resume_on_another_cluster_continues_every_slot_where_it_stopped(interrupted, ranks, workers):
    tmp, full = interrupted["tmp"], interrupted["full"]
    assert all(len(r["keys"]) == STEPS for r in full)  # equal batch counts per rank
    state = tmp / "full" / "state.json"
    name = f"on{ranks}x{workers}"
    resumed = _launch(
        tmp, name, interrupted["data"]["manifest"], ranks, workers, interrupted["resampled"], "--resume", str(state)
    )
    # The interrupted epoch goes on with what the 4 ranks had left, cut over the new ranks in equal counts.
    left = math.ceil((STEPS - SAVE_AT) * RANKS / ranks)
    assert [len(r["keys"]) for r in resumed] == [left] * ranks
    assert all(r["length"] == SAVE_AT + left for r in resumed)  # what Lightning is told the epoch's length is
    before = Counter(k for r in full for batch in r["keys"][:SAVE_AT] for k in batch)
    union = before + _keys(resumed)
    uninterrupted = _keys(full)
    assert not uninterrupted - union, "samples of the epoch never read after the resume"
    padding = union - uninterrupted  # read again only to keep the new ranks' batch counts equal
    assert sum(padding.values()) == (left * ranks - (STEPS - SAVE_AT) * RANKS) * BATCH
    if interrupted["resampled"] == "false":
        keys = interrupted["data"]["train_keys"]
        assert set(union) == set(keys)
        once = Counter(uninterrupted)
        assert sum(once.values()) - len(keys) == RANKS * STEPS * BATCH - N  # only the round-up repeats
