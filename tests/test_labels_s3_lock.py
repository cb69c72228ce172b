"""The mining output lock and commit markers on a real S3 server (moto_server over HTTP, tests/fixtures_s3.py):
adversarial cases of labels/lifetime.py ``ObjectLock`` and labels/store.py ``committed``."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time

import pytest
import s3fs

import storage
from labels import lifetime, store
from tests.fixtures_s3 import free_port


def _cut_off(lock: lifetime.ObjectLock) -> None:
    """From now on ``lock``'s driver cannot reach the store (a network partition of its host): its client points at
    a port nothing listens on, and botocore gives up after one try."""
    lock.fs = s3fs.S3FileSystem(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1},
        skip_instance_cache=True,
    )


def test_a_driver_whose_heartbeats_stop_reaching_the_store_stops_before_a_takeover_can_happen(s3_bucket, monkeypatch):
    """A driver cut off from the store keeps running; after ``stale_s`` without a heartbeat another driver takes the
    lock over (as it must: it cannot tell a cut-off driver from a dead one). The cut-off driver must then no longer
    pass ``check``: else both drivers write the output (collect, manifest) believing they hold it."""
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "0.3")
    url = f"s3://{s3_bucket}/mined"
    holder = lifetime.ObjectLock(url, heartbeat_s=0.2, stale_s=1.5)
    holder.acquire()
    holder._record["host"] = "elsewhere"  # a driver on another host (its pid cannot be looked up from here)
    deadline = time.monotonic() + 10
    while lifetime.ObjectLock.holder(holder.url).get("host") != "elsewhere" and time.monotonic() < deadline:
        time.sleep(0.05)
    _cut_off(holder)
    taker = lifetime.ObjectLock(url, heartbeat_s=0.2, stale_s=1.5)
    taker.acquire()  # waits stale_s, then takes over by compare-and-swap
    try:
        assert lifetime.ObjectLock.holder(holder.url)["token"] == taker._record["token"]
        with pytest.raises(lifetime.OutputBusy):
            holder.check()  # it has not renewed its lock for longer than the stale time: it must stop writing
    finally:
        holder._stop.set()
        taker.release()
        holder.release()


def _list_requests(server, bucket: str) -> int:
    """ListObjectsV2 requests the server has answered for ``bucket`` (its request log)."""
    return server.log.read_text(errors="replace").count(f"GET /{bucket}?list-type=2")


@pytest.mark.slow
def test_commit_markers_of_a_pass_past_one_listing_page_are_found_with_a_listing_per_page(s3_server, s3_bucket):
    """A pass of 1,105 tasks (more than the 1,000 keys of one ListObjectsV2 page), some with their attempt's files,
    one in 50 without a marker (in flight at a crash): ``committed`` finds exactly the markers, past the first page, in
    about one listing request per page of keys, not one request per task folder (a driver checks every pass's
    markers at its start, and after a lost worker; one request per task was O(tasks) round trips each time)."""
    from concurrent.futures import ThreadPoolExecutor

    n = 1105
    client = s3_server.client()

    def put(i: int) -> None:
        if i % 10 == 7:  # an attempt's files (of a task in flight when i % 50 == 7)
            client.put_object(Bucket=s3_bucket, Key=f"w/map/p{i:06d}/a1/stats.json", Body=b"{}")
        if i % 50 != 7:
            client.put_object(Bucket=s3_bucket, Key=f"w/map/p{i:06d}/commit.json", Body=b'{"files":"a1"}')

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    client.put_object(Bucket=s3_bucket, Key="w/df_ranges.bin", Body=b"")  # a sibling sharing the prefix "w/d"
    markers = [f"s3://{s3_bucket}/w/map/p{i:06d}/commit.json" for i in range(n)]
    before = _list_requests(s3_server, s3_bucket)
    found = store.committed(markers)
    requests = _list_requests(s3_server, s3_bucket) - before
    assert found == {m for i, m in enumerate(markers) if i % 50 != 7}
    assert requests <= 4, f"{requests} listing requests for {n} task folders"  # 2 pages of 1,000 keys


def test_a_lock_of_another_pid_namespace_on_the_same_host_name_is_not_taken_over_at_once(s3_bucket, caplog):
    """Containers sharing the host's name (``--network host``, Kubernetes ``hostNetwork``) have pid namespaces of
    their own: a driver there is not in this process table, so finding its pid gone here proves nothing. Its lock is
    taken over only after its heartbeat stayed still for the stale time, as one from another host."""
    url = f"s3://{s3_bucket}/mined"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(gone.stdout), "host": socket.gethostname(), "pid_ns": "pid:[1]", "token": "t", "beat": 0}
    storage.write_bytes(f"{url}/.mine_labels.lock", json.dumps(record).encode())
    taker = lifetime.ObjectLock(url, heartbeat_s=0.2, stale_s=1.0)
    with caplog.at_level(logging.WARNING, logger="labels.lifetime"):
        taker.acquire()
    taker.release()
    assert "no heartbeat from" in caplog.text and "is gone" not in caplog.text
