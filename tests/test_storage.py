"""The filesystem layer (storage/) against a real S3 server (moto_server over HTTP) and local disk."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import storage
from tests.fixtures_s3 import clear_fs_cache


def test_local_paths_stay_pathlib_and_urls_become_upaths(tmp_path):
    assert storage.as_path(str(tmp_path)) == tmp_path and type(storage.as_path(str(tmp_path))) is type(tmp_path)
    assert storage.as_path(f"file://{tmp_path}") == tmp_path
    remote = storage.join("s3://bucket/runs", "a", "run.json")
    assert str(remote) == "s3://bucket/runs/a/run.json" and remote.name == "run.json"
    assert str(remote.parent.parent) == "s3://bucket/runs"
    assert storage.is_remote("s3://b/x") and storage.is_remote("gs://b/x") and storage.is_remote("https://h/x")
    assert not storage.is_remote(tmp_path) and not storage.is_remote("file:///x") and not storage.is_remote("rel/x")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_read_list_remove_round_trip(where, tmp_path, request):
    base = tmp_path / "root" if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/root"
    storage.makedirs(base)
    storage.write_text(storage.join(base, "a", "run.json"), '{"x": 1}')
    storage.write_bytes(storage.join(base, "b", "run.json"), b"\x00\x01")
    storage.write_text(storage.join(base, "b", "other.txt"), "o")
    assert storage.read_text(storage.join(base, "a", "run.json")) == '{"x": 1}'
    assert storage.read_bytes(storage.join(base, "b", "run.json")) == b"\x00\x01"
    assert storage.isfile(storage.join(base, "a", "run.json")) and storage.isdir(storage.join(base, "a"))
    assert not storage.exists(storage.join(base, "c")) and not storage.isfile(storage.join(base, "a"))
    assert [p.name for p in storage.listdir(base)] == ["a", "b"]
    assert [str(p) for p in storage.glob(base, "*/run.json")] == [
        str(storage.join(base, "a", "run.json")),
        str(storage.join(base, "b", "run.json")),
    ]
    storage.remove(storage.join(base, "b"), recursive=True)
    assert [p.name for p in storage.listdir(base)] == ["a"]
    assert storage.listdir(storage.join(base, "none")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "none.json"))


def test_objects_are_really_on_the_server(s3_server, s3_bucket):
    storage.write_text(f"s3://{s3_bucket}/runs/r/run.json", "{}")
    assert s3_server.keys(s3_bucket) == ["runs/r/run.json"]  # boto3 over HTTP sees what the layer wrote
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="runs/r/run.json")["Body"].read()
    assert body == b"{}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_write_that_fails_midway_leaves_the_previous_content_and_no_temporary(where, tmp_path, request):
    base = tmp_path if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    target = storage.join(base, "ckpt", "last.ckpt")
    storage.write_bytes(target, b"old" * 1000)

    def half_then_fail(f):
        f.write(b"new" * 500)
        raise OSError(28, "No space left on device (simulated)")

    with pytest.raises(OSError, match="simulated"):
        storage.atomic_write(target, half_then_fail)
    assert storage.read_bytes(target) == b"old" * 1000
    assert [p.name for p in storage.listdir(storage.join(base, "ckpt"))] == ["last.ckpt"]
    storage.atomic_write(target, lambda f: f.write(b"new"))
    assert storage.read_bytes(target) == b"new"


def test_a_multipart_upload_that_fails_is_aborted_not_committed(s3_server, s3_bucket):
    """A checkpoint larger than one part goes up as a multipart upload: on failure it is aborted, so the old
    object stays and no upload is left open."""
    target = f"s3://{s3_bucket}/big.ckpt"
    storage.write_bytes(target, b"old")
    chunk = os.urandom(6 * 2**20)  # one part (the 5 MiB minimum) is sent before the failure

    def parts_then_fail(f):
        f.blocksize = 5 * 2**20
        f.write(chunk)
        f.flush()
        assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")  # really under way
        raise RuntimeError("killed mid-upload (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        storage.atomic_write(target, parts_then_fail)
    assert storage.read_bytes(target) == b"old"
    assert not s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_endpoint_from_aws_endpoint_url_s3_alone(s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    clear_fs_cache()
    try:
        storage.write_text(f"s3://{s3_bucket}/x.txt", "via AWS_ENDPOINT_URL_S3")
        assert s3_server.keys(s3_bucket) == ["x.txt"]
    finally:
        clear_fs_cache()


def test_transient_errors_are_told_from_permanent_ones():
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def client_error(status, code):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert storage.is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert storage.is_transient(ReadTimeoutError(endpoint_url="http://x"))
    assert storage.is_transient(ConnectionResetError()) and storage.is_transient(TimeoutError())
    assert storage.is_transient(client_error(503, "SlowDown")) and storage.is_transient(client_error(500, "X"))
    wrapped = OSError("translated")
    wrapped.__cause__ = client_error(503, "ServiceUnavailable")  # what s3fs raises: the ClientError as the cause
    assert storage.is_transient(wrapped)
    assert not storage.is_transient(client_error(403, "AccessDenied"))
    assert not storage.is_transient(client_error(404, "NoSuchKey"))
    assert not storage.is_transient(FileNotFoundError("x")) and not storage.is_transient(ValueError("x"))


def test_retry_gives_up_at_once_on_a_permanent_error_and_repeats_a_transient_one():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("s3://b/x")

    with pytest.raises(FileNotFoundError):
        storage.retry_call(missing, url="s3://b/x", what="read", deadline=5)
    assert len(calls) == 1

    def flaky():
        calls.append(2)
        if calls.count(2) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert storage.retry_call(flaky, url="s3://b/x", what="read", deadline=30, first_wait_s=0.01) == "ok"
    assert calls.count(2) == 3


def test_read_waits_for_a_restarted_server(s3_server, s3_bucket, monkeypatch):
    """The server goes away for a few seconds: a read retries until it is back and gets the same bytes."""
    url = f"s3://{s3_bucket}/data.bin"
    storage.write_bytes(url, b"payload")
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "60")
    s3_server.stop(keep=True)
    back = threading.Timer(3.0, s3_server.start)
    back.start()
    try:
        start = time.monotonic()
        assert storage.read_bytes(url) == b"payload"
        assert time.monotonic() - start >= 2.5  # it really waited for the server
    finally:
        back.join()


def test_a_server_that_stays_down_ends_with_an_error_naming_the_url(s3_server, s3_bucket, monkeypatch):
    url = f"s3://{s3_bucket}/runs/r/run.json"
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "1")
    s3_server.stop(keep=True)
    try:
        start = time.monotonic()
        with pytest.raises(storage.StorageError, match=rf"write {url} failed after \d+ attempt") as err:
            storage.write_text(url, "{}")
        assert s3_server.endpoint in str(err.value)
        assert time.monotonic() - start < 60  # botocore's own retries (~10 s) + the 1 s deadline
    finally:
        s3_server.start()


def test_local_copy_downloads_once_per_version_and_replaces_the_older_copy(s3_bucket):
    url = f"s3://{s3_bucket}/runs/r/checkpoints/last.ckpt"
    storage.write_bytes(url, b"v1")
    first = storage.local_copy(url)
    assert first.read_bytes() == b"v1" and first.name == "last.ckpt"
    assert storage.local_copy(url) == first  # cached
    storage.write_bytes(url, b"v2-longer")
    second = storage.local_copy(url)
    assert second != first and second.read_bytes() == b"v2-longer" and not first.exists()
    folder = f"s3://{s3_bucket}/runs/r/checkpoints/sharded.ckpt"
    storage.write_bytes(f"{folder}/.metadata", b"m")
    storage.write_bytes(f"{folder}/__0_0.distcp", b"d")
    local = storage.local_copy(folder)
    assert sorted(p.name for p in local.iterdir()) == [".metadata", "__0_0.distcp"]
    with pytest.raises(FileNotFoundError):
        storage.local_copy(f"s3://{s3_bucket}/nothing.ckpt")


def test_local_copy_of_a_local_path_is_the_path(tmp_path):
    assert storage.local_copy(str(tmp_path / "x")) == Path(tmp_path / "x")


def test_listings_and_existence_see_what_other_clients_wrote_since(s3_server, s3_bucket):
    """Another node writes the same bucket: s3fs caches listings per instance, the layer asks the server again."""
    base = f"s3://{s3_bucket}/runs"
    storage.write_text(f"{base}/a/run.json", "{}")
    assert [p.name for p in storage.listdir(base)] == ["a"] and len(storage.glob(base, "*/run.json")) == 1
    assert storage.isfile(f"{base}/a/run.json") and not storage.exists(f"{base}/b/run.json")
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="runs/b/run.json", Body=b"{}")
    client.delete_object(Bucket=s3_bucket, Key="runs/a/run.json")
    assert [p.name for p in storage.listdir(base)] == ["b"]
    assert [p.parent.name for p in storage.glob(base, "*/run.json")] == ["b"]
    assert storage.exists(f"{base}/b/run.json") and not storage.isfile(f"{base}/a/run.json")


def test_a_give_up_message_names_the_endpoint_fsspec_config_sets(monkeypatch):
    """An endpoint set through fsspec's own config (``FSSPEC_S3_ENDPOINT_URL``, the module docstring's way for an older
    botocore) is the one the client talks to: the final error names it, not "AWS S3"."""
    import fsspec.config

    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://minio.internal:9000"})

    def down():
        raise ConnectionRefusedError("refused")

    with pytest.raises(storage.StorageError, match=r"endpoint http://minio\.internal:9000"):
        storage.retry_call(down, url="s3://b/x", what="read", deadline=0)
