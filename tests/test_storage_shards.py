"""Shards and manifest on object storage (issue 24), against a real S3 server (moto_server over HTTP): a training run
reading them from a bucket consumes exactly the batches it consumes from local disk; a shard missing from the bucket
is a counted skip naming its URL; a server restart mid-epoch is retried through; the optional shard cache
(``data.cache_dir``) serves later epochs from local disk and stays under ``data.cache_limit_gb``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest

from datamodules.resume import EpochClock, PassLoader
from datamodules.weak_label import WeakLabelSource
from tests.fixtures_data import compose_cfg, make_dataset
from tests.fixtures_http import serve_folder
from tests.fixtures_reliability import train_args
from tests.fixtures_s3 import clear_fs_cache
from tracking.sample_keys import read_records


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """160 train samples in 10 shards of 16, 16 val samples, 16 px images, on local disk."""
    return make_dataset(
        tmp_path_factory.mktemp("shards"), n_train=160, n_val=16, shard_size=16, scales=(1.0,), img_size=16
    )


def upload(server, shards, bucket: str | None = None) -> dict:
    """The fixture's shard folder copied to a fresh bucket under ``data/``: ``{"bucket", "manifest", "keys"}``."""
    bucket = bucket or server.new_bucket()
    root = Path(shards["manifest"]).parent
    client = server.client()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"data/{path.relative_to(root).as_posix()}")
    return {"bucket": bucket, "manifest": f"s3://{bucket}/data/manifest.json", "keys": server.keys(bucket, "data/")}


def _pass_keys(cfg, epoch: int = 0) -> tuple[list[list[str]], PassLoader]:
    loader = PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock())
    return [b["key"] for b in loader.run_pass(epoch, 0)], loader


def _shard_gets(server, bucket: str) -> int:
    """GET requests for train shard objects of ``bucket`` in the server's request log so far."""
    text = server.log.read_text(errors="replace")
    return len(re.findall(rf'"GET /{bucket}/data/[^" ]*train[^" ]*\.tar', text))


@pytest.mark.slow  # end to end, or stops and restarts the server process
def test_training_reads_shards_and_manifest_from_the_bucket_like_local_disk(shards, s3_server, tmp_path):
    remote = upload(s3_server, shards)
    records = {}
    for name, manifest in (("local", shards["manifest"]), ("s3", remote["manifest"])):
        import train

        keys = tmp_path / f"{name}.keys.jsonl"
        args = train_args(manifest, tmp_path / name, "run", "trainer.max_steps=6", f"data.record_keys={keys}")
        metrics = train.main(args)
        assert metrics["trainer/global_step"] == 6
        assert not any(k.startswith("data/weak_label/") for k in metrics), metrics  # no skip of any kind
        records[name] = [r["keys"]["weak_label"] for r in read_records(keys)]
    assert len(records["local"]) == 6 and all(len(b) == 8 for b in records["local"])
    assert records["s3"] == records["local"]


def test_a_shard_missing_from_the_bucket_is_a_counted_skip_naming_its_url(shards, s3_server, caplog):
    remote = upload(s3_server, shards)
    gone = next(k for k in remote["keys"] if "train" in k and k.endswith(".tar"))
    s3_server.client().delete_object(Bucket=remote["bucket"], Key=gone)
    url = f"s3://{remote['bucket']}/{gone}"
    with caplog.at_level(logging.WARNING, logger="datamodules.stages"):
        batches, loader = _pass_keys(compose_cfg(remote["manifest"]))
    # The pass needs 160 samples of 144 readable ones, so its slot comes round to the missing shard again.
    reads = loader.counts["shard_read_error"]
    assert reads >= 1 and loader.counts["samples_lost"] == 16 * reads  # the manifest's count for the missing shard
    assert any("shard_read_error" in r.getMessage() and url in r.getMessage() for r in caplog.records)
    # The pass still has its full length (other shards fill the quota) and never yields a sample of the lost shard.
    assert len(batches) == 40 and all(len(b) == 4 for b in batches)


@pytest.mark.slow  # end to end, or stops and restarts the server process
def test_a_server_restart_mid_epoch_is_retried_and_the_epoch_is_unchanged(shards, s3_server, monkeypatch, caplog):
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "60")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would hide a short outage from ours
    clear_fs_cache()  # s3fs clients read the setting when they are made
    remote = upload(s3_server, shards)
    expected, _ = _pass_keys(compose_cfg(shards["manifest"]))
    loader = PassLoader("weak_label", WeakLabelSource(compose_cfg(remote["manifest"])).train_source(0, 1), EpochClock())
    got, restart = [], None
    caplog.set_level(logging.WARNING, logger="storage.retry")
    for i, batch in enumerate(loader.run_pass(0, 0)):
        got.append(batch["key"])
        if i == 3:  # the server goes away mid-epoch and comes back 3 s later with the same objects
            s3_server.stop(keep=True)
            restart = threading.Timer(3.0, s3_server.start)
            restart.start()
    restart.join()
    clear_fs_cache()  # later tests get clients with the default retries
    assert s3_server.proc is not None and s3_server.proc.poll() is None
    retries = [r.getMessage() for r in caplog.records if r.name == "storage.retry"]
    assert any(f"s3://{remote['bucket']}/data/train" in m for m in retries), retries  # the outage was hit, and retried
    assert dict(loader.counts) == {}
    assert got == expected


