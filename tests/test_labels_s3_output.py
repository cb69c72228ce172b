"""Mining output on object storage: ``output=s3://...`` on a real S3 server (moto_server in its own process,
tests/fixtures_s3.py; endpoint and keys from the environment), with no shared file system for the work files.

The dataset (shards, manifest) equals the one mined to local disk byte for byte (the manifest records its output
URL); a killed driver's rerun redoes only the tasks without a commit marker object; a task of a dead run that
commits late never replaces what the rerun committed; a second driver on the same output is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import storage
from labels import lifetime, passes, store
from labels.pipeline import run
from tests.fixtures_labels import labels_config
from tests.test_labels_distributed import SMALL_PARTS, _cli_config, mine_reference, output_bytes

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The corpus mined to local disk (in the driver process): (root, sources, output bytes, result)."""
    return mine_reference(tmp_path_factory.mktemp("local"))


def s3_output_bytes(server, url: str) -> dict[str, bytes]:
    """The dataset at ``url`` as ``output_bytes`` gives a local one: every object directly under the prefix, by
    name, the manifest's record of its output URL replaced by OUT."""
    bucket, prefix = url[len("s3://") :].split("/", 1)
    client = server.client()
    files = {}
    for key in server.keys(bucket, prefix + "/"):
        name = key[len(prefix) + 1 :]
        if "/" not in name:
            files[name] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    if "manifest.json" in files:
        files["manifest.json"] = files["manifest.json"].replace(json.dumps(url).encode(), b'"OUT"')
    return files


def dataset(files: dict[str, bytes]) -> dict[str, bytes]:
    """A local output's dataset files (its lock files left out)."""
    return {k: v for k, v in files.items() if not k.startswith(".mine_labels.")}


def _work_keys(server, url: str) -> list[str]:
    bucket, prefix = url[len("s3://") :].split("/", 1)
    return server.keys(bucket, prefix + "/_work/")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_mining_to_s3_gives_the_bytes_of_mining_to_disk(local_reference, s3_server, s3_bucket, tmp_path, engine):
    """The local pool (2 workers) and Ray (local mode) write the dataset and report to the bucket; nothing of the
    work files is left there, and nothing is written to the local output path."""
    _, sources, files, result_local = local_reference
    url = f"s3://{s3_bucket}/mined"
    extra = ["run.workers=2"] + (["run.engine=ray"] if engine == "ray" else [])
    cfg = labels_config(tmp_path, sources, [*SMALL_PARTS, f"output={url}", *extra])
    if engine == "ray":
        pytest.importorskip("ray")
        os.environ.pop("RAY_ADDRESS", None)
    result = run(cfg)
    assert s3_output_bytes(s3_server, url) == dataset(files)
    assert result.counts == result_local.counts
    stats = json.loads(storage.read_bytes(f"{url}/report/stats.json"))
    assert stats["counts"] == result_local.counts and stats["distributed"]["engine"] == engine
    assert storage.exists(f"{url}/report/label_quality.json")
    assert _work_keys(s3_server, url) == []  # removed after the run
    assert not storage.exists(f"{url}/.mine_labels.lock")  # released


def test_a_text_only_run_to_s3_writes_the_bytes_of_a_text_only_run_to_disk(
    local_reference, s3_server, s3_bucket, tmp_path
):
    """run.text_only: the write tasks' samples.jsonl files are joined into one object in partition order."""
    _, sources, _, _ = local_reference
    text = [*SMALL_PARTS, "run.text_only=true"]
    local = labels_config(tmp_path, sources, text, out="text")
    written = run(local).counts["written"]
    url = f"s3://{s3_bucket}/text"
    run(labels_config(tmp_path, sources, [*text, f"output={url}"]))
    want = dataset(output_bytes(Path(local.output)))
    assert sorted(want) == ["manifest.json", "samples.jsonl"] and want["samples.jsonl"].count(b"\n") == written > 0
    assert s3_output_bytes(s3_server, url) == want


def _cli_config_s3(tmp_path: Path, sources: list[dict], url: str) -> Path:
    """tests/test_labels_distributed.py's CLI config (tasks in the driver process) with the output at ``url``."""
    path = _cli_config(tmp_path, sources, tmp_path / "unused", {})
    path.write_text(path.read_text().replace(str(tmp_path / "unused"), url))
    return path


def _committed(server, url: str, kind: str) -> set[str]:
    """Task folders of pass ``kind`` holding a commit marker object."""
    return {k.split("/")[-2] for k in _work_keys(server, url) if f"/{kind}/" in k and k.endswith("/commit.json")}


