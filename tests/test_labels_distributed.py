"""The per-shard passes under both engines, killed and rerun, with bad shards: known answers on small inputs.

Ray runs for real (local mode, one module-scoped session with 2 CPUs: its start-up costs seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from labels.pipeline import run
from labels.sources import InputError
from tests.fixtures_labels import img2dataset_samples, jpeg_bytes, labels_config, read_shards, svg_bytes, write_tar

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
I2D = {"type": "img2dataset", "fields": {"tags": "keywords", "title": "title"}}
SMALL_PARTS = ["run.partition_size=2", "run.reduce_partitions=3"]


def corpus(root: Path) -> list[dict]:
    """Three tars (one sample of tar 2 is a byte copy of one in tar 0, with other text) + an SVG folder."""
    src = root / "i2d"
    t0 = img2dataset_samples(12)
    t2 = img2dataset_samples(8, offset=20)
    dup = {"__key__": "dup000001", "jpg": t0[3]["jpg"], "txt": "a shiny apple", "json": {"tags": ["apple", "shiny"]}}
    write_tar(src / "00000.tar", t0)
    write_tar(src / "00001.tar", img2dataset_samples(8, offset=12))
    write_tar(src / "00002.tar", t2[:4] + [dup] + t2[4:])
    svg = root / "svg" / "animals"
    svg.mkdir(parents=True)
    for i, (title, kw) in enumerate(
        [("Cat", ["cat"]), ("Red car", ["car"]), ("Cat", ["cat", "pet"]), ("Dog", ["pet"])]
    ):
        (svg / f"{i}.svg").write_bytes(svg_bytes(title, kw, color=["red", "green", "blue", "gray"][i]))
    return [{**I2D, "path": str(src)}, {"type": "openclipart", "path": str(root / "svg")}]


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file the dataset consists of (shards, manifest, text-only samples), by name; the
    manifest's record of the output folder (its only run-specific entry) reads OUT."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    if "manifest.json" in files:
        files["manifest.json"] = files["manifest.json"].replace(json.dumps(str(out)).encode(), b'"OUT"')
    return files


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}
    )
    yield ray
    ray.shutdown()


def mine_reference(root: Path):
    """An uninterrupted in-process run of the corpus written under ``root``: (root, sources, output bytes, result).
    The reference of this module and of the S3 and lost-node tests."""
    sources = corpus(root)
    cfg = labels_config(root, sources, SMALL_PARTS)
    result = run(cfg)
    return root, sources, output_bytes(Path(cfg.output)), result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return mine_reference(tmp_path_factory.mktemp("ref"))


def test_duplicates_across_input_shards_merge_with_all_texts(reference):
    root, _, files, result = reference
    assert result.counts["read"] == 12 + 8 + 9 + 4
    assert result.counts["skipped"] == {"duplicate_merged": 1}
    m = json.loads(files["manifest.json"])
    urls = [s["url"] for sp in ("train", "val") for s in m["splits"][sp]["shards"]]
    samples = read_shards(root / "out", urls)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == result.counts["written"] == 32
    merged = next(s["json"] for s in samples if "00002.tar:dup000001" in s["json"]["uids"])
    assert merged["uids"] == ["00000.tar:000000003", "00002.tar:dup000001"]  # first unit first (input order)
    assert merged["text"]["description"] == "red apple on the table\na shiny apple"
    assert merged["text"]["keywords"] == ["apple", "fruit", "shiny"]
    # Many small partitions: the report has per-pass task counts and per-partition counts that add up.
    stats = result.stats["distributed"]
    assert stats["input_partitions"] == 3 + 2 and stats["reduce_partitions"] == 3
    assert stats["passes"]["map"]["tasks"] == 5 and stats["passes"]["reduce"]["tasks"] == 3
    parts = [json.loads(x) for x in (root / "out" / "report" / "partitions.jsonl").read_text().split("\n") if x]
    assert [p["read"] for p in parts] == [12, 8, 9, 2, 2]
    assert parts[2]["skipped"] == {"duplicate_merged": 1}  # charged to the partition of the dropped copy
    assert all(p["read"] == p["written"] + sum(p["skipped"].values()) for p in parts)


def test_local_pool_and_ray_give_byte_identical_outputs(reference, ray_session, tmp_path):
    root, sources, files, _ = reference
    local = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.workers=2"], out="local")
    run(local)
    assert output_bytes(Path(local.output)) == files
    on_ray = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.engine=ray", "run.workers=2"], out="ray")
    result = run(on_ray)
    assert output_bytes(Path(on_ray.output)) == files
    assert result.stats["distributed"]["engine"] == "ray"
    text = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.engine=ray", "run.text_only=true"], out="ray_text")
    run(text)
    text_local = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.text_only=true"], out="local_text")
    run(text_local)
    assert output_bytes(Path(text.output)) == output_bytes(Path(text_local.output))


def test_the_reduce_partition_count_never_changes_the_dataset(reference, tmp_path):
    """Hash partitions only decide which task merges which keys: 1, 3 (the reference) and auto (0: one per input
    partition, here 5) give the same shards and manifest, bar the count the manifest records."""
    root, sources, files, _ = reference
    for n, resolved in ((1, 1), (0, 5)):
        cfg = labels_config(tmp_path, sources, ["run.partition_size=2", f"run.reduce_partitions={n}"], out=f"r{n}")
        result = run(cfg)
        assert result.stats["distributed"]["reduce_partitions"] == resolved
        got = output_bytes(Path(cfg.output))
        manifest = json.loads(got.pop("manifest.json"))
        assert manifest["pipeline_config"]["run"]["reduce_partitions"] == resolved
        manifest["pipeline_config"]["run"]["reduce_partitions"] = 3
        ref = dict(files)
        assert manifest == json.loads(ref.pop("manifest.json"))
        assert got == ref


def _cli_config(tmp_path: Path, sources: list[dict], out: Path, extra: dict) -> Path:
    cfg = {
        "name": "test",
        "output": str(out),
        "sources": sources,
        "vocab": {"min_df": 2},
        "cluster": {"embedder": "ppmi"},
        "image": {"short_side": 32},
        "shards": {"maxcount": 20},
        "split": {"scales": [0.1, 0.5, 1.0], "val_fraction": 0.2},
        "run": {"workers": 0, "progress": False, "partition_size": 2, "reduce_partitions": 3, **extra},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stats_files(work: Path, kind: str) -> set[str]:
    return {p.parent.name for p in (work / kind).glob("*/stats.json")}


@pytest.mark.parametrize("kill_in", ["map", "df", "write"])
def test_kill_9_of_the_driver_then_rerun_is_byte_identical(reference, tmp_path, kill_in):
    _, sources, files, _ = reference
    out = tmp_path / "out"
    cfg = _cli_config(tmp_path, sources, out, {})
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / "_work"
    deadline = time.time() + 120
    while not _stats_files(work, kill_in) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = {k: _stats_files(work, k) for k in ("map", "reduce", "df", "count", "write")}
    assert done[kill_in]  # killed mid-run: some tasks of the pass are complete
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert output_bytes(out) == files
    passes = json.loads((out / "report" / "stats.json").read_text())["distributed"]["passes"]
    for kind, names in done.items():  # the rerun redid none of the tasks complete at the kill
        assert passes[kind]["already_done"] == len(names)
        assert passes[kind]["ran"] == passes[kind]["tasks"] - len(names)


def _forkserver_workers() -> list[int]:
    """Pids of the local pool's workers: children of this process's forkserver child."""

    def children(pid: int) -> list[int]:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
        return out

    for c in children(os.getpid()):
        try:
            if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes():
                return children(c)
        except OSError:
            continue
    return []


def test_a_killed_worker_is_retried_and_the_output_is_unchanged(reference, tmp_path):
    _, sources, files, _ = reference
    cfg = labels_config(tmp_path, sources, [*SMALL_PARTS, "run.workers=2"], out="killed")
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        work = Path(cfg.output) / "_work"
        while not stop.is_set() and not killed:
            workers = _forkserver_workers()
            if workers and (work / "map").exists():
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.001)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        result = run(cfg)
    finally:
        stop.set()
        th.join()
    assert killed, "no worker was seen"
    assert output_bytes(Path(cfg.output)) == files
    assert result.counts["written"] == 32


def test_an_unreadable_shard_is_named_and_retried_on_rerun(tmp_path):
    """run.on_bad_input=fail: the other partitions complete, the run stops naming the tar, the rerun retries it."""
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(10))
    good = write_tar(tmp_path / "good.tar", img2dataset_samples(6, offset=10)).read_bytes()
    (src / "00001.tar").write_bytes(b"\x00garbage, not a tar" * 100)
    write_tar(src / "00002.tar", img2dataset_samples(6, offset=16))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true", "run.on_bad_input=fail"])
    with pytest.raises(InputError, match=r"1 task\(s\) of pass 'map' failed.*00001\.tar"):
        run(cfg)
    work = Path(cfg.output) / "_work"
    assert _stats_files(work, "map") == {"p000000", "p000002"}  # the others completed
    (src / "00001.tar").write_bytes(good)
    result = run(cfg)
    assert result.counts == {"read": 22, "written": 22, "skipped": {}}
    assert result.stats["distributed"]["passes"]["map"] | {"wall_s": 0, "task_s": 0, "peak_worker_rss_mb": 0} == {
        "tasks": 3,
        "already_done": 2,
        "ran": 1,
        "retries": 0,
        "failed": [],
        "wall_s": 0,
        "task_s": 0,
        "peak_worker_rss_mb": 0,
    }


def test_config_change_discards_the_work_folder(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(12))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true"])
    run(cfg)
    again = run(cfg)
    assert again.stats["distributed"]["passes"]["map"]["already_done"] == 1  # finished work is reused
    changed = run(labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true", "vocab.min_score=0.5"]))
    assert changed.stats["distributed"]["passes"]["map"]["already_done"] == 0
    # Execution keys do not change what is computed: the work is reused.
    workers = run(
        labels_config(
            tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true", "vocab.min_score=0.5", "run.workers=1"]
        )
    )
    assert workers.stats["distributed"]["passes"]["write"]["already_done"] == 1
    assert jpeg_bytes((1, 2, 3))  # fixture import used


# ---------------------------------------------------------------------------------------- processes of a killed run
def _process_tree(root: int) -> dict[int, int]:
    """Live processes below ``root``: pid -> start time (a pid and its start time name one process)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                table[int(d)] = (int(fields[1]), int(fields[19]))
    found, stack = {}, [root]
    while stack:
        parent = stack.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                stack.append(pid)
    return found


