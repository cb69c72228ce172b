"""A Ray node lost in the middle of a mining pass: the job finishes with the bytes of an uninterrupted run.

A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head node with no CPUs, so every
task runs on a worker node, and two worker nodes of one CPU each, each its own raylet and object store); the driver
joins it through ``RAY_ADDRESS`` exactly as on a real cluster. While one worker node runs a map task (its worker
process titled ``ray::map_task``), that node is killed (SIGKILL of its workers and raylet; no graceful drain): Ray
resubmits the task, whose node died, to the node left (``run.max_retries``), which redoes it from a cleared folder.
In the first tests the nodes share this machine's disk (the work folder) and one Ray temp folder. In the last, nothing
is shared but an S3 bucket (moto_server, tests/fixtures_s3.py): inputs, output and the passes' work files live there,
and each worker node has its own Ray temp folder and its own ``$TMPDIR`` where its tasks stage their files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import storage
from labels.pipeline import run
from labels.sources import InputError
from tests.fixtures_labels import labels_config
from tests.test_labels_distributed import SMALL_PARTS, mine_reference, output_bytes
from tests.test_labels_s3 import _same_dataset, _upload

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """An uninterrupted run (local engine) of the small corpus: (root, sources, output bytes)."""
    return mine_reference(tmp_path_factory.mktemp("clean"))[:3]


@pytest.fixture
def cluster(monkeypatch, request):
    """Head (0 CPUs) + 2 worker nodes of 1 CPU; RAY_ADDRESS points at it; everything shut down afterwards: (cluster,
    worker nodes, bucket, scratch folders). With ``scratch`` (the test with nothing shared but a bucket), the S3
    server's bucket comes first, so every node's processes inherit the AWS_* environment that points at it (as
    `ray start` on a real node inherits its shell's), and each worker node gets its own Ray temp folder and its own
    ``$TMPDIR`` (where its tasks stage their files), as separate machines would have."""
    ray = pytest.importorskip("ray")
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    bucket = request.getfixturevalue("s3_bucket") if "scratch" in params else None
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    small = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **small})
    scratch: list[Path] = []
    workers = []
    try:
        for _ in range(2):
            if "scratch" not in params:
                workers.append(c.add_node(num_cpus=1, object_store_memory=80 * 2**20))
                continue
            # Short paths: Ray's socket paths (under its temp folder) must fit in 107 bytes.
            root = Path(tempfile.mkdtemp(prefix="node"))
            (root / "tmp").mkdir()
            scratch.append(root / "tmp")
            with monkeypatch.context() as m:
                m.setenv("TMPDIR", str(root / "tmp"))  # the raylet, and so its workers, inherit it
                workers.append(c.add_node(num_cpus=1, object_store_memory=80 * 2**20, temp_dir=str(root / "ray")))
        c.wait_for_nodes()
        monkeypatch.setenv("RAY_ADDRESS", c.address)
        yield c, workers, bucket, scratch
    finally:
        ray.shutdown()
        c.shutdown()
        for folder in scratch:
            shutil.rmtree(folder.parent, ignore_errors=True)


def _children(raylet_pid: int) -> dict[int, str]:
    """The node's processes below its raylet (workers, agents): pid -> title (a worker running a task reads
    ``ray::<task>``, an idle one ``ray::IDLE``)."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            title = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == raylet_pid:
            found[int(d)] = title
    return found


def _done(work: Path, kind: str) -> int:
    return len(list((work / kind).glob("*/stats.json")))


def _run_killing_a_node(c, node, cfg, done=None, staged=None) -> tuple[object, list[dict], Exception | None]:
    """``run(cfg)`` while a thread kills ``node`` as soon as one of its workers runs a map task; returns the run's
    result (or the error it raised), what was done at the kill and the node's processes then. ``done(kind)``
    counts the complete tasks of a pass (default: commit markers in the local work folder); with ``staged`` (the
    node's scratch folder), the kill also waits until the map task has staged files there."""
    work = Path(cfg.output) / "_work"
    done = done or (lambda kind: _done(work, kind))
    killed: list[dict] = []
    raylet = node.all_processes["raylet"][0].process.pid
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            procs = _children(raylet)
            busy = any(t == "ray::map_task" for t in procs.values())
            if busy and staged is not None:
                busy = any(n.startswith("mine_labels-task-") for n in os.listdir(staged))
            if busy:
                # The whole node at once, as a lost machine: its workers first (they would otherwise notice the
                # raylet's death only later and could still hand a finished result to the driver), then the raylet.
                for pid in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                c.remove_node(node, allow_graceful=False)  # SIGKILL of the raylet (and its object store)
                killed.append({**{k: done(k) for k in ("map", "reduce", "write")}, "procs": procs})
                return
            time.sleep(0.002)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    result, error = None, None
    try:
        result = run(cfg)
    except Exception as err:  # noqa: BLE001 - the caller asserts on it
        error = err
    finally:
        stop.set()
        th.join()
    assert killed, "the node was never killed"
    # The node died running a map task, before the pass was complete: that task had to run again elsewhere.
    assert killed[0]["map"] < 5 and killed[0]["write"] == 0, f"killed too late to be mid-pass: {killed[0]}"
    assert not Path(f"/proc/{raylet}").exists() or "Z" in Path(f"/proc/{raylet}/stat").read_text().split(")")[1][:3]
    return result, killed, error


