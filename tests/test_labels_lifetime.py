"""Who may write a mining output, how many workers a run starts, and what a damaged input tar costs: known answers on
small inputs, in one process (the kill -9 tests, multi-process, are in test_labels_distributed.py)."""

from __future__ import annotations

import fcntl
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from configs.labels_schema import RunSettings, load_labels_config
from labels import lifetime
from labels.engine import Engine
from labels.pipeline import run
from labels.sources import InputError
from labels.sources.img2dataset import iter_img2dataset
from tests.fixtures_labels import img2dataset_samples, labels_config, write_tar

REPO = Path(__file__).resolve().parents[1]
I2D = {"type": "img2dataset", "fields": {"tags": "keywords", "title": "title"}}


def member_offset(tar: Path, name: str) -> int:
    """Byte offset of member ``name``'s header in ``tar``."""
    with tarfile.open(tar) as tf:
        return tf.getmember(name).offset


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder``: relative path -> (size, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------------------- worker count
def test_workers_default_to_the_cpus_this_process_may_run_on(monkeypatch):
    assert Engine("local").workers == min(len(os.sched_getaffinity(0)), os.cpu_count())
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # a 16-core host ...
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5, 7, 9})  # ... of which taskset/a cpuset gives 5
    assert Engine("local").workers == 5
    assert Engine("local", None).workers == 5 and Engine("ray").workers == 5
    assert Engine("local", 0).workers == 0 and Engine("local", 3).workers == 3  # 0: in the driver; N: N
    assert RunSettings().workers is None and RunSettings().on_bad_input == "skip"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "labels").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_label_configs_start_one_worker_per_available_cpu(path):
    """A preset pinning a worker count (8 on a 2-core machine: 4.3 GB) is wrong on most machines."""
    assert load_labels_config(path).run.workers is None


def test_run_workers_and_on_bad_input_are_validated(tmp_path):
    from configs.compose import ConfigError

    with pytest.raises(ConfigError, match=r"run\.workers': must be >= 0 \(or null: the CPUs available\)"):
        labels_config(tmp_path, [{**I2D, "path": str(tmp_path)}], ["run.workers=-1"])
    with pytest.raises(ConfigError, match=r"run\.on_bad_input': is not skip\|fail"):
        labels_config(tmp_path, [{**I2D, "path": str(tmp_path)}], ["run.on_bad_input=ignore"])
    assert labels_config(tmp_path, [{**I2D, "path": str(tmp_path)}], ["run.workers=null"]).run.workers is None


# ---------------------------------------------------------------------------------------- damaged tars
@pytest.mark.parametrize(
    "damage, cut_in, kept, reason",
    [
        # cut inside the second member of sample 4: sample 3 is complete (sample 4's first member was read whole)
        ("truncate", ("000000004.json", 100), 4, "truncated_tar"),
        # cut inside sample 4's first member (header or image bytes): sample 3 might have had more members, so it is
        # not kept either
        ("truncate", ("000000004.jpg", 100), 3, "truncated_tar"),
        ("truncate", ("000000004.jpg", 600), 3, "truncated_tar"),
        # a corrupt header (checksum) in the middle of the tar
        ("corrupt", ("000000004.jpg", 10), 3, "corrupt_tar"),
    ],
)
def test_a_damaged_tar_yields_its_intact_samples_and_is_recorded(tmp_path, damage, cut_in, kept, reason):
    tar = write_tar(tmp_path / "00000.tar", img2dataset_samples(8))
    data = bytearray(tar.read_bytes())
    at = member_offset(tar, cut_in[0]) + cut_in[1]
    if damage == "truncate":
        data = data[:at]
    else:
        data[at] ^= 0xFF
    tar.write_bytes(bytes(data))
    bad: list = []
    units = list(iter_img2dataset(str(tmp_path), bad_inputs=bad))
    assert [u.uid for u in units] == [f"00000.tar:{i:09d}" for i in range(kept)]
    assert all(u.data and u.signals["description"] for u in units)  # whole samples: image and caption
    assert [(b.input, b.reason, b.samples_kept) for b in bad] == [(str(tar), reason, kept)]
    with pytest.raises(InputError, match=r"cannot read tar .*00000\.tar.*run\.on_bad_input=skip"):
        list(iter_img2dataset(str(tmp_path)))