@pytest.mark.slow  # end to end, or stops and restarts the server process
def test_a_read_broken_mid_shard_reopens_the_object_at_its_byte(shards, s3_server, monkeypatch, caplog):
    from datamodules.storage import RemoteStream

    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "60")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_fs_cache()
    remote = upload(s3_server, shards)
    key = next(k for k in remote["keys"] if k.endswith(".tar"))
    whole = (Path(shards["root"]) / key.removeprefix("data/")).read_bytes()
    caplog.set_level(logging.WARNING, logger="storage.retry")
    stream = RemoteStream(f"s3://{remote['bucket']}/{key}", block_size=4096)  # one range request per 4 KiB
    head = stream.read(10_000)
    s3_server.stop(keep=True)
    restart = threading.Timer(2.0, s3_server.start)
    restart.start()
    rest = stream.read()
    restart.join()
    clear_fs_cache()
    assert head + rest == whole and len(head) == 10_000 and len(whole) > 20_000
    assert any("read s3://" in r.getMessage() for r in caplog.records if r.name == "storage.retry")


@pytest.mark.slow  # end to end
def test_a_shard_replaced_while_it_is_read_ends_its_stream_instead_of_splicing_two_versions(shards, s3_server):
    # A read that breaks mid-shard reopens the object at its byte. When the object was replaced meanwhile (a dataset
    # rewritten in place), the bytes past that point belong to another tar; they were read as if they continued it.
    from datamodules.storage import ObjectChanged, RemoteStream

    clear_fs_cache()
    remote = upload(s3_server, shards)
    train = [k for k in remote["keys"] if k.endswith(".tar") and "train" in k]
    url = f"s3://{remote['bucket']}/{train[0]}"
    stream = RemoteStream(url, block_size=4096)
    head = stream.read(10_000)
    other = (Path(shards["root"]) / train[1].removeprefix("data/")).read_bytes()
    s3_server.client().put_object(Bucket=remote["bucket"], Key=train[0], Body=other)  # rewritten in place
    broken = stream.file

    def drop(*args):
        raise ConnectionError("connection reset by peer")  # a transient break: the stream reopens the object

    broken.read = drop
    with pytest.raises(ObjectChanged, match=rf"{re.escape(url)} was replaced while it was read .* at byte 10000"):
        stream.read()
    assert len(head) == 10_000
    same = RemoteStream(url, block_size=4096)  # the same break on an object left alone still reads through
    first = same.read(10_000)
    same.file.read = drop
    assert first + same.read() == other
    clear_fs_cache()


def test_the_shard_cache_never_keeps_a_download_that_spans_a_replacement(s3_bucket, tmp_path, monkeypatch):
    """The cache downloads a shard with s3fs's ``get_file``, which resumes a broken download with a Range GET from
    the byte it reached and fetches a large object in concurrent ranged parts, none tied to the version it started
    on: a shard replaced meanwhile came out as the old head and the new tail, served as one tar and kept in the
    cache under the old version's name. Here a download gets the head of the old object and the tail of the new."""
    import fsspec

    from datamodules.storage import ShardOpener

    clear_fs_cache()
    url = f"s3://{s3_bucket}/train-000000.tar"
    fs = fsspec.filesystem("s3")
    fs.pipe_file(url, b"A" * 20480)
    real_get = fs.get_file  # fsspec instances are cached: this is the one the cache downloads with
    spliced: list[str] = []

    def get_file_across_a_replacement(rpath, lpath, **kw):
        if spliced:
            return real_get(rpath, lpath, **kw)
        head = fs.cat_file(rpath, start=0, end=10_000)
        fs.pipe_file(rpath, b"B" * 20480)  # replaced while the download is under way
        spliced.append(rpath)
        Path(lpath).write_bytes(head + fs.cat_file(rpath, start=10_000))

    monkeypatch.setattr(fs, "get_file", get_file_across_a_replacement)
    opener = ShardOpener(cache_dir=str(tmp_path / "cache"))
    with opener(url) as stream:
        assert stream.read() == b"B" * 20480  # the new shard, whole
    assert spliced
    for cached in (tmp_path / "cache" / "shards").iterdir():
        assert cached.read_bytes() == b"B" * 20480
    clear_fs_cache()


