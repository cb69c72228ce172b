"""Mining inputs on object storage: img2dataset tars read from ``s3://`` on a real S3 server (moto_server in its own
process, tests/fixtures_s3.py; endpoint and keys from the environment, as on AWS or MinIO) give the dataset the same
tars give from local disk, byte for byte (the manifest differs only where it records the configured source path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import storage
from labels.pipeline import run
from labels.sources import InputError
from tests.fixtures_labels import labels_config
from tests.test_labels_distributed import I2D, SMALL_PARTS, mine_reference, output_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The corpus mined from local disk (in the driver process): (root, sources, output bytes)."""
    return mine_reference(tmp_path_factory.mktemp("local"))[:3]


def _upload(root: Path, bucket: str) -> str:
    prefix = f"s3://{bucket}/laion/shards"
    for tar in sorted((root / "i2d").glob("*.tar")):
        storage.write_bytes(f"{prefix}/{tar.name}", tar.read_bytes())
    return prefix


def _same_dataset(got: dict[str, bytes], want: dict[str, bytes], url: str, local: str) -> None:
    """Every shard byte-identical; the manifest identical but for where the inputs live: the configured source path,
    and the input fingerprint, which hashes every unit's locator (path, offset) as it does for two local folders."""
    got, want = dict(got), dict(want)
    manifest, reference = json.loads(got.pop("manifest.json")), json.loads(want.pop("manifest.json"))
    assert manifest["pipeline_config"]["sources"][0]["path"] == url
    manifest["pipeline_config"]["sources"][0]["path"] = local
    assert manifest.pop("input_fingerprint") != reference.pop("input_fingerprint")
    assert manifest == reference
    assert sorted(got) == sorted(want) and got == want


@pytest.mark.parametrize("form", ["prefix", "braces", "glob"])
def test_tars_on_s3_give_the_bytes_of_the_same_tars_on_disk(local_reference, s3_bucket, tmp_path, form):
    root, sources, files = local_reference
    prefix = _upload(root, s3_bucket)
    url = {"prefix": prefix, "braces": f"{prefix}/{{00000..00002}}.tar", "glob": f"{prefix}/0000*.tar"}[form]
    cfg = labels_config(tmp_path, [{**sources[0], "path": url}, sources[1]], SMALL_PARTS)
    result = run(cfg)
    _same_dataset(output_bytes(Path(cfg.output)), files, url, sources[0]["path"])
    assert result.counts["read"] == 33 and result.counts["written"] == 32
    parts = [json.loads(x) for x in (Path(cfg.output) / "report" / "partitions.jsonl").read_text().split("\n") if x]
    assert [p["partition"] for p in parts[:3]] == [f"{prefix}/0000{i}.tar" for i in range(3)]


def test_a_missing_s3_input_is_named_before_any_work(s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/nothing/here"
    cfg = labels_config(tmp_path, [{**I2D, "path": url}], SMALL_PARTS)
    with pytest.raises(InputError, match=f"input path not found: {url}"):
        run(cfg)
    assert not (tmp_path / "out" / "_work").exists()


def test_a_braced_range_naming_a_missing_tar_stops_naming_it(local_reference, s3_bucket, tmp_path):
    root, sources, _ = local_reference
    prefix = _upload(root, s3_bucket)
    url = f"{prefix}/{{00000..00003}}.tar"
    cfg = labels_config(tmp_path, [{**sources[0], "path": url}], SMALL_PARTS)
    with pytest.raises(InputError, match=f"{prefix}/00003.tar"):
        run(cfg)


def test_a_store_that_stays_down_fails_the_task_naming_the_url_never_a_counted_skip(
    local_reference, s3_server, s3_bucket, monkeypatch
):
    """Under run.on_bad_input=skip a damaged tar is a counted skip; a store that keeps failing is not a damaged tar:
    the read ends in StorageError naming the URL (the map task fails, a rerun redoes it), and nothing is skipped."""
    from labels.sources.img2dataset import iter_img2dataset

    root, _, _ = local_reference
    url = f"{_upload(root, s3_bucket)}/00001.tar"
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "1")
    bad: list = []
    assert len(list(iter_img2dataset(url, tars=[url], bad_inputs=bad))) == 8 and bad == []
    s3_server.stop(keep=True)
    try:
        with pytest.raises(storage.StorageError, match=f"download {url} failed"):
            list(iter_img2dataset(url, tars=[url], bad_inputs=bad))
    finally:
        s3_server.start()
    assert bad == []
    assert len(list(iter_img2dataset(url, tars=[url], bad_inputs=bad))) == 8  # back up: read whole again


def test_a_tar_replaced_on_s3_between_passes_stops_the_run_naming_it(local_reference, s3_bucket, tmp_path, monkeypatch):
    """An object's version is its ETag from the listing: a tar rewritten after the map pass read it (an img2dataset
    job writing into the same prefix) stops the write pass with its URL instead of mixing the two versions."""
    from labels import pipeline

    root, sources, _ = local_reference
    prefix = _upload(root, s3_bucket)
    cfg = labels_config(tmp_path, [{**sources[0], "path": prefix}], SMALL_PARTS)
    labels_step = pipeline._Driver.labels

    def rewrite_then_label(self, *a, **k):
        storage.write_bytes(f"{prefix}/00001.tar", (root / "i2d" / "00002.tar").read_bytes())
        return labels_step(self, *a, **k)

    monkeypatch.setattr(pipeline._Driver, "labels", rewrite_then_label)
    with pytest.raises(InputError, match=rf"input {prefix}/00001\.tar changed while the run read it"):
        run(cfg)
    monkeypatch.undo()
    assert run(cfg).counts["read"] > 0  # the rerun starts afresh from the objects as they are now