def test_an_unreadable_tar_is_recorded(tmp_path):
    write_tar(tmp_path / "00000.tar", img2dataset_samples(3))
    bad: list = []
    units = list(
        iter_img2dataset(str(tmp_path), tars=[str(tmp_path / "00000.tar"), str(tmp_path / "gone.tar")], bad_inputs=bad)
    )
    assert len(units) == 3
    assert [(b.input, b.reason, b.samples_kept) for b in bad] == [(str(tmp_path / "gone.tar"), "unreadable_tar", 0)]


def _corpus(src: Path, truncated: bool) -> None:
    """Tars 0 and 2 intact; tar 1 holds samples 10..17 cut after sample 15's json member, before its caption
    (truncated), or is the intact tar of samples 10..14 (the samples the truncated one keeps)."""
    write_tar(src / "00000.tar", img2dataset_samples(10))
    full = write_tar(src / "00001.tar", img2dataset_samples(8, offset=10))
    if truncated:
        cut = member_offset(full, "000000015.json") + 700
        full.write_bytes(full.read_bytes()[:cut])
    else:
        write_tar(src / "00001.tar", img2dataset_samples(5, offset=10))
    write_tar(src / "00002.tar", img2dataset_samples(6, offset=18))


def _fingerprint(result) -> str:
    return json.loads(Path(result.manifest_path).read_text())["input_fingerprint"]


def _dataset(out: Path) -> tuple[dict, dict[str, bytes]]:
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.suffix == ".tar"}
    return json.loads((out / "manifest.json").read_text()), files


def test_a_truncated_tar_is_skipped_counted_and_named_and_its_intact_samples_kept(tmp_path):
    src = tmp_path / "i2d"
    _corpus(src, truncated=True)
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], out="skip")
    result = run(cfg)
    c = result.counts
    assert c["read"] == 10 + 5 + 6 == c["written"] + sum(c["skipped"].values())
    assert c["skipped_inputs"] == {"truncated_tar": 1}
    [bad] = c["bad_inputs"]
    assert bad["input"] == str(src / "00001.tar") and bad["reason"] == "truncated_tar" and bad["samples_kept"] == 5
    assert "truncated tar" in bad["error"]
    manifest, shards = _dataset(Path(cfg.output))
    assert manifest["counts"] == c
    parts = [json.loads(x) for x in (Path(cfg.output) / "report" / "partitions.jsonl").read_text().splitlines()]
    assert [p.get("bad_inputs", []) for p in parts] == [[], [bad], []]
    # The same dataset as from an intact tar holding just the samples before the damage; the manifest differs only
    # by the record of the damage (counts, and the input fingerprint, which covers it).
    _corpus(src, truncated=False)
    clean = labels_config(tmp_path, [{**I2D, "path": str(src)}], out="clean")
    clean_result = run(clean)
    clean_manifest, clean_shards = _dataset(Path(clean.output))
    assert shards == clean_shards
    for m in (manifest, clean_manifest):
        m["counts"].pop("bad_inputs", None), m["counts"].pop("skipped_inputs", None)
        m.pop("input_fingerprint")
        m["pipeline_config"].pop("output")
    assert manifest == clean_manifest
    assert clean_result.counts == {"read": 21, "written": c["written"], "skipped": c["skipped"]}


def test_a_rerun_after_the_damaged_tar_is_downloaded_again_reads_the_new_tar(tmp_path, caplog):
    # The usual fix for a partial download: fetch the tar again and rerun into the same output. The work files of the
    # first run (kept: run.keep_work, or a run killed before its end) were made from the damaged tar; a rerun must not
    # reuse them (it did: the work folder was keyed by the config and the input names only, so the repaired tar was
    # silently ignored and still reported damaged).
    src = tmp_path / "i2d"
    _corpus(src, truncated=True)
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true"], out="again")
    assert run(cfg).counts["skipped_inputs"] == {"truncated_tar": 1}
    write_tar(src / "00001.tar", img2dataset_samples(8, offset=10))  # downloaded again, whole
    with caplog.at_level("WARNING", logger="labels.pipeline"):
        result = run(cfg)
    assert f"1 input(s) changed since the work files in {cfg.output}" in caplog.text
    assert f"later pass are redone: {src / '00001.tar'}" in caplog.text
    passes = result.stats["distributed"]["passes"]
    assert (passes["map"]["already_done"], passes["map"]["ran"]) == (2, 1)  # only the repaired tar is read again
    assert passes["reduce"]["already_done"] == passes["write"]["already_done"] == 0
    assert result.counts["read"] == 10 + 8 + 6 and "bad_inputs" not in result.counts
    fresh = labels_config(tmp_path, [{**I2D, "path": str(src)}], out="fresh")
    fresh_result = run(fresh)
    assert _dataset(Path(cfg.output))[1] == _dataset(Path(fresh.output))[1]
    assert result.counts == fresh_result.counts