@pytest.mark.slow  # end to end, or stops and restarts the server process
def test_a_server_that_stays_down_ends_the_pass_quickly_naming_a_shard_url(shards, s3_server, monkeypatch):
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_fs_cache()
    remote = upload(s3_server, shards)
    batches = PassLoader(
        "weak_label", WeakLabelSource(compose_cfg(remote["manifest"])).train_source(0, 1), EpochClock()
    ).run_pass(0, 0)
    next(batches)
    s3_server.stop(keep=True)
    try:
        start = time.monotonic()
        pattern = rf"store is unreachable: 3 shards in a row .* s3://{remote['bucket']}/data/train-\S+\.tar"
        with pytest.raises(RuntimeError, match=pattern):
            for _ in batches:
                pass
        assert time.monotonic() - start < 60  # three retry deadlines of 1 s, not one per shard of the epoch
    finally:
        s3_server.start()
        clear_fs_cache()


@pytest.mark.parametrize("limit_shards", [None, 3])
def test_the_shard_cache_serves_the_second_epoch_and_stays_under_its_limit(shards, s3_server, tmp_path, limit_shards):
    remote = upload(s3_server, shards)
    sizes = sorted((Path(shards["root"]) / s["url"]).stat().st_size for s in shards["train_shards"])
    limit_gb = 1.0 if limit_shards is None else sum(sizes[-limit_shards:]) / 2**30
    cache = tmp_path / "cache"
    once = "data.weak_label.resampled=false"  # a pass reads each shard exactly once
    cfg = compose_cfg(remote["manifest"], once, f"data.cache_dir={cache}", f"data.cache_limit_gb={limit_gb!r}")
    expected = [_pass_keys(compose_cfg(shards["manifest"], once), epoch)[0] for epoch in (0, 1)]
    before = _shard_gets(s3_server, remote["bucket"])
    first, _ = _pass_keys(cfg, 0)
    after_first = _shard_gets(s3_server, remote["bucket"])
    second, loader = _pass_keys(cfg, 1)
    after_second = _shard_gets(s3_server, remote["bucket"])
    assert [first, second] == expected and dict(loader.counts) == {}
    cached = [p for p in (cache / "shards").iterdir() if p.is_file()]
    if limit_shards is None:
        assert after_first - before == 10  # every shard downloaded once in the first epoch
        assert after_second == after_first  # the second epoch read nothing from the server
        assert len(cached) == 10
    else:
        assert sum(p.stat().st_size for p in cached) <= limit_gb * 2**30
        assert 1 <= len(cached) <= limit_shards
        # Every shard once, plus the next round's first shard the shuffle buffer opens before the pass ends (a cache
        # hit when nothing is evicted); the second epoch downloads again what was evicted.
        assert 10 <= after_first - before <= 11
        assert 10 - limit_shards <= after_second - after_first <= 11
    assert not list((cache / "partial").iterdir())


@pytest.mark.slow  # end to end, or stops and restarts the server process
def test_a_pass_resumed_mid_epoch_from_the_bucket_continues_exactly(shards, s3_server):
    remote = upload(s3_server, shards)
    workers = "data.num_workers=2"  # forked DataLoader workers, each with its own S3 client
    cfg = compose_cfg(remote["manifest"], workers)
    full, loader = _pass_keys(cfg, 1)
    assert full == _pass_keys(compose_cfg(shards["manifest"], workers), 1)[0]
    for k in (3, len(full) - 2):
        resumed = PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock())
        assert [b["key"] for b in resumed.run_pass(1, 0, loader.position(1, 0, k))] == full[k:], f"after {k} batches"


@pytest.fixture()
def http_server(shards):
    """The shard folder served over plain HTTP (``serve_folder``)."""
    with serve_folder(Path(shards["manifest"]).parent) as url:
        yield url


def test_a_pass_reads_shards_and_manifest_from_a_plain_web_host_like_local_disk(shards, http_server):
    """``https://`` / ``http://`` shard sets (a dataset published on a web host) go through the same fsspec path: the
    manifest and every shard over HTTP give the batches of local disk, and a resumed pass continues exactly."""
    workers = "data.num_workers=2"
    cfg = compose_cfg(f"{http_server}/manifest.json", workers)
    full, loader = _pass_keys(cfg, 1)
    assert full == _pass_keys(compose_cfg(shards["manifest"], workers), 1)[0]
    assert not loader.counts  # nothing skipped
    resumed = PassLoader("weak_label", WeakLabelSource(cfg).train_source(0, 1), EpochClock())
    k = len(full) // 2
    assert [b["key"] for b in resumed.run_pass(1, 0, loader.position(1, 0, k))] == full[k:]


