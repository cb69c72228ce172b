"""The open_clip-style webdataset peer of benchmarks/bench_data.py compares like with like: the loader's batch size,
image size and pass length, each image with its own shard labels, and no pickle member decoded. Its speed is printed
by the benchmark, never asserted here."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.bench_data import webdataset_peer
from tests.fixtures_data import compose_cfg, make_dataset
from tests.fixtures_labels import read_shards


def test_webdataset_peer_yields_the_loaders_batches_with_each_images_own_labels(tmp_path):
    marker = tmp_path / "unpickled"
    info = make_dataset(tmp_path / "ds", n_train=30, n_val=3, shard_size=7, scales=(1.0,), pickle_marker=str(marker))
    labels = {
        s["__key__"]: s["json"]["labels"]["clustered"]
        for s in read_shards(Path(info["root"]), [e["url"] for e in info["train_shards"]])
    }
    assert len(labels) == 30
    cfg = compose_cfg(info["manifest"])  # batch 4, 16 px, resampled shards (the default), no workers
    loader, per_pass = webdataset_peer(cfg)
    assert per_pass == 8  # ceil(30 / 4) batches per pass, as the loader's quota

    seen: set[str] = set()
    for _ in range(20):  # resampled shards: passes until every sample came by at least once
        batches = list(loader)
        assert len(batches) == per_pass
        for images, ids, keys in batches:
            assert images.dtype == torch.uint8 and tuple(images.shape) == (4, 3, 16, 16)
            assert ids.dtype == torch.int64 and len(keys) == 4
            for key, row in zip(keys, ids.tolist()):
                assert [i for i in row if i >= 0] == labels[key]
            seen.update(keys)
        if seen == set(labels):
            break
    assert seen == set(info["train_keys"])  # the sample carrying the .pyd member included
    assert not marker.exists()  # ... and its pickle never ran
