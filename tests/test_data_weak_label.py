"""Weak-label shard pipeline: manifest contract, DDP batch accounting (ranks simulated in-process), determinism,
exact resume positions, and bad data (corrupt images, pickle members, out-of-vocabulary labels, truncated tars,
manifests that disagree with the shards)."""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from datamodules.loaders import split_plan
from datamodules.manifest import ManifestError, ManifestMismatchError
from datamodules.resume import EpochClock, PassLoader
from datamodules.stages import GroupShuffle
from datamodules.targets import unpad_labels
from datamodules.weak_label import WeakLabelSource
from tests.fixtures_data import PickleBomb, compose_cfg, make_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """30 train samples in uneven shards of at most 7 over two scale buckets, 9 val samples in 2 shards."""
    info = make_dataset(tmp_path_factory.mktemp("wl"), n_train=30, n_val=9, shard_size=7)
    sizes = [s["num_samples"] for s in info["train_shards"]]
    assert len(sizes) >= 5 and len(set(sizes)) > 1  # no rank x worker split divides these evenly
    return info


def _loader(cfg, rank=0, world=1):
    return PassLoader("weak_label", WeakLabelSource(cfg).train_source(rank, world), EpochClock())


def _pass(loader, epoch=0, pass_idx=0, pos=None):
    return [b["key"] for b in loader.run_pass(epoch, pass_idx, pos)]


def _val_keys(cfg, world, workers):
    data = WeakLabelSource(cfg)
    per_rank = []
    for rank in range(world):
        stream = data.eval_stream(rank, world, num_workers=workers)
        batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(batches) == stream.num_batches
        per_rank.append([b["key"] for b in batches])
    return per_rank


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_errors_name_the_key_and_file(ds, tmp_path):
    with pytest.raises(ManifestError, match=r"data\.weak_label\.manifest: file not found: .*nope\.json"):
        WeakLabelSource(compose_cfg(str(tmp_path / "nope.json")))
    with pytest.raises(ManifestError, match=r"data\.weak_label\.scale=0\.25 is not one of .*\[0\.5, 1\.0\]"):
        WeakLabelSource(compose_cfg(ds["manifest"], "data.weak_label.scale=0.25"))
    with pytest.raises(ManifestError, match=r"shard 'nowhere-000000\.tar' is not listed in manifest"):
        WeakLabelSource(compose_cfg(ds["manifest"], "data.weak_label.shards=nowhere-000000.tar"))

    manifest = json.loads(Path(ds["manifest"]).read_text())
    bad = tmp_path / "m1" / "manifest.json"
    bad.parent.mkdir()
    del manifest["label_spaces"]["raw"]
    bad.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"label_space='raw' is not in manifest .* it has \['clustered'\]"):
        WeakLabelSource(compose_cfg(str(bad), "data.weak_label.label_space=raw"))
    with pytest.raises(
        ManifestError, match=r"lists train shard\(s\) that do not exist, e\.g\. .*\(\d+ missing of the \d+ checked\)"
    ):
        WeakLabelSource(compose_cfg(str(bad)))  # the shards are not next to this copy of the manifest

    manifest = json.loads(Path(ds["manifest"]).read_text())
    manifest["splits"]["train"]["num_samples"] += 1
    bad.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"'splits\.train\.num_samples' is 31 but its shards sum to 30"):
        WeakLabelSource(compose_cfg(str(bad)))