def _still_alive(procs: dict[int, int]) -> list[str]:
    alive = []
    for pid, start in procs.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(errors="replace")
        except OSError:
            continue
        if int(fields[19]) == start and fields[0] != "Z":
            alive.append(f"{pid} {cmd}")
    return alive


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_kill_9_of_the_driver_leaves_no_process_of_the_run(reference, tmp_path, engine):
    """Every process the driver started (pool workers, forkserver, resource tracker; Ray's GCS, raylet, agents and
    workers) is gone 5 s after kill -9 of the driver; the rerun completes the same dataset."""
    if engine == "ray":
        pytest.importorskip("ray")
    _, sources, files, _ = reference
    out = tmp_path / "out"
    cfg = _cli_config(tmp_path, sources, out, {"engine": engine, "workers": 2})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # Ray: a local instance, started by the driver
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(cfg)]
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    started: dict[int, int] = {}
    try:
        deadline = time.time() + 240
        while not _stats_files(out / "_work", "map") and proc.poll() is None and time.time() < deadline:
            started.update(_process_tree(proc.pid))
            time.sleep(0.01)
        started.update(_process_tree(proc.pid))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
        assert len(started) >= 3, started  # the pool (forkserver + 2 workers) or Ray's processes were running
        time.sleep(5)
        assert _still_alive(started) == []
    finally:
        for line in _still_alive(started):  # never leave a survivor behind, even when the test fails
            os.kill(int(line.split()[0]), signal.SIGKILL)
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert output_bytes(out) == files