def test_a_worker_node_killed_mid_pass_still_gives_the_clean_bytes(clean, cluster, tmp_path):
    """Inputs and output on this machine's disk, which the nodes share (with nothing shared but a bucket: the last
    test)."""
    _, sources, files = clean
    c, workers, _, _ = cluster
    cfg = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.engine=ray", "run.max_retries=3"], out="lost")
    result, _, error = _run_killing_a_node(c, workers[0], cfg)
    assert error is None, error
    assert output_bytes(Path(cfg.output)) == files
    stats = result.stats["distributed"]
    assert stats["engine"] == "ray" and stats["passes"]["map"]["ran"] == 5 and stats["passes"]["map"]["failed"] == []
    assert json.loads(files["manifest.json"])["counts"]["written"] == 32


def test_without_retries_the_lost_task_stops_the_run_and_the_rerun_redoes_only_it(clean, cluster, tmp_path):
    """run.max_retries=0: the task of the lost node fails the pass naming its partition (NodeDiedError), the other
    map tasks complete; the same command again, on the node left, redoes that one task and gives the clean bytes."""
    _, sources, files = clean
    c, workers, _, _ = cluster
    cfg = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.engine=ray", "run.max_retries=0"], out="lost")
    _, _, error = _run_killing_a_node(c, workers[0], cfg)
    assert isinstance(error, InputError) and "NodeDiedError" in str(error), error
    assert "1 task(s) of pass 'map' failed" in str(error)
    assert _done(Path(cfg.output) / "_work", "map") == 4
    result = run(cfg)
    assert output_bytes(Path(cfg.output)) == files
    assert result.stats["distributed"]["passes"]["map"]["already_done"] == 4
    assert result.stats["distributed"]["passes"]["map"]["ran"] == 1


@pytest.mark.parametrize("scratch", ["per node"])
def test_nodes_sharing_only_the_bucket_lose_one_mid_pass_and_still_give_the_clean_bytes(
    clean, cluster, s3_server, tmp_path, scratch
):
    """Inputs and output (with the passes' work files) on the S3 server; each worker node stages its tasks' files in
    its own ``$TMPDIR`` and has its own Ray temp folder; no folder is shared. The node running a map task is killed:
    its task is redone on the other node, the dataset equals the clean run's byte for byte."""
    from tests.test_labels_s3_output import dataset, s3_output_bytes

    root, sources, files = clean
    c, workers, bucket, folders = cluster
    sources = [{**sources[0], "path": _upload(root, bucket)}, sources[1]]
    url = f"s3://{bucket}/mined"
    cfg = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.engine=ray", "run.max_retries=3", f"output={url}"])
    seen: dict[int, set[str]] = {0: set(), 1: set()}
    stop = threading.Event()

    def watch():  # which node's scratch folder held task files (they are removed when a task commits)
        while not stop.is_set():
            for i, folder in enumerate(folders):
                seen[i].update(n.split("-")[1] for n in os.listdir(folder) if n.startswith("mine_labels-"))
            time.sleep(0.005)

    def committed(kind: str) -> int:
        return sum(1 for k in storage.glob(f"{url}/_work", f"*/{kind}/*/commit.json"))

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        result, killed, error = _run_killing_a_node(c, workers[0], cfg, committed, staged=folders[0])
    finally:
        stop.set()
        th.join()
    assert error is None, error
    _same_dataset(s3_output_bytes(s3_server, url), dataset(files), sources[0]["path"], str(root / "i2d"))
    assert result.stats["distributed"]["passes"]["map"]["ran"] == 5
    assert seen[0] >= {"task"} and seen[1] >= {"task", "inputs"}, seen  # each node staged in its own folder
    # The killed node's task left its staging folder behind (no one cleans a dead machine's disk); the other node's
    # tasks removed theirs; nothing was written to a local output folder.
    assert any(n.startswith("mine_labels-") for n in os.listdir(folders[0]))
    assert not any(n.startswith("mine_labels-") for n in os.listdir(folders[1]))
    assert not (tmp_path / "out").exists()
    for folder in folders:  # and each node ran its Ray session in its own temp folder
        assert any(p.name.startswith("session_") for p in (folder.parent / "ray").iterdir())