def test_a_rerun_killed_while_it_drops_the_work_of_a_changed_input_still_redoes_every_later_pass(tmp_path, monkeypatch):
    # Dropping the work of a changed input removed its map output first and the later passes after: a rerun killed in
    # between found no map output of the changed input (so nothing "stale"), kept the later passes made from the old
    # tar, and wrote the repaired tar's samples from them (old byte offsets into the new tar) without a word.
    import storage

    src = tmp_path / "i2d"
    _corpus(src, truncated=True)
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true"], out="again")
    run(cfg)
    write_tar(src / "00001.tar", img2dataset_samples(8, offset=10))  # downloaded again, whole
    real_remove = storage.remove
    removed: list[str] = []

    class Killed(BaseException):
        pass

    def remove_then_die(url, *a, **k):
        if removed:
            raise Killed(str(url))
        removed.append(str(url))
        return real_remove(url, *a, **k)

    monkeypatch.setattr(storage, "remove", remove_then_die)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.undo()
    result = run(cfg)
    fresh = labels_config(tmp_path, [{**I2D, "path": str(src)}], out="fresh")
    fresh_result = run(fresh)
    assert result.counts == fresh_result.counts
    assert _dataset(Path(cfg.output))[1] == _dataset(Path(fresh.output))[1]


def test_an_input_rewritten_with_the_same_size_is_read_again_on_a_rerun(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(6))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.keep_work=true"])
    before = _fingerprint(run(cfg))
    tar = src / "00000.tar"
    size, mtime = tar.stat().st_size, tar.stat().st_mtime_ns
    tar.write_bytes(tar.read_bytes().replace(b"a black cat on a sofa", b"a black dog on a sofa"))
    os.utime(tar, ns=(mtime, mtime + 10**9))  # a coarse clock could give the rewrite its old time; not this test
    assert tar.stat().st_size == size
    again = _fingerprint(run(cfg))
    fresh = _fingerprint(run(labels_config(tmp_path, [{**I2D, "path": str(src)}], out="fresh")))
    assert again == fresh != before


def test_an_input_changed_during_the_run_stops_it_naming_the_input(tmp_path, monkeypatch):
    from labels import pipeline

    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(6))
    write_tar(src / "00001.tar", img2dataset_samples(6, offset=6))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}])
    labels_step = pipeline._Driver.labels

    def rewrite_then_label(self, *a, **k):  # img2dataset appending to a tar the map pass has read
        write_tar(src / "00001.tar", img2dataset_samples(9, offset=6))
        return labels_step(self, *a, **k)

    monkeypatch.setattr(pipeline._Driver, "labels", rewrite_then_label)
    with pytest.raises(InputError, match=r"00001\.tar changed while the run read it"):
        run(cfg)
    assert not (Path(cfg.output) / "manifest.json").exists()
    monkeypatch.undo()
    assert run(cfg).counts["read"] == 6 + 9  # the rerun starts afresh from the inputs as they are now


def test_tars_on_a_web_host_are_mined_like_local_ones(tmp_path):
    # A brace range of https:// tars (a dataset published on a web host). The run's input versions were read from the
    # folder's listing, which a web host gives without sizes or ETags (or not at all), and each task's check from the
    # object's own HEAD: every input looked changed, and every map task failed.
    from tests.fixtures_http import serve_folder

    src = tmp_path / "web" / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(6))
    write_tar(src / "00001.tar", img2dataset_samples(6, offset=6))
    local = run(labels_config(tmp_path, [{**I2D, "path": str(src / "{00000..00001}.tar")}], out="local"))
    with serve_folder(tmp_path / "web") as base:
        cfg = labels_config(tmp_path, [{**I2D, "path": f"{base}/i2d/{{00000..00001}}.tar"}], out="web")
        assert run(cfg).counts == local.counts
    assert _dataset(Path(cfg.output))[1] == _dataset(tmp_path / "local")[1]


