"""A real S3 server for the tests: moto's standalone ``moto_server`` in its own process on 127.0.0.1.

The code under test talks to it over HTTP exactly as it would to AWS (endpoint URL and keys from the environment),
never through an in-process mock. ``s3_server`` (session) starts one server for the whole test run and points the
AWS_* environment of the test process, and so of every subprocess it starts, at it; ``s3_bucket`` gives each test
its own fresh bucket. ``S3Server.stop`` / ``start`` / ``restart`` stop the server and bring it back on the same port
for fault tests. moto keeps objects in memory, so ``stop(keep=True)`` snapshots every bucket to disk first and the
next ``start`` loads them into the new server process *before* it listens: what a real store (which persists objects)
holds after a restart, with no moment where a client sees the server up but empty.

tests/conftest.py registers this module (``pytest_plugins``): any test may ask for ``s3_server`` / ``s3_bucket``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

# The server process: load a snapshot folder (<bucket>/<key>) into moto's S3 backend, then serve.
SERVE = """
import os, sys
from pathlib import Path
snapshot = os.environ.get("MOTO_TEST_SNAPSHOT")
if snapshot:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in sorted(Path(snapshot).iterdir()):
        backend.create_bucket(bucket.name, "us-east-1")
        for item in sorted(p for p in bucket.rglob("*") if p.is_file()):
            backend.put_object(bucket.name, item.relative_to(bucket).as_posix(), item.read_bytes())
from moto.server import main
sys.exit(main())
"""

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clear_fs_cache() -> None:
    """Forget cached s3fs instances (they keep the endpoint and connections they were made with)."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


class S3Server:
    """One ``moto_server`` process on 127.0.0.1:``port`` (a free port unless given)."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.snapshot = log.parent / f"moto-snapshot-{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client needs: dummy keys, the endpoint, no instance-metadata lookups."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (with the objects a ``stop(keep=True)`` saved) and wait until it answers HTTP."""
        env = {**os.environ, "MOTO_TEST_SNAPSHOT": str(self.snapshot) if self.snapshot.is_dir() else ""}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"moto_server did not start on {self.endpoint}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        shutil.rmtree(self.snapshot, ignore_errors=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self, keep: bool = True) -> None:
        """Stop the server (SIGKILL: connections drop mid-request); with ``keep``, the next ``start`` restores every
        object it held."""
        shutil.rmtree(self.snapshot, ignore_errors=True)
        if keep and self.proc is not None:
            for bucket, objects in self.dump().items():
                (self.snapshot / bucket).mkdir(parents=True)
                for key, body in objects.items():
                    if not key.endswith("/"):
                        (self.snapshot / bucket / key).parent.mkdir(parents=True, exist_ok=True)
                        (self.snapshot / bucket / key).write_bytes(body)
        self.kill()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port with the same objects."""
        self.stop(keep=True)
        time.sleep(down_s)
        self.start()

    def dump(self) -> dict[str, dict[str, bytes]]:
        client = self.client()
        out: dict[str, dict[str, bytes]] = {}
        for bucket in client.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            out[name] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for obj in page.get("Contents", []):
                    out[name][obj["Key"]] = client.get_object(Bucket=name, Key=obj["Key"])["Body"].read()
        return out

    def client(self) -> Any:
        """A boto3 S3 client for the test's own checks (over HTTP, like the code under test)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=KEYS["AWS_DEFAULT_REGION"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto_server for the whole session; the process's AWS_* environment (inherited by subprocesses) points at
    it, and remote checkpoints are cached under the session's tmp folder."""
    folder = tmp_path_factory.mktemp("s3")
    server = S3Server(folder / "moto_server.log")
    server.start()
    env = {**server.env(), "STORAGE_CACHE_DIR": str(folder / "cache")}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    os.environ.update(env)
    clear_fs_cache()
    try:
        yield server
    finally:
        server.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clear_fs_cache()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's server (its name); the server is running when the test starts."""
    if s3_server.proc is None or s3_server.proc.poll() is not None:
        s3_server.start()  # a previous test left it stopped
    return s3_server.new_bucket()
