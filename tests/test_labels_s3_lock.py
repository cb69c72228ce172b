"""The mining output lock and commit markers on a real S3 server (moto_server over HTTP, tests/fixtures_s3.py):
adversarial cases of labels/lifetime.py ``ObjectLock`` and labels/store.py ``committed``."""

from __future__ import annotations

import time

import pytest
import s3fs

from labels import lifetime
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