def test_on_bad_input_fail_stops_the_run_naming_the_tar(tmp_path):
    src = tmp_path / "i2d"
    _corpus(src, truncated=True)
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["run.on_bad_input=fail"])
    with pytest.raises(InputError) as err:
        run(cfg)
    msg = str(err.value)
    assert "\n" not in msg and f"cannot read tar {src / '00001.tar'}" in msg and "truncated tar" in msg
    assert not (Path(cfg.output) / "manifest.json").exists()


def test_an_img2dataset_source_limit_counts_across_tars(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(5))
    write_tar(src / "00001.tar", img2dataset_samples(5, offset=5))
    result = run(labels_config(tmp_path, [{**I2D, "path": str(src), "limit": 7}]))
    assert result.counts["read"] == 7


# ---------------------------------------------------------------------------------------- the output lock
def _small_run(tmp_path: Path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(8))
    return labels_config(tmp_path, [{**I2D, "path": str(src)}])


def test_a_second_run_on_a_held_output_is_refused_naming_the_holder_and_writes_nothing(tmp_path):
    cfg = _small_run(tmp_path)
    out = Path(cfg.output)
    holder = lifetime.OutputLock(str(out))
    assert holder.acquire() is not None  # this process plays the run in progress
    before = files_under(out)
    try:
        with pytest.raises(InputError, match=rf"being written by another mining run \(pid {os.getpid()} on "):
            run(cfg)
        assert files_under(out) == before
    finally:
        holder.release()
    assert run(cfg).counts["written"] == 8  # released: the next run proceeds


def test_a_new_run_waits_for_tasks_of_an_earlier_run_to_end(tmp_path, monkeypatch):
    """A task of an earlier run (this test holds its shared task lock) still writing: the new run waits for it."""
    cfg = _small_run(tmp_path)
    out = Path(cfg.output)
    out.mkdir(parents=True)
    fd = os.open(out / lifetime.TASK_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    monkeypatch.setattr(lifetime, "SURVIVOR_WAIT_S", 0.3)
    with pytest.raises(InputError, match=rf"tasks of an earlier run still write to .*pids on this host: {os.getpid()}"):
        run(cfg)
    monkeypatch.setattr(lifetime, "SURVIVOR_WAIT_S", 30.0)
    ended = []
    threading.Timer(0.5, lambda: (ended.append(time.monotonic()), os.close(fd))).start()
    result = run(cfg)
    assert ended and result.counts["written"] == 8


def test_a_task_of_a_run_that_lost_the_output_writes_nothing(tmp_path):
    out = tmp_path / "out"
    first = lifetime.OutputLock(str(out))
    stale = first.acquire()
    first.release()  # that driver died (the kernel drops its lock the same way)
    second = lifetime.OutputLock(str(out))
    fence = second.acquire()
    calls = []
    try:
        with pytest.raises(lifetime.StaleRun, match="nothing written"):
            lifetime.fenced_call(stale, calls.append, "stale")
        assert lifetime.fenced_call(fence, calls.append, "current") is None
    finally:
        second.release()
    assert calls == ["current"]
    with pytest.raises(lifetime.StaleRun):  # after the run: no task may write either
        lifetime.fenced_call(fence, calls.append, "late")


def test_a_worker_that_dies_between_passes_does_not_end_the_run(tmp_path):
    """The local pool is kept from pass to pass: a worker killed while it idles breaks the pool before the next pass
    is handed out (``submit`` raises BrokenProcessPool, seen once in CI); that pass runs on a new pool, nothing
    counted as a failure."""
    import signal

    from labels.engine import Task

    eng = Engine("local", 2, progress=False)
    try:
        first = [Task(f"a{i}", str(tmp_path / f"a{i}"), (tmp_path / f"a{i}",)) for i in range(3)]
        eng.run_pass("first", Path.touch, first)
        victim = next(iter(eng._executor._processes))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not eng._executor._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng._executor._broken, "the pool did not notice its dead worker"
        second = [Task(f"b{i}", str(tmp_path / f"b{i}"), (tmp_path / f"b{i}",)) for i in range(3)]
        stats = eng.run_pass("second", Path.touch, second)
    finally:
        eng.close()
    assert stats.ran == 3 and stats.failed == [] and all((tmp_path / f"b{i}").exists() for i in range(3))