@pytest.mark.parametrize("kill_in", ["write"])
def test_kill_9_of_the_driver_then_rerun_to_s3_redoes_only_unfinished_tasks(
    local_reference, s3_server, s3_bucket, tmp_path, kill_in
):
    _, sources, files, _ = local_reference
    url = f"s3://{s3_bucket}/mined"
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(_cli_config_s3(tmp_path, sources, url))]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not _committed(s3_server, url, kill_in) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run finished before it could be killed: {proc.stderr.read()[-2000:]}"
    done = {k: _committed(s3_server, url, k) for k in ("map", "reduce", "df", "count", "write")}
    assert 0 < len(done[kill_in]) < 5  # killed mid-pass (5 input partitions)
    assert not storage.exists(f"{url}/manifest.json")
    assert storage.exists(f"{url}/.mine_labels.lock")  # the dead driver's lock: the rerun takes it over (pid gone)
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "took over the output lock" in rerun.stderr
    assert s3_output_bytes(s3_server, url) == dataset(files)
    ran = json.loads(storage.read_bytes(f"{url}/report/stats.json"))["distributed"]["passes"]
    for kind, names in done.items():  # the rerun redid exactly the tasks without a commit marker at the kill
        assert ran[kind]["already_done"] == len(names), (kind, names)
        assert ran[kind]["ran"] == ran[kind]["tasks"] - len(names)
    assert sum(len(v) for v in done.values()) > 0 and ran[kill_in]["ran"] > 0


# ------------------------------------------------------------------------------------- commits and the lock
def test_a_late_attempt_never_replaces_a_committed_task(s3_bucket):
    """Two attempts of one task (a survivor of a killed run, and the rerun's): the first to commit wins, the late
    one's files are never read and its prefix is removed; readers follow the marker to the winner's files."""
    folder = f"s3://{s3_bucket}/out/_work/fp/map/p000000"
    late, first = store.TaskFiles(folder).open(), store.TaskFiles(folder).open()
    for files, text in ((late, b"stale\n"), (first, b"fresh\n")):
        Path(files.path("units.jsonl")).write_bytes(text)
    assert Path(late.dir).parent == Path(tempfile.gettempdir())  # staged on this node's disk ($TMPDIR)
    first.commit({"read": 1})
    assert passes.done_path(f"s3://{s3_bucket}/out/_work/fp", "map", 0) == f"{folder}/commit.json"
    assert store.committed([f"{folder}/commit.json", f"{folder[:-1]}1/commit.json"]) == {f"{folder}/commit.json"}
    winner = store.committed_folder(folder)
    late.commit({"read": 2})
    assert store.committed_folder(folder) == winner
    assert store.read_range(f"{winner}/units.jsonl") == b"fresh\n"
    assert passes.read_stats(f"s3://{s3_bucket}/out/_work/fp", "map", 0) == {"read": 1}
    attempts = {str(k).split("/")[-2] for k in storage.glob(folder, "*/*")}
    assert attempts == {winner.rsplit("/", 1)[1]}  # the late attempt's prefix is gone
    assert not os.path.exists(late.dir) and not os.path.exists(first.dir)


def test_a_commit_whose_retried_marker_put_finds_its_own_marker_keeps_its_files(s3_bucket, monkeypatch):
    """An exclusive PUT that reached the store before a transient error is retried and fails its condition: the
    marker then names this very attempt, whose files must stay (deleting them would leave a marker naming nothing)."""
    folder = f"s3://{s3_bucket}/out/_work/fp/count/r000000"
    monkeypatch.setattr(store.secrets, "token_hex", lambda n: "f" * (2 * n))
    storage.write_bytes(f"{folder}/commit.json", b'{"files":"a' + b"f" * 16 + b'"}')  # "its first try"
    files = store.TaskFiles(folder).open()
    Path(files.path("counts.npz")).write_bytes(b"npz")
    files.commit({"seconds": 0})
    assert store.read_range(f"{store.committed_folder(folder)}/counts.npz") == b"npz"


