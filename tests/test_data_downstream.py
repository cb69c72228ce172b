"""Fashion-MNIST (IDX), user image folders, multi-task mixing and the evaluation loaders."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DataConfigError, build_datamodule, eval_loader
from datamodules.fashion_mnist import CLASSES, FashionMNIST, load_split, read_idx
from datamodules.image_folder import ImageFolderTask
from datamodules.transforms import image_transform
from tests.fixtures_data import compose_cfg, make_dataset, make_fashion_mnist, write_idx

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
MULTITASK = ["tasks=multitask"]  # weak_label + embedding(weak_label, fashion_mnist) + classifier on fashion_mnist


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd")
    return {
        "wl": make_dataset(root / "wl", n_train=24, n_val=6, shard_size=6),
        "fm": str(make_fashion_mnist(root / "fm", n_train=40, n_test=10)),
    }


def _cfg(data, *overrides):
    return compose_cfg(data["wl"]["manifest"], f"data.fashion_mnist.root={data['fm']}", *overrides)


# -------------------------------------------------------------------------------------- Fashion-MNIST


def test_idx_parsing_and_clear_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", arr)
    assert np.array_equal(read_idx(str(tmp_path / "a-idx3-ubyte.gz")), arr)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(DataConfigError, match="bad.gz is not an IDX file"):
        read_idx(str(tmp_path / "bad.gz"))
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(DataConfigError, match=r"short.gz: IDX header says shape \(10,\)"):
        read_idx(str(tmp_path / "short.gz"))
    with pytest.raises(
        DataConfigError,
        match=r"Fashion-MNIST file not found: .*train-images-idx3-ubyte\.gz "
        r"\(data\.fashion_mnist\.root=",
    ):
        load_split(str(tmp_path), "train")


def test_fashion_mnist_items_limits_and_channels(data):
    transform = image_transform(_cfg(data).data, train=False, grayscale_safe=True)
    full = FashionMNIST(data["fm"], "train", transform)
    first = FashionMNIST(data["fm"], "train", transform, limit=7)
    assert len(full) == 40 and len(first) == 7
    assert np.array_equal(first.images, full.images[:7])  # the limit keeps the first N in file order
    item = first[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8  # normalized on the device
    assert torch.equal(item["image"][0], item["image"][1])  # grayscale replicated to 3 channels
    assert torch.equal(item["image"][0], item["image"][2])
    assert item["target"] == 3 and item["key"] == "fashion_mnist/train/00003"


@pytest.mark.data
def test_debian_fashion_mnist_files():
    if not os.path.isfile(os.path.join(DEBIAN_FASHION, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Debian package dataset-fashion-mnist is not installed ({DEBIAN_FASHION} has no IDX files)")
    images, labels = load_split(DEBIAN_FASHION, "train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert sorted(Counter(labels.tolist()).values()) == [6000] * 10
    test_images, _ = load_split(DEBIAN_FASHION, "test", limit=1000)
    assert test_images.shape == (1000, 28, 28)


# -------------------------------------------------------------------------------------- image folders


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / name)


class _TaskCfg:
    def __init__(self, root=None, manifest=None, val_fraction=0.3):
        self.root, self.manifest, self.val_fraction = root, manifest, val_fraction


def test_image_folder_classes_split_and_unreadable_images(tmp_path, data):
    _write_images(tmp_path / "cats", [f"c{i}.png" for i in range(6)])
    _write_images(tmp_path / "dogs", [f"d{i}.png" for i in range(6)])
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    task = ImageFolderTask("pets", _TaskCfg(root=str(tmp_path)))
    assert task.classes == ["cats", "dogs"] and task.num_classes == 2
    train, val = task.items("train"), task.items("val")
    assert len(train) + len(val) == 13 and not {p for p, _ in train} & {p for p, _ in val}
    assert task.items("train") == train  # stable
    transform = image_transform(_cfg(data).data, train=False)
    everything = [*train, *val]
    broken = next(i for i, (p, _) in enumerate(everything) if p.endswith("broken.png"))
    from datamodules.image_folder import ImageFolderDataset

    as_train = ImageFolderDataset(everything, str(tmp_path), transform, replace_unreadable=True)
    item = as_train[broken]
    assert item["__counts__"] == {"unreadable_image": 1} and not item["key"].endswith("broken.png")
    as_eval = ImageFolderDataset(everything, str(tmp_path), transform, replace_unreadable=False)
    assert as_eval[broken] == {"__skip__": "unreadable_image"}


def test_image_folder_manifests_csv_and_jsonl(tmp_path):
    _write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    (tmp_path / "m.csv").write_text("path,label\nimg/a.png,red\nimg/b.png,blue\nimg/c.png,red\n")
    task = ImageFolderTask("colors", _TaskCfg(manifest=str(tmp_path / "m.csv"), val_fraction=0.0))
    assert task.classes == ["blue", "red"] and sorted(task.items("train")) == [
        ("img/a.png", 1),
        ("img/b.png", 0),
        ("img/c.png", 1),
    ]
    (tmp_path / "m.jsonl").write_text(
        "\n".join(json.dumps({"path": f"img/{n}.png", "label": i}) for i, n in enumerate("abc"))
    )
    assert ImageFolderTask("ids", _TaskCfg(manifest=str(tmp_path / "m.jsonl"))).classes == ["0", "1", "2"]
    (tmp_path / "bad.csv").write_text("file,label\nimg/a.png,red\n")
    with pytest.raises(DataConfigError, match="bad.csv: CSV header must have 'path' and 'label'"):
        ImageFolderTask("bad", _TaskCfg(manifest=str(tmp_path / "bad.csv")))
    with pytest.raises(DataConfigError, match=r"data\.user_tasks\.none: set exactly one of root"):
        ImageFolderTask("none", _TaskCfg())


# -------------------------------------------------------------------------------------- multi-task


def test_num_classes_and_label_names_without_reading_data(data, tmp_path):
    cfg = compose_cfg(data["wl"]["manifest"], *MULTITASK, f"data.fashion_mnist.root={tmp_path / 'missing'}")
    dm = build_datamodule(cfg)
    assert dm.dataset_names == ["weak_label", "fashion_mnist"]
    assert dm.num_classes == {"weak_label": 5, "fashion_mnist": 10}
    assert dm.label_names["fashion_mnist"] == CLASSES and dm.label_names["weak_label"][0] == "cl0"
    with pytest.raises(DataConfigError, match=r"Fashion-MNIST file not found: .*missing"):
        dm.train_dataloader()
    single = build_datamodule(compose_cfg(data["wl"]["manifest"], "tasks=single_task"))
    assert single.dataset_names == ["fashion_mnist"]  # the weak-label manifest is not even needed


def test_combined_mode_every_dataset_every_step(data):
    dm = build_datamodule(_cfg(data, *MULTITASK))
    loader = dm.train_dataloader()
    steps = list(loader)  # one TrainLoader in both modes: steps {dataset: batch}
    assert len(steps) == len(loader) == max(len(v) for v in dm.train_loaders.values())
    for batch in steps:
        assert set(batch) == {"weak_label", "fashion_mnist"}
        fm = batch["fashion_mnist"]
        assert fm["target"].dtype == torch.long and fm["image"].shape == (4, 3, 16, 16) and len(fm["key"]) == 4
        assert fm["image"].dtype == torch.uint8
        wl = batch["weak_label"]
        assert wl["label_ids"].dtype == torch.int32 and wl["label_ids"].shape[0] == 4 and "target" not in wl
        on_device = dm.on_after_batch_transfer(batch, 0)  # what the module gets (no trainer: eval form)
        assert (
            on_device["weak_label"]["target"].shape == (4, 5)
            and on_device["fashion_mnist"]["image"].is_floating_point()
        )
    fm_keys = [k for b in steps for k in b["fashion_mnist"]["key"]]
    per_pass = len(dm.train_loaders["fashion_mnist"]) * 4
    assert len(set(fm_keys[:per_pass])) == per_pass  # one pass: no sample twice


def test_interleave_mode_one_tagged_dataset_per_step_same_on_every_build(data):
    overrides = [*MULTITASK, "data.mixing.mode=interleave", "data.mixing.ratios={weak_label: 1, fashion_mnist: 3}"]
    sequences = []
    for _ in range(2):
        dm = build_datamodule(_cfg(data, *overrides))
        loader = dm.train_dataloader()
        steps = list(loader)
        assert len(steps) == len(loader) == sum(len(v) for v in dm.train_loaders.values())
        assert all(len(b) == 1 for b in steps)
        sequences.append([next(iter(b)) for b in steps])
    assert sequences[0] == sequences[1]
    share = Counter(sequences[0])["fashion_mnist"] / len(sequences[0])
    assert 0.5 < share < 0.95  # drawn by ratio 3:1
    with pytest.raises(DataConfigError, match="data.mixing.ratios must give a ratio for exactly"):
        build_datamodule(_cfg(data, *MULTITASK, "data.mixing.mode=interleave", "data.mixing.ratios={weak_label: 1}"))


def test_val_dataloader_dict_batches_every_sample_once(data):
    dm = build_datamodule(_cfg(data, *MULTITASK, "data.fashion_mnist.test_limit=7"))
    seen = Counter()
    loaders = dm.val_dataloader()
    assert list(loaders) == ["weak_label", "fashion_mnist"]  # a dict: Lightning's sequential mode
    assert [dm.val_dataset_name(i) for i in range(2)] == ["weak_label", "fashion_mnist"]
    for name, loader in loaders.items():
        for b in loader:
            seen.update(f"{name}:{k}" for k in b["key"])
    assert set(seen.values()) == {1}
    assert sum(1 for k in seen if k.startswith("fashion_mnist:")) == 7
    assert {k.split(":", 1)[1] for k in seen if k.startswith("weak_label:")} == set(data["wl"]["val_keys"])


def test_eval_loader_plain_batches(data):
    cfg = _cfg(data, "data.weak_label.label_space=raw", "data.eval_batch_size=4")
    query = list(eval_loader(cfg, "fashion_mnist", "test"))
    assert [len(b["key"]) for b in query] == [4, 4, 2]
    assert [k for b in query for k in b["key"]] == [f"fashion_mnist/test/{i:05d}" for i in range(10)]
    assert set(query[0]) == {"image", "target", "key"}
    gallery = eval_loader(cfg, "fashion_mnist", "train")
    assert sum(len(b["key"]) for b in gallery) == 40
    loader = eval_loader(cfg, "weak_label", "val")
    val = list(loader)
    assert sorted(k for b in val for k in b["key"]) == sorted(data["wl"]["val_keys"])
    assert set(val[0]) == {"image", "label_ids", "label_weights", "key"}
    assert loader.batch_transform.to_device(val[0], "cpu")["target"].shape[1] == 12  # the raw label space
    with pytest.raises(DataConfigError, match="weak_label evaluation reads the 'val' split"):
        eval_loader(cfg, "weak_label", "train")


# ------------------------------------------------------------------------------- class-balanced sampling


def test_epoch_sampler_class_balanced_draws():
    from datamodules.loaders import EpochSampler

    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    plain = EpochSampler(1000, 10, 0, 1, seed=3)
    plain.set_pass(0, 0)
    assert sorted(plain) == list(range(1000))  # off: a permutation, every sample once
    sampler = EpochSampler(1000, 10, 0, 1, seed=3, class_labels=labels)
    shares = np.zeros(3)
    for p in range(4):
        sampler.set_pass(0, p)
        drawn = list(sampler)
        assert len(drawn) == 1000 == len(sampler)
        shares += np.bincount(labels[drawn], minlength=3) / 4000
    assert np.all(np.abs(shares - 1 / 3) < 0.03), shares  # 0.9 / 0.09 / 0.01 in the data
    sampler.set_pass(1, 2)
    first = list(sampler)
    sampler.set_pass(1, 2)
    assert list(sampler) == first  # a pass is a function of (seed, epoch, pass)
    sampler.set_pass(1, 2, start=3)
    assert list(sampler) == first[30:]  # a resumed pass continues where it stopped (3 global batches of 10 in)
    sampler.set_pass(1, 3)
    assert list(sampler) != first
    ranks = []
    for r in range(2):
        s = EpochSampler(1000, 10, r, 2, seed=3, class_labels=labels)
        s.set_pass(1, 2)
        ranks.append(list(s))
    # ranks take turns at the global batches of one draw sequence
    assert [i for pair in zip(*(np.reshape(r, (-1, 10)) for r in ranks)) for b in pair for i in b] == first
    with pytest.raises(ValueError, match="class_labels has shape"):
        EpochSampler(1000, 10, 0, 1, seed=3, class_labels=labels[:5])


def test_class_balanced_key_reaches_a_user_task_loader(tmp_path, data):
    _write_images(tmp_path / "pets" / "cats", [f"c{i}.png" for i in range(30)])
    _write_images(tmp_path / "pets" / "dogs", [f"d{i}.png" for i in range(4)])
    overrides = [
        "tasks=single_task",
        "tasks.classifiers={pets: {dataset: pets}}",
        f"data.user_tasks.pets.root={tmp_path / 'pets'}",
        "data.user_tasks.pets.val_fraction=0.0",
        "data.num_workers=0",
    ]
    shares = {}
    for balanced in (False, True):
        dm = build_datamodule(_cfg(data, *overrides, f"data.user_tasks.pets.class_balanced={balanced}"))
        dm.train_dataloader()
        loader = dm.train_loaders["pets"]
        targets = torch.cat([b["target"] for _ in range(6) for b in loader])
        shares[balanced] = float((targets == 1).float().mean())
    assert shares[False] < 0.2 and 0.35 < shares[True] < 0.65, shares  # dogs are 4 of 34 images