def _rewrite_same_size(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` of the same length and a later mtime (a re-labelled shard: tar pads every shard
    to 10 KiB records, so a few changed label bytes rarely change its size)."""
    assert len(data) == path.stat().st_size
    stat = path.stat()
    path.write_bytes(data)
    os.utime(path, (stat.st_atime, stat.st_mtime + 60))


def test_a_shard_replaced_on_a_web_host_while_it_is_read_ends_its_stream_instead_of_splicing(tmp_path):
    """fsspec's HTTP file carries no version in its ``details`` (only name and size), so the reopen after a break
    compared nothing: the bytes of the new shard past the break were read as the rest of the old one."""
    from datamodules.storage import ObjectChanged, RemoteStream

    root = tmp_path / "web"
    root.mkdir()
    shard = root / "train-000000.tar"
    shard.write_bytes(b"A" * 20480)

    def drop(*args):
        raise ConnectionError("connection reset by peer")  # a transient break: the stream reopens the object

    with serve_folder(root, ranges=True) as base:
        url = f"{base}/{shard.name}"
        stream = RemoteStream(url, block_size=4096)
        assert stream.read(10_000) == b"A" * 10_000
        _rewrite_same_size(shard, b"B" * 20480)
        stream.file.read = drop
        with pytest.raises(ObjectChanged, match=rf"{re.escape(url)} was replaced while it was read"):
            stream.read()
        same = RemoteStream(url, block_size=4096)  # the same break on a shard left alone still reads through
        first = same.read(10_000)
        same.file.read = drop
        assert first + same.read() == b"B" * 20480


def test_the_shard_cache_does_not_serve_a_shard_rewritten_on_a_web_host_with_the_same_size(tmp_path):
    """A web host sends no ETag (Python's http.server, many static hosts): the cache keyed the shard by URL and size
    only, so a rewritten shard of the same size was served from the stale copy, silently, every later epoch."""
    from datamodules.storage import ShardOpener

    root = tmp_path / "web"
    root.mkdir()
    shard = root / "train-000000.tar"
    shard.write_bytes(b"A" * 20480)
    opener = ShardOpener(cache_dir=str(tmp_path / "cache"))
    with serve_folder(root) as base:
        with opener(f"{base}/{shard.name}") as stream:
            assert stream.read() == b"A" * 20480
        _rewrite_same_size(shard, b"B" * 20480)
        with opener(f"{base}/{shard.name}") as stream:
            assert stream.read() == b"B" * 20480


def test_local_copy_of_a_checkpoint_rewritten_on_a_web_host_with_the_same_size_is_the_new_one(tmp_path, monkeypatch):
    """``evaluate.py eval.checkpoint=https://...``: consecutive ``last.ckpt`` of one model have the same size
    (torch.save aligns every tensor record), and with no ETag the cached copy of the older one was returned."""
    import storage

    monkeypatch.setenv("STORAGE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "web"
    root.mkdir()
    ckpt = root / "last.ckpt"
    ckpt.write_bytes(b"step 2" * 100)
    with serve_folder(root) as base:
        assert storage.local_copy(f"{base}/last.ckpt").read_bytes() == b"step 2" * 100
        _rewrite_same_size(ckpt, b"step 4" * 100)
        assert storage.local_copy(f"{base}/last.ckpt").read_bytes() == b"step 4" * 100


def test_copies_of_an_unversioned_object_are_fresh_and_not_pulled_from_under_another_reader(tmp_path, monkeypatch):
    """A host that gives neither ETag nor Last-Modified: each ``local_copy`` is a fresh download (a cached copy could
    not be told stale), and a copy another process (a rank on this node) may be about to read is not deleted by the
    next call; copies over an hour old are."""
    import storage
    from storage.cache import UNVERSIONED_KEEP_S

    monkeypatch.setenv("STORAGE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "web"
    root.mkdir()
    ckpt = root / "last.ckpt"
    ckpt.write_bytes(b"step 2" * 100)
    with serve_folder(root, last_modified=False) as base:
        first = storage.local_copy(f"{base}/last.ckpt")
        _rewrite_same_size(ckpt, b"step 4" * 100)
        second = storage.local_copy(f"{base}/last.ckpt")
        assert first != second and first.read_bytes() == b"step 2" * 100 and second.read_bytes() == b"step 4" * 100
        old = time.time() - UNVERSIONED_KEEP_S - 60
        os.utime(first.parent, (old, old))
        third = storage.local_copy(f"{base}/last.ckpt")
    assert not first.exists() and second.exists() and third.read_bytes() == b"step 4" * 100
