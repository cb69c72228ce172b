"""The batch contract (datamodules.targets): label ids and uint8 images cross the loader, dense targets,
normalization and mixup happen on the device; bounded validation metrics; one batch limit per val dataset."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.stages import Collate, DecodeSample, SampleSkip, SkipCounter
from datamodules.targets import (
    BatchTransform,
    batch_seed,
    dense_targets,
    label_arrays,
    normalize_images,
    pad_labels,
    unpad_labels,
)
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from evaluation.head_metrics import EXACT_MAP_MAX_ELEMENTS, MAP_THRESHOLDS, WeakLabelMAP, precision_at_k
from tests.fixtures_data import compose_cfg, make_dataset, make_fashion_mnist


def _jpeg(seed: int, size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _raw(key: str, ids: list, scores: list | None = None, seed: int = 0) -> dict:
    meta = {"labels": {"clustered": ids}}
    if scores is not None:
        meta["scores"] = {"clustered": scores}
    return {"__key__": key, "jpg": _jpeg(seed), "json": json.dumps(meta).encode(), "__raw__": seed}


def _old_dense(rows: list[list[int]], num_classes: int) -> torch.Tensor:
    """The target the loader workers built before (weak_label.DecodeSample.labels at 3793c3b)."""
    out = np.zeros((len(rows), num_classes), dtype=np.float32)
    for r, ids in enumerate(rows):
        out[r, ids] = 1.0
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------ label ids


def test_label_ids_round_trip_with_padding_and_scores():
    rows = [([3, 17, 2], [0.9, 0.5, 0.25]), ([5], None), ([0, 1, 2, 3, 4, 5], [1.0] * 6)]
    arrays = [label_arrays(ids, scores) for ids, scores in rows]
    ids, weights = pad_labels([a for a, _ in arrays], [w for _, w in arrays], width=4)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert ids.shape == weights.shape == (3, 6)  # a sample longer than the width widens the batch, nothing is lost
    assert ids[1].tolist() == [5, -1, -1, -1, -1, -1] and weights[1].tolist() == [1.0, 0, 0, 0, 0, 0]
    back = unpad_labels(ids, weights)
    assert [b[0] for b in back] == [r[0] for r in rows]
    assert back[0][1] == pytest.approx([0.9, 0.5, 0.25]) and back[1][1] == [1.0]
    fixed, _ = pad_labels([np.array([1], np.int32)], [np.ones(1, np.float32)], width=10)
    assert fixed.shape == (1, 10)  # the manifest's cap keeps shapes constant
    with pytest.raises(ValueError, match="2 scores for 3 label ids"):
        label_arrays([1, 2, 3], [0.5, 0.5])


def test_decode_sample_ships_ids_and_scores_and_counts_bad_ones():
    decode = DecodeSample("clustered", 50, transform=lambda im: torch.zeros(1), draft=0, seed=None)
    ids, weights = decode.labels(_raw("a", [4, 7], [0.8, 0.3]))
    assert ids.tolist() == [4, 7] and weights.tolist() == pytest.approx([0.8, 0.3])
    ids, weights = decode.labels(_raw("b", [9]))  # no scores in the shard: weight 1
    assert weights.tolist() == [1.0]
    for raw, reason in (
        (_raw("c", [3, 50]), "label_out_of_vocab"),
        (_raw("d", [3, -1]), "label_out_of_vocab"),
        (_raw("e", [3, 4], [0.5]), "bad_json"),
        (_raw("f", []), "empty_labels"),
    ):
        with pytest.raises(SampleSkip) as err:
            decode.labels(raw)
        assert err.value.reason == reason
    counter = SkipCounter()
    assert counter(SampleSkip("label_out_of_vocab", "c")) and counter.counts["label_out_of_vocab"] == 1


def test_scatter_on_the_device_equals_the_old_dense_target():
    rng = np.random.default_rng(0)
    c = 300
    rows = [sorted(rng.choice(c, size=rng.integers(1, 8), replace=False).tolist()) for _ in range(32)]
    arrays = [label_arrays(r) for r in rows]
    ids, weights = pad_labels([a for a, _ in arrays], [w for _, w in arrays], width=10)
    assert torch.equal(dense_targets(ids, weights, c), _old_dense(rows, c))
    soft_w = torch.where(ids >= 0, torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)), 0.0)
    soft = dense_targets(ids, soft_w, c, soft=True)
    for r, row in enumerate(rows):
        assert soft[r, row].tolist() == pytest.approx(soft_w[r, : len(row)].tolist())
        assert soft[r].count_nonzero() <= len(row)


def test_batch_bytes_per_sample_are_flat_in_the_number_of_labels():
    from datamodules.transforms import image_transform

    data_cfg = compose_cfg("unused.json").data
    per_sample = {}
    for c in (1_000, 20_000, 100_000):
        decode = DecodeSample("clustered", c, image_transform(data_cfg, train=False), draft=0, seed=None)
        samples = [decode(_raw(f"k{i}", [i, c - 1 - i], seed=i)) for i in range(8)]
        batch = Collate(SkipCounter(), 0, max_labels=10)(samples)
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        per_sample[c] = sum(t.numel() * t.element_size() for t in tensors) / 8
    assert len(set(per_sample.values())) == 1, per_sample
    # uint8 3x16x16 image + 10 int32 ids + 10 float32 weights (the old dense float32 target alone was 4*C bytes)
    assert per_sample[100_000] == 3 * 16 * 16 + 10 * 4 + 10 * 4


# --------------------------------------------------------------------------- device transform


def test_normalization_on_the_device_equals_the_old_cpu_normalization():
    from timm.data import create_transform

    from datamodules.loaders import seed_sample_rngs
    from datamodules.transforms import image_transform

    cfg = compose_cfg("unused.json", "data.img_size=24").data
    img = Image.open(io.BytesIO(_jpeg(3, size=40))).convert("RGB")
    for train in (False, True):
        new_t = image_transform(cfg, train)
        if train:
            old_t = create_transform(24, is_training=True, scale=(0.08, 1.0), hflip=0.5, color_jitter=None)
        else:
            old_t = create_transform(24, is_training=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        seed_sample_rngs(7)
        raw = new_t(img)
        seed_sample_rngs(7)
        old = old_t(img)
        assert raw.dtype == torch.uint8 and raw.shape == old.shape == (3, 24, 24)
        new = normalize_images(raw[None], IMAGENET_MEAN, IMAGENET_STD)[0]
        assert torch.allclose(new, old, atol=1e-5), (train, (new - old).abs().max())


def test_mixup_on_the_device_is_timm_mixup_on_soft_multi_hot_targets():
    from timm.data import Mixup

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    ids = torch.tensor([[0, 2], [1, -1], [3, 4], [2, -1], [0, 1], [4, -1]], dtype=torch.int32)
    batch = {"image": images, "label_ids": ids, "label_weights": (ids >= 0).float(), "key": list("abcdef")}
    transform = BatchTransform(5, mixup_alpha=0.8, seed=11)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    out = transform(batch, train=True, epoch=2)
    assert np.array_equal(np.random.get_state()[1], before)  # the global numpy stream is left as it was
    # timm's own draw for this batch's seed: rand() < prob, then lam ~ Beta(alpha, alpha)
    rng = np.random.RandomState(batch_seed(11, 2, list("abcdef")) & 0xFFFFFFFF)
    rng.rand()
    lam = float(rng.beta(0.8, 0.8))
    x = normalize_images(images, IMAGENET_MEAN, IMAGENET_STD)
    t = dense_targets(ids, batch["label_weights"], 5)
    assert torch.allclose(out["image"], lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    assert torch.allclose(out["target"], lam * t + (1 - lam) * t.flip(0), atol=1e-6)
    # the same as timm Mixup applied the old way (in the workers, on normalized images and dense targets)
    np.random.seed(batch_seed(11, 2, list("abcdef")) & 0xFFFFFFFF)
    old_x, old_t = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=5, multi_label=True)(
        x.clone(), t.clone()
    )
    assert torch.allclose(out["image"], old_x, atol=1e-5) and torch.allclose(out["target"], old_t)
    again = transform(batch, train=True, epoch=2)
    assert torch.equal(again["target"], out["target"])  # reproducible from (seed, epoch, keys)
    other = transform({**batch, "key": list("uvwxyz")}, train=True, epoch=2)
    assert not torch.equal(other["target"], out["target"])
    plain = transform(batch, train=False)  # validation: no mixup
    assert torch.equal(plain["target"], t) and torch.equal(plain["image"], x)


def test_datamodule_applies_the_transform_on_transfer_and_evaluation_reuses_it(tmp_path):
    from datamodules import build_datamodule, eval_loader

    ds = make_dataset(tmp_path / "wl", n_train=12, n_val=5, shard_size=6)
    cfg = compose_cfg(ds["manifest"])
    dm = build_datamodule(cfg)
    ((name, loader),) = dm.val_dataloader().items()
    raw = next(iter(loader))
    out = dm.on_after_batch_transfer(raw, 0)
    assert out["image"].dtype == torch.float32 and out["target"].shape == (raw["image"].shape[0], 5)
    ev = eval_loader(cfg, "weak_label", "val")
    assert isinstance(ev.batch_transform, BatchTransform)
    assert torch.equal(ev.batch_transform.to_device(raw, "cpu")["target"], out["target"])


# ------------------------------------------------------------------------------------- metrics


def test_binned_map_equals_torchmetrics_binned_and_exact_mode_equals_exact():
    from torchmetrics.classification import MultilabelAveragePrecision

    g = torch.Generator().manual_seed(0)
    preds = torch.rand(200, 12, generator=g)
    preds[:10] = torch.round(preds[:10] * 4) / 4  # ties and scores exactly on bin edges
    target = (torch.rand(200, 12, generator=g) < 0.25).long()
    target[:, 11] = 0  # a label without positives: left out, not counted as 0
    keep = slice(0, 11)
    binned = WeakLabelMAP(12, thresholds=40)
    exact = WeakLabelMAP(12, exact=True)
    for s in range(0, 200, 32):
        binned.update(preds[s : s + 32], target[s : s + 32])
        exact.update(preds[s : s + 32], target[s : s + 32])
    ref_binned = MultilabelAveragePrecision(num_labels=11, thresholds=40)(preds[:, keep], target[:, keep])
    ref_exact = MultilabelAveragePrecision(num_labels=11)(preds[:, keep], target[:, keep])
    assert binned.compute().item() == pytest.approx(ref_binned.item(), abs=1e-6)
    assert exact.compute().item() == pytest.approx(ref_exact.item(), abs=1e-6)
    assert abs(binned.compute().item() - exact.compute().item()) < 0.02


def test_map_state_is_flat_in_validation_batches_and_bounded_at_100k_labels():
    m = WeakLabelMAP(50)
    m.update(torch.rand(8, 50), torch.rand(8, 50) > 0.8)
    one = m.state_bytes()
    for _ in range(20):
        m.update(torch.rand(8, 50), torch.rand(8, 50) > 0.8)
    assert m.state_bytes() == one == 2 * 50 * MAP_THRESHOLDS * 8
    big = WeakLabelMAP(100_000)
    big.update(torch.rand(2, 100_000), torch.rand(2, 100_000) > 0.999)
    before = big.state_bytes()
    big.update(torch.rand(2, 100_000), torch.rand(2, 100_000) > 0.999)
    assert big.state_bytes() == before <= 200 * 2**20  # 160 MB, whatever the number of val samples
    exact = WeakLabelMAP(50, exact=True)
    exact.update(torch.rand(8, 50), torch.rand(8, 50) > 0.8)
    assert exact.state_bytes() > one  # the exact mode grows: only for passes under EXACT_MAP_MAX_ELEMENTS
    assert EXACT_MAP_MAX_ELEMENTS * 5 <= 100 * 2**20


def test_precision_at_k_breaks_ties_by_label_id_and_refuses_k_above_c():
    from fixtures_eval import weak_label_head_metrics

    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.2, 0.9, 0.9, 0.9]])
    positives = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 1]])
    # row 0: top-2 of three equal scores = labels 0, 1 -> 0 hits; row 1: labels 1, 2 -> 0 hits
    assert precision_at_k(scores, positives, 2).tolist() == [0.0, 0.0]
    assert precision_at_k(scores, positives, 3).tolist() == pytest.approx([1 / 3, 1 / 3])  # row 1: 1, 2, 3
    for k in (1, 2, 3, 4):
        assert precision_at_k(scores, positives, k).mean().item() == pytest.approx(
            weak_label_head_metrics(scores, positives.float(), [k])[f"p@{k}"]
        )
    with pytest.raises(ValueError, match=r"precision@5 needs 1 <= k <= the number of labels \(4\)"):
        precision_at_k(scores, positives, 5)


# --------------------------------------------------------------------------- validation loaders


def test_limit_val_batches_applies_per_dataset_and_every_task_logs_its_metric(tmp_path):
    import lightning as L

    from configs.compose import to_dict
    from datamodules import build_datamodule
    from lit_modules import MultiTaskModule

    ds = make_dataset(tmp_path / "wl", n_train=12, n_val=10, shard_size=6)
    fm = make_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    cfg = compose_cfg(
        ds["manifest"],
        "tasks=multitask",
        f"data.fashion_mnist.root={fm}",
        "model=vit_demo",
        "model.kwargs.depth=1",
        "optim.warmup_steps=0",
    )
    dm = build_datamodule(cfg)
    assert len(dm.val_dataloader()["weak_label"]) == 3  # more weak-label val batches than the limit below
    module = MultiTaskModule(to_dict(cfg), dm.num_classes)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    results = trainer.validate(module, datamodule=dm, verbose=False)  # one dict per val dataloader
    assert trainer.num_val_batches == [1, 1] and len(results) == 2
    metrics = {k: v for r in results for k, v in r.items()}
    assert {"val/weak_label/mAP", "val/weak_label/p@1", "val/clf/fashion/acc", "val/loss"} <= set(metrics)
    assert 0.0 <= metrics["val/clf/fashion/acc"] <= 1.0
    assert module.val_metrics["weak_label_map"].exact  # 2 batches x 4 rows x 5 labels: the exact mode


def test_jpeg_decoder_rule_torchvision_where_pil_draft_cannot_shrink():
    from datamodules.transforms import decode_image

    small = _jpeg(1, size=40)
    out = decode_image(small, draft=30, tensor_jpeg=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == (3, 40, 40)
    pil = np.asarray(decode_image(small, draft=30)).transpose(2, 0, 1)
    assert np.abs(out.numpy().astype(int) - pil.astype(int)).mean() < 2  # both libjpeg-turbo, same pixels nearly
    assert isinstance(decode_image(_jpeg(1, size=80), draft=30, tensor_jpeg=True), Image.Image)  # draft shrinks it
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    assert isinstance(decode_image(buf.getvalue(), 0, tensor_jpeg=True), Image.Image)  # PNG: PIL
    with pytest.raises(OSError):  # a truncated JPEG: torchvision refuses, PIL's error is the counted skip
        decode_image(small[: len(small) // 2], 0, tensor_jpeg=True)
    # evaluation decodes with torchvision (faster there); training keeps PIL (its crop-and-resize is cheaper)
    assert DecodeSample("clustered", 2, None, 0, seed=None).tensor_jpeg
    assert not DecodeSample("clustered", 2, None, 0, seed=1).tensor_jpeg


def test_on_after_batch_transfer_mixes_training_batches_only(tmp_path):
    from types import SimpleNamespace

    from datamodules import build_datamodule

    ds = make_dataset(tmp_path / "wl", n_train=12, n_val=4, shard_size=6)
    dm = build_datamodule(compose_cfg(ds["manifest"], "data.augment.mixup_alpha=0.8"))
    ((_, loader),) = dm.val_dataloader().items()
    raw = next(iter(loader))
    dm.trainer = SimpleNamespace(training=True, current_epoch=0)
    mixed = dm.on_after_batch_transfer({"weak_label": raw}, 0)["weak_label"]["target"]
    dm.trainer = SimpleNamespace(training=False, current_epoch=0)
    plain = dm.on_after_batch_transfer({"weak_label": raw}, 0)["weak_label"]["target"]
    assert set(plain.unique().tolist()) <= {0.0, 1.0}
    assert ((mixed > 0) & (mixed < 1)).any()  # soft multi-hot: timm Mixup ran on the device
    assert torch.equal(mixed, dm.batch_transform(raw, train=True, epoch=0)["target"])  # seeded: reproducible


def _map_on_rank(rank: int, world: int, port: int, exact: bool, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    preds, target = torch.rand(64, 9, generator=g), torch.rand(64, 9, generator=g) < 0.3
    metric = WeakLabelMAP(9, thresholds=20, exact=exact)
    metric.update(preds[rank::world], target[rank::world])  # each rank its share, as EvalStream splits
    out[rank] = float(metric.compute())
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("exact", [False, True])
def test_map_over_two_gloo_ranks_equals_one_process(exact):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_map_on_rank, args=(2, port, exact, out), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    preds, target = torch.rand(64, 9, generator=g), torch.rand(64, 9, generator=g) < 0.3
    single = WeakLabelMAP(9, thresholds=20, exact=exact)
    single.update(preds, target)
    assert out[0] == out[1] == pytest.approx(float(single.compute()), abs=1e-6)