def test_a_second_driver_on_an_output_in_use_is_refused_and_writes_nothing(reference, tmp_path):
    _, sources, files, _ = reference
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(_cli_config(tmp_path, sources, out, {}))]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _stats_files(out / "_work", "map") and first.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # frozen mid-run, holding the output
        assert first.poll() is None, "the first run finished before the second started"
        before = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is being written by another mining run (pid {first.pid} on " in second.stderr
        assert {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert output_bytes(out) == files


def test_web_captions_with_templates_and_a_series_are_byte_identical_on_every_engine(ray_session, tmp_path):
    """The generated web-caption corpus (templates, dates, a series of near-identical re-saves): the local pool, Ray
    and another reduce-partition count give the same shards and manifest; templates and the series cap apply."""
    from tests.fixtures_web import web_corpus

    web_corpus(tmp_path / "web", n=150, series=20)
    src = [{"type": "img2dataset", "path": str(tmp_path / "web"), "fields": {"title": "title", "uploader": "author"}}]
    extra = ["signals.exclude=[author]", "vocab.min_df=3"]
    ref = labels_config(tmp_path, src, [*extra, "run.reduce_partitions=3"], out="ref")
    result = run(ref)
    assert result.counts["skipped"]["series_cap"] >= 1 and result.stats["dropped"]["templates"]["words"]
    files = output_bytes(Path(ref.output))
    local = labels_config(tmp_path, src, [*extra, "run.reduce_partitions=3", "run.workers=2"], out="local")
    run(local)
    assert output_bytes(Path(local.output)) == files
    on_ray = labels_config(tmp_path, src, [*extra, "run.reduce_partitions=3", "run.engine=ray"], out="ray")
    run(on_ray)
    assert output_bytes(Path(on_ray.output)) == files
    one = labels_config(tmp_path, src, [*extra, "run.reduce_partitions=1"], out="one")
    run(one)
    got, want = output_bytes(Path(one.output)), dict(files)
    manifest, manifest_ref = json.loads(got.pop("manifest.json")), json.loads(want.pop("manifest.json"))
    manifest["pipeline_config"]["run"]["reduce_partitions"] = 3
    assert got == want and manifest == manifest_ref