def test_work_objects_are_read_whole_or_by_byte_range_even_when_empty(s3_bucket):
    """A reduce partition that received no sample writes an empty ``samples.jsonl``: reading it whole must give no
    record (a ranged GET of an empty object is answered 416), and an empty range needs no request."""
    url = f"s3://{s3_bucket}/w"
    storage.write_bytes(f"{url}/empty.jsonl", b"")
    storage.write_bytes(f"{url}/two.jsonl", b'[1]\n["b"]\n')
    assert list(store.read_lines(f"{url}/empty.jsonl")) == []
    assert list(store.read_lines(f"{url}/empty.jsonl", 0, 0)) == []
    assert list(store.read_lines(f"{url}/two.jsonl")) == [[1], ["b"]]
    assert list(store.read_lines(f"{url}/two.jsonl", 4, 10)) == [["b"]]


def test_a_rerun_with_another_config_uses_its_own_work_prefix(s3_bucket):
    """Work files live under a prefix per config and input listing: the prefixes of other configs are removed, and
    a task of an old config that commits late lands in its own prefix, which the new run never reads."""
    from labels.pipeline import _prepare_work

    work = f"s3://{s3_bucket}/mined/_work"
    old = _prepare_work(work, {"vocab": {"min_score": 0.3}}, [])
    straggler = store.TaskFiles(passes.task_dir(old, "map", 0)).open()  # an old-config task, still running
    assert _prepare_work(work, {"vocab": {"min_score": 0.3}}, []) == old  # same config: the same prefix, kept
    new = _prepare_work(work, {"vocab": {"min_score": 0.5}}, [])
    # the old prefix is gone; the new one holds only its record of the inputs' versions
    assert new != old and new.startswith(work + "/") and [str(p).rstrip("/") for p in storage.listdir(work)] == [new]
    straggler.commit({"read": 1})  # commits after the new run started
    assert store.committed([passes.done_path(new, "map", 0)]) == set()
    assert store.committed([passes.done_path(old, "map", 0)]) == {passes.done_path(old, "map", 0)}


def test_a_second_driver_on_an_s3_output_in_use_is_refused(s3_bucket):
    url = f"s3://{s3_bucket}/mined"
    first = lifetime.ObjectLock(url)
    fence = first.acquire()
    try:
        with pytest.raises(lifetime.OutputBusy, match=rf"another mining run \(pid {os.getpid()} on "):
            lifetime.ObjectLock(url).acquire()
        assert lifetime.fenced_call(fence, lambda: "ran") == "ran"
    finally:
        first.release()
    assert not storage.exists(f"{url}/.mine_labels.lock")
    with pytest.raises(lifetime.StaleRun):  # the run ended: a task still holding its fence writes nothing
        lifetime.fenced_call(fence, lambda: "ran")


def test_a_dead_drivers_lock_is_taken_over_and_the_loser_stops(s3_bucket):
    """On this host a dead pid frees the lock at once; from another host, a lock whose heartbeat stays still for
    the stale time is taken over by compare-and-swap; the old holder's next heartbeat finds it taken, and it stops
    (``check``) without deleting the new holder's lock."""
    url = f"s3://{s3_bucket}/mined"
    lock_url = f"{url}/.mine_labels.lock"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(gone.stdout), "host": socket.gethostname(), "token": "old", "started": "then"}
    storage.write_bytes(lock_url, json.dumps(record).encode())
    mine = lifetime.ObjectLock(url)
    t0 = time.monotonic()
    mine.acquire()
    assert time.monotonic() - t0 < 5 and lifetime.ObjectLock.holder(lock_url)["pid"] == os.getpid()
    mine.release()

    holder = lifetime.ObjectLock(url, heartbeat_s=0.3)
    holder.acquire()
    holder._record["host"] = "elsewhere"  # from its next heartbeat on, a driver on another host
    time.sleep(0.8)
    with pytest.raises(lifetime.OutputBusy, match="heartbeat is alive"):
        lifetime.ObjectLock(url, heartbeat_s=0.3, stale_s=1.5).acquire()
    holder._stop.set()  # its heartbeat stops (a frozen or cut-off driver); its lock object stays
    holder._thread.join()
    taker = lifetime.ObjectLock(url, heartbeat_s=0.3, stale_s=1.5)
    t0 = time.monotonic()
    taker.acquire()
    assert 1.5 <= time.monotonic() - t0 < 10
    holder._stop.clear()
    holder._thread = threading.Thread(target=holder._beat, daemon=True)
    holder._thread.start()  # it wakes up: its compare-and-swap fails
    deadline = time.monotonic() + 10
    while holder.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(lifetime.OutputBusy, match="another run took over"):
        holder.check()
    holder.release()
    assert lifetime.ObjectLock.holder(lock_url)["token"] == taker._record["token"]  # not deleted by the loser
    taker.release()