def test_start_up_checks_a_bounded_sample_of_shards(tmp_path, monkeypatch):
    import datamodules.weak_label as wl

    one = make_dataset(tmp_path, n_train=6, n_val=3, shard_size=6, scales=(1.0,))
    manifest = json.loads(Path(one["manifest"]).read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    manifest["splits"]["train"] = {"num_samples": 6 * 5000, "shards": [shard] * 5000}  # a 5000-shard manifest
    Path(one["manifest"]).write_text(json.dumps(manifest))
    calls = []
    monkeypatch.setattr(os.path, "isfile", lambda p: calls.append(p) or os.path.exists(p))
    WeakLabelSource(compose_cfg(one["manifest"]))
    assert len(calls) <= wl.CHECK_SHARDS + 2  # the manifest itself and a sample of shards, not 5000 stats per rank


def test_scale_subsets_are_nested_and_counted_from_the_manifest(ds):
    half = WeakLabelSource(compose_cfg(ds["manifest"], "data.weak_label.scale=0.5"))
    full = WeakLabelSource(compose_cfg(ds["manifest"], "data.weak_label.scale=1.0"))
    b0 = [s for s in ds["train_shards"] if s["scale_bucket"] == 0.5]
    assert 0 < half.num_train_samples == sum(s["num_samples"] for s in b0) < 30
    assert full.num_train_samples == 30
    assert {s.url for s in half.train_shards} < {s.url for s in full.train_shards}


def test_shard_override_reads_only_those_shards_with_manifest_counts(ds):
    b1 = [s for s in ds["train_shards"] if s["url"].startswith("train-b1-")]
    cfg = compose_cfg(
        ds["manifest"],
        f"data.weak_label.shards=train-b1-{{000000..{len(b1) - 1:06d}}}.tar",
        "data.weak_label.resampled=false",
    )
    data = WeakLabelSource(cfg)
    assert data.num_train_samples == sum(s["num_samples"] for s in b1)
    keys = {k for batch in _pass(_loader(cfg)) for k in batch}
    half = {
        k
        for batch in _pass(
            _loader(compose_cfg(ds["manifest"], "data.weak_label.resampled=false", "data.weak_label.scale=0.5"))
        )
        for k in batch
    }
    assert len(keys) == data.num_train_samples  # all of them, and nothing from the b0 shards
    assert not keys & half and len(keys | half) == 30


# ------------------------------------------------------------------------------------------ batches


def test_label_ids_of_the_chosen_label_space_and_uint8_images(ds):
    labels = {}
    for shard in ds["val_shards"]:
        import webdataset as wds

        for s in wds.WebDataset(os.path.join(ds["root"], shard["url"]), shardshuffle=False):
            labels[s["__key__"]] = json.loads(s["json"])["labels"]
    for space, n in (("raw", 12), ("clustered", 5)):
        data = WeakLabelSource(compose_cfg(ds["manifest"], f"data.weak_label.label_space={space}"))
        loader, _ = data.eval_loader("val")
        for batch in loader:
            # uint8 and label ids cross the loader; datamodules.targets normalizes and densifies on the device
            assert batch["image"].shape[1:] == (3, 16, 16) and batch["image"].dtype == torch.uint8
            assert batch["label_ids"].dtype == torch.int32 and int(batch["label_ids"].max()) < n
            for key, (ids, _) in zip(batch["key"], unpad_labels(batch["label_ids"], batch["label_weights"])):
                assert ids == labels[key][space]


@pytest.mark.parametrize("resampled", [True, False])
@pytest.mark.parametrize("world,workers", [(2, 0), (2, 2), (3, 1)])
def test_every_rank_gets_the_same_number_of_full_batches(ds, resampled, world, workers):
    # Uneven shards (see the ds fixture): no rank x worker split divides them evenly.
    cfg = compose_cfg(
        ds["manifest"], f"data.weak_label.resampled={str(resampled).lower()}", f"data.num_workers={workers}"
    )
    lengths, counts = [], []
    for rank in range(world):
        loader = _loader(cfg, rank, world)
        batches = _pass(loader)
        lengths.append(len(loader))
        counts.append(len(batches))
        assert all(len(b) == 4 for b in batches)  # no partial batch
    assert len(set(lengths)) == 1 and counts == lengths
    assert lengths[0] * world * 4 >= 30  # the epoch covers the manifest count


def test_same_seed_same_order_and_epochs_and_seeds_differ(ds):
    cfg = compose_cfg(ds["manifest"], "data.num_workers=2")
    first = _pass(_loader(cfg), epoch=0)
    assert _pass(_loader(cfg), epoch=0) == first
    assert _pass(_loader(cfg), epoch=1) != first
    assert _pass(_loader(compose_cfg(ds["manifest"], "data.num_workers=2", "seed=1")), epoch=0) != first


def test_augmentations_are_reproducible_bit_for_bit(ds):
    cfg = compose_cfg(ds["manifest"], "data.augment.rand_augment=rand-m9-mstd0.5", "data.num_workers=2")
    first = [b["image"] for b in _loader(cfg).run_pass(0, 0)]
    again = [b["image"] for b in _loader(cfg).run_pass(0, 0)]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    other_pass = [b["image"] for b in _loader(cfg).run_pass(0, 1)]
    assert not torch.equal(first[0], other_pass[0])


def test_non_resampled_pass_reads_every_sample_once_before_repeating(ds):
    cfg = compose_cfg(ds["manifest"], "data.weak_label.resampled=false")
    loader = _loader(cfg)
    keys = [k for b in _pass(loader) for k in b]  # 8 batches of 4 = 32 samples for 30
    assert Counter(keys[:30]) == Counter(ds["train_keys"])
    assert not loader.counts  # intact shards: nothing skipped


def test_one_shard_for_many_workers_still_reads_every_sample_once(tmp_path):
    one = make_dataset(tmp_path, n_train=20, n_val=3, shard_size=100, scales=(1.0,))  # a single train shard
    cfg = compose_cfg(one["manifest"], "data.weak_label.resampled=false", "data.num_workers=3")
    loader = _loader(cfg)  # workers serve ranges of the pass, not whole shards: any shard count works
    keys = [k for b in _pass(loader) for k in b]
    assert len(keys) == len(loader) * 4 == 20
    assert sorted(keys) == sorted(one["train_keys"])


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_val_covers_every_sample_exactly_once_with_equal_batches(ds, world, workers):
    cfg = compose_cfg(ds["manifest"], "data.eval_batch_size=2")
    per_rank = _val_keys(cfg, world, workers)
    flat = [k for rank in per_rank for b in rank for k in b]
    assert sorted(flat) == sorted(ds["val_keys"])  # exactly once
    assert len({len(rank) for rank in per_rank}) == 1  # same number of batches on every rank
    assert all(1 <= len(b) <= 2 for rank in per_rank for b in rank)


def test_group_shuffle_keeps_groups_apart_numbers_by_group_and_is_seeded():
    src = [{"k": i, "__group__": i // 37, "__gstart__": 37 * (i // 37)} for i in range(200)]
    out = list(GroupShuffle(16, seed=1)(iter(dict(x) for x in src)))
    assert sorted(x["k"] for x in out) == list(range(200))
    assert [x["k"] // 37 for x in out] == sorted(x["k"] // 37 for x in out)  # no group mixed into another
    assert [x["k"] for x in out] != list(range(200))  # shuffled
    assert [x["__raw__"] for x in out] == list(range(200))  # numbered in shuffled order from each group's start
    assert out == list(GroupShuffle(16, seed=1)(iter(dict(x) for x in src)))  # seeded
    # The order of a group depends only on its seed and size: the replay that ResumeAt relies on.
    positions = list(GroupShuffle(16, seed=1).shuffled(iter(range(37)), 0))
    assert [x["k"] for x in out[:37]] == positions


def test_split_plan_equalizes_batch_counts():
    assert split_plan(9, 4, 3) == [4, 4, 1]
    assert split_plan(5, 4, 3) == [2, 2, 1]
    assert sum(split_plan(7, 4, 5)) == 7 and len(split_plan(7, 4, 5)) == 5
    with pytest.raises(ValueError):
        split_plan(2, 4, 3)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("resampled", ["true", "false"])
def test_resume_position_continues_exactly_even_after_undecodable_samples(tmp_path, resampled):
    bad = make_dataset(tmp_path, n_train=24, n_val=3, shard_size=6, corrupt=3)
    cfg = compose_cfg(bad["manifest"], f"data.weak_label.resampled={resampled}", "data.num_workers=2")
    loader = _loader(cfg)
    full = _pass(loader, epoch=1, pass_idx=0)
    assert loader.counts["decode_error"] >= 1  # the stream did skip samples before the positions below
    for k in (1, 3, len(full) - 1):
        pos = loader.position(1, 0, k)
        resumed = _pass(_loader(cfg), epoch=1, pass_idx=0, pos=pos)
        assert resumed == full[k:], f"resume after {k} batches"


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """60 train samples of 48 px in 12 shards of 5: with data.shuffle_buffer=2 a shuffle group is 2 shards."""
    return make_dataset(tmp_path_factory.mktemp("many"), n_train=60, n_val=3, shard_size=5, img_size=48, scales=(1.0,))


class _CountingOpen:
    """Stands in for gopen: counts the bytes actually read from shards (seeks past payloads are not reads)."""

    def __init__(self, gopen):
        self.gopen, self.read = gopen, 0

    def __call__(self, url, mode="rb"):
        stream, outer = self.gopen(url, mode), self

        class Counted:
            def read(self, n=-1):
                data = stream.read(n)
                outer.read += len(data)
                return data

            def __getattr__(self, name):
                return getattr(stream, name)

        return Counted()


@pytest.mark.parametrize("resampled", ["true", "false"])
def test_resume_cost_does_not_grow_with_the_position(many, monkeypatch, resampled):
    import datamodules.storage as storage

    cfg = compose_cfg(
        many["manifest"], f"data.weak_label.resampled={resampled}", "data.num_workers=0", "data.shuffle_buffer=2"
    )
    counting = _CountingOpen(storage.gopen)
    monkeypatch.setattr(storage, "gopen", counting)
    loader = _loader(cfg)
    full = _pass(loader, epoch=0)
    per_batch = counting.read / len(full)
    first_batch = []
    for k in (1, len(full) // 2, len(full) - 2):
        counting.read = 0
        resumed = _loader(cfg).run_pass(0, 0, loader.position(0, 0, k))
        first = next(resumed)
        first_batch.append(counting.read)
        assert [first["key"], *(b["key"] for b in resumed)] == full[k:], f"resume after {k} batches"
    # Reaching the first batch reads at most about a shuffle group (2 shards = 2.5 batches) plus a batch, wherever
    # the pass resumes; replaying the consumed part of the pass would read k batches' bytes.
    assert max(first_batch) < 5 * per_batch, (first_batch, per_batch)


def test_resume_is_exact_when_ranks_share_too_few_shards(tmp_path):
    one = make_dataset(tmp_path, n_train=40, n_val=3, shard_size=20, scales=(1.0,))  # 2 shards for 3 ranks
    cfg = compose_cfg(one["manifest"], "data.weak_label.resampled=false", "data.num_workers=0", "data.shuffle_buffer=2")
    loader = _loader(cfg, rank=0, world=3)
    full = _pass(loader)
    for k in (1, len(full) - 1):
        assert _pass(_loader(cfg, rank=0, world=3), pos=loader.position(0, 0, k)) == full[k:]


# ------------------------------------------------------------------------------------------ bad data


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    bad = make_dataset(tmp_path, n_train=20, n_val=3, shard_size=5, corrupt=2)
    cfg = compose_cfg(bad["manifest"], "data.weak_label.resampled=false")
    loader = _loader(cfg)
    keys = {k for b in _pass(loader) for k in b}
    assert not keys & set(bad["corrupt_keys"])
    assert keys == set(bad["train_keys"]) - set(bad["corrupt_keys"])
    assert loader.counts["decode_error"] >= 2


def test_a_stream_where_nothing_decodes_ends_the_run_with_the_cause(tmp_path, monkeypatch):
    import datamodules.streams as streams

    monkeypatch.setattr(streams, "MAX_SKIPS_IN_A_ROW", 30)  # forked loader workers inherit it
    bad = make_dataset(tmp_path, n_train=20, n_val=3, shard_size=5, corrupt=20)
    cfg = compose_cfg(bad["manifest"])  # resampled shards: without the limit this spins forever
    with pytest.raises(RuntimeError, match=r"30 samples in a row were skipped, none decoded \(last: decode_error"):
        _pass(_loader(cfg))


def test_pickle_member_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(PickleBomb(str(control))))  # the payload is live: unpickling does run it
    assert control.exists()
    bad = make_dataset(tmp_path / "ds", n_train=12, n_val=3, shard_size=6, pickle_marker=str(marker))
    cfg = compose_cfg(bad["manifest"], "data.weak_label.resampled=false")
    loader = _loader(cfg)
    keys = {k for b in _pass(loader) for k in b}
    assert bad["train_keys"][0] in keys  # the sample carrying the .pyd member is still used, without it
    assert loader.counts["ignored_member"] >= 1
    assert not marker.exists()


def test_labels_outside_the_vocabulary_are_a_counted_skip(tmp_path):
    bad = make_dataset(tmp_path, n_train=16, n_val=3, shard_size=8, out_of_vocab=2)
    loader = _loader(compose_cfg(bad["manifest"], "data.weak_label.resampled=false"))
    keys = {k for b in _pass(loader) for k in b}
    assert not keys & set(bad["oov_keys"])
    assert loader.counts["label_out_of_vocab"] >= 2


def test_truncated_tar_is_skipped_and_counted(tmp_path):
    bad = make_dataset(tmp_path, n_train=20, n_val=4, shard_size=10, scales=(1.0,))
    shard = Path(bad["root"]) / bad["train_shards"][0]["url"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader = _loader(compose_cfg(bad["manifest"], "data.weak_label.resampled=false"))
    batches = _pass(loader)
    assert len(batches) == len(loader)  # the pass still has its full length
    assert loader.counts["shard_read_error"] >= 1 and loader.counts["samples_lost"] >= 1
    keys = {k for b in batches for k in b}
    assert set(bad["train_keys"][:2]) <= keys  # samples before the cut were read
    assert not set(bad["train_keys"][6:10]) & keys  # samples after it are lost


def test_truncated_val_shard_fails_clearly(tmp_path):
    bad = make_dataset(tmp_path, n_train=8, n_val=8, shard_size=8, scales=(1.0,))
    shard = Path(bad["root"]) / bad["val_shards"][0]["url"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader, _ = WeakLabelSource(compose_cfg(bad["manifest"])).eval_loader("val")
    with pytest.raises(ManifestMismatchError, match="val shards .* ended before the 8 samples"):
        list(loader)


@pytest.mark.parametrize("delta", [1, -1])
def test_shard_count_that_disagrees_with_the_manifest_is_a_counted_skip_in_training(tmp_path, delta):
    # R3: raising inside one rank's worker would leave the other ranks waiting at the next collective.
    bad = make_dataset(tmp_path, n_train=12, n_val=3, shard_size=6, scales=(1.0,))
    manifest = json.loads(Path(bad["manifest"]).read_text())
    manifest["splits"]["train"]["shards"][1]["num_samples"] += delta
    manifest["splits"]["train"]["num_samples"] += delta
    Path(bad["manifest"]).write_text(json.dumps(manifest))
    loader = _loader(compose_cfg(bad["manifest"], "data.weak_label.resampled=false"))
    batches = _pass(loader)
    assert len(batches) == len(loader)  # the pass keeps its length: every rank the same number of batches
    assert loader.counts["count_mismatch"] >= 1  # once per read of the shard (a pass may repeat it)
    assert loader.counts["samples_lost" if delta > 0 else "samples_extra"] == loader.counts["count_mismatch"]
    keys = {k for b in batches for k in b}
    assert set(bad["train_keys"][:6]) <= keys  # the intact shard is used
    if delta < 0:  # only the manifest's count of the long shard is used
        assert len(keys & set(bad["train_keys"][6:])) == 5


def test_val_shard_that_disagrees_with_the_manifest_fails_naming_the_shard(tmp_path):
    bad = make_dataset(tmp_path, n_train=6, n_val=12, shard_size=6, scales=(1.0,))
    manifest = json.loads(Path(bad["manifest"]).read_text())
    manifest["splits"]["val"]["shards"][1]["num_samples"] -= 1
    manifest["splits"]["val"]["num_samples"] -= 1
    Path(bad["manifest"]).write_text(json.dumps(manifest))
    loader, _ = WeakLabelSource(compose_cfg(bad["manifest"])).eval_loader("val", num_workers=0)
    with pytest.raises(ManifestMismatchError, match=r"val-000001\.tar holds more samples than the manifest lists"):
        list(loader)


def test_missing_json_is_a_counted_skip_naming_the_shard(tmp_path, caplog):
    bad = make_dataset(tmp_path, n_train=12, n_val=3, shard_size=6, scales=(1.0,))
    shard = Path(bad["root"]) / bad["train_shards"][0]["url"]
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    victim = samples[2]["__key__"]
    with wds.TarWriter(str(shard), encoder=False, mtime=0) as sink:
        for sample in samples:
            sink.write(
                {
                    k: v
                    for k, v in sample.items()
                    if k not in ("__url__", "__local_path__") and not (sample["__key__"] == victim and k == "json")
                }
            )
    loader = _loader(compose_cfg(bad["manifest"], "data.weak_label.resampled=false"))
    with caplog.at_level("WARNING", logger="datamodules.weak_label"):
        keys = {k for b in _pass(loader) for k in b}
    assert victim not in keys and loader.counts["missing_json"] == 1
    assert any("missing_json" in r.getMessage() and shard.name in r.getMessage() for r in caplog.records)


def test_mixup_gives_soft_multi_hot_targets(ds):
    from datamodules.targets import BatchTransform

    cfg = compose_cfg(ds["manifest"], "data.augment.mixup_alpha=0.8")
    batch = next(iter(_loader(cfg).run_pass(0, 0)))
    t = BatchTransform(5, 0.8, seed=0)(batch, train=True)["target"]  # mixup now runs on the device
    assert ((t > 0) & (t < 1)).any()
    assert torch.all((t >= 0) & (t <= 1))


def test_label_shard_writer_writes_no_pax_headers_and_the_reader_skips_payloads(tmp_path):
    from datamodules.tar_reader import iter_members
    from labels.shards import _Writer

    writer = _Writer(str(tmp_path / "s-%06d.tar"), maxcount=10, maxsize=1 << 30)
    for i in range(3):
        writer.write({"__key__": f"k{i}", "jpg": bytes([i]) * 700, "json": b"{}"})
    ((name, count),) = writer.close()
    data = (tmp_path / name).read_bytes()
    assert count == 3 and b"PaxHeader" not in data  # an integer mtime: no extended header per member
    with open(tmp_path / name, "rb") as f:  # header-only members: names and offsets, payloads never read
        members = list(iter_members(f, lambda fname: None if fname.endswith(".jpg") else True))
    jpgs = [m for m in members if m["fname"].endswith(".jpg")]
    assert [m["data"] for m in jpgs] == [None] * 3
    assert [data[m["offset"] : m["offset"] + m["size"]] for m in jpgs] == [bytes([i]) * 700 for i in range(3)]


def _jpeg(w: int, h: int, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h))], -1).astype(np.uint8)
    img = (img + rng.integers(0, 8, img.shape)).astype(np.uint8)  # smooth + a little noise
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_draft_resized_crop_decodes_at_the_crops_scale_with_the_same_draws():
    import io
    import random

    import numpy as np
    from PIL import Image

    from configs.compose import compose
    from datamodules.transforms import DraftResizedCrop, decode_image, image_transform

    cfg = compose(["logger=none", "trainer=cpu", "data.img_size=64"])
    transform = image_transform(cfg.data, train=True)
    crop = transform.transforms[0]
    assert isinstance(crop, DraftResizedCrop)
    data = _jpeg(512, 384)
    smaller = 0
    for seed in range(20):  # same random draws as timm's crop on the fully decoded image, near-identical pixels
        random.seed(seed)
        lazy = Image.open(io.BytesIO(data))
        out = np.asarray(crop(lazy), dtype=np.float32)
        random.seed(seed)
        ref = np.asarray(crop.crop(decode_image(data)), dtype=np.float32)
        assert out.shape == ref.shape == (64, 64, 3)
        assert np.abs(out - ref).mean() < 3.0, seed
        smaller += lazy.size[0] < 512  # decoded at 1/2 .. 1/8 (a crop under 128 px a side needs full scale)
    assert smaller >= 10, smaller
    whole = DraftResizedCrop(type(crop.crop)(64, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3)))
    lazy = Image.open(io.BytesIO(data))
    whole(lazy)
    assert lazy.size == (128, 96)  # the whole 512x384 image into 64x64: 1/4 keeps 96 >= 64 rows (1/8 would not)
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, format="PNG")
    random.seed(1)
    a = np.asarray(crop(Image.open(io.BytesIO(png.getvalue()))))
    random.seed(1)
    b = np.asarray(crop.crop(Image.open(io.BytesIO(png.getvalue())).convert("RGB")))
    assert (a == b).all()  # not a JPEG: the wrapped transform, unchanged


@pytest.mark.parametrize("workers", [0, 2])
def test_a_position_of_8_ranks_resumes_on_1_rank_with_every_remaining_sample_once(tmp_path, workers):
    """One slot cut over 8 ranks (8 pieces) continued on 1 rank, whose default pass state holds fewer pieces: the
    union of what the 8 ranks consumed and what the resumed rank reads is every sample once."""
    ds = make_dataset(tmp_path, n_train=64, n_val=3, shard_size=8, scales=(1.0,))
    base = ["data.weak_label.resampled=false", "data.shuffle_buffer=64"]  # 64 samples: one slot
    cfg = compose_cfg(ds["manifest"], *base)
    before, pos = [], None
    for rank in range(8):
        loader = _loader(cfg, rank=rank, world=8)
        first = next(iter(loader.run_pass(0, 0)))  # each rank's first of its 2 batches
        before += first["key"]
        if rank == 0:
            pos = loader.position(0, 0)
    assert len(pos["plan"]["pieces"]) == 8
    pos["progress"] = [[1, p[3] + 4] for p in pos["plan"]["pieces"]]  # every rank's piece: one batch of 4 done
    resumed = _loader(compose_cfg(ds["manifest"], *base, f"data.num_workers={workers}"))
    after = [k for b in resumed.run_pass(0, 0, pos) for k in b["key"]]
    assert len(after) == 32 and sorted(before + after) == sorted(ds["train_keys"])
