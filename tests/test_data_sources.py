"""Dataset kinds are dispatched in one place (``datamodules.sources``): the names a config may use, their order,
the errors, and a new kind that reaches the config check, the DataModule and evaluate.py's loaders through one
registry entry."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from configs.compose import ConfigError
from datamodules import build_datamodule, eval_loader, sources
from datamodules.loaders import MapSource, map_eval_loader
from datamodules.sources import DatasetSource, dataset_names, retrieval_datasets
from tests.fixtures_data import REPO, compose_cfg


class ToyImages(Dataset):
    """``n`` 16-px images of split ``split``; the class of image ``i`` is ``i % 3``."""

    def __init__(self, n: int, split: str) -> None:
        self.n, self.split = n, split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image = torch.full((3, 16, 16), i, dtype=torch.uint8)
        return {"image": image, "target": i % 3, "key": f"toy/{self.split}/{i}"}


class ToySource(DatasetSource):
    """A dataset kind the repo does not ship: 24 training images, 10 test images, 3 classes."""

    retrieval = {"toy_retrieval": ("train", "test")}
    num_classes = 3
    label_names = ["a", "b", "c"]
    val_split = "test"

    def __init__(self, cfg, name: str) -> None:
        self.cfg, self.name = cfg, name

    @classmethod
    def check_files(cls, cfg) -> None:
        if int(cfg.seed) == 13:
            raise FileNotFoundError("toy: no files for seed 13")

    def train_source(self, rank: int, world: int) -> MapSource:
        return MapSource(self.name, ToyImages(24, "train"), self.cfg.data, int(self.cfg.seed), rank, world)

    def eval_loader(self, split: str, rank: int, world: int):
        return map_eval_loader(ToyImages(10, split), self.cfg.data, rank, world)


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(sources.KINDS, "toy", f"{__name__}:ToySource")


def _toy_cfg(tmp_path, *overrides):
    return compose_cfg(
        str(tmp_path / "unused.json"),  # no task reads the weak-label shards
        "tasks.weak_label.enabled=false",
        "tasks.classifiers={shapes: {dataset: toy}}",
        *overrides,
    )


def test_a_new_kind_is_one_registry_entry(toy_kind, tmp_path):
    cfg = _toy_cfg(tmp_path)  # the config check knows the name from the registry alone
    dm = build_datamodule(cfg)
    assert dm.dataset_names == ["toy"] and dm.num_classes == {"toy": 3} and dm.label_names == {"toy": ["a", "b", "c"]}
    loader = dm.train_dataloader()
    steps = list(loader)
    assert len(steps) == len(loader) == 24 // 4 and all(set(step) == {"toy"} for step in steps)
    assert sorted(k for step in steps for k in step["toy"]["key"]) == sorted(f"toy/train/{i}" for i in range(24))
    val = dm.val_dataloader()
    assert list(val) == ["toy"]
    assert Counter(k for batch in val["toy"] for k in batch["key"]) == Counter(f"toy/test/{i}" for i in range(10))
    assert retrieval_datasets()["toy_retrieval"] == ("toy", "train", "test")  # what evaluate.py's runner reads
    assert len(list(eval_loader(cfg, "toy", "train"))) == 3  # 10 images, eval batches of 4
    with pytest.raises(FileNotFoundError, match="toy: no files for seed 13"):
        eval_loader(_toy_cfg(tmp_path, "seed=13"), "toy", "test")


def test_names_order_and_errors(tmp_path):
    pets = tmp_path / "pets" / "cat"
    pets.mkdir(parents=True)
    cfg = compose_cfg(str(tmp_path / "m.json"), f"data.user_tasks.pets.root={pets.parent}")
    assert dataset_names(cfg) == ["weak_label", "fashion_mnist", "pets"]  # the order the DataModule loads them
    assert set(retrieval_datasets()) == {"fashion_mnist", "weak_label_val"}
    with pytest.raises(ConfigError, match=r"'tasks\.classifiers\.c\.dataset': 'toy' is not one of"):
        compose_cfg(str(tmp_path / "m.json"), "tasks.classifiers={c: {dataset: toy}}")
    # A user task may not take a built-in name: it would silently read the built-in dataset instead.
    with pytest.raises(ConfigError, match=r"'data\.user_tasks\.fashion_mnist': is a built-in dataset's name"):
        compose_cfg(str(tmp_path / "m.json"), f"data.user_tasks.fashion_mnist.root={pets.parent}")


def test_the_registry_imports_no_data_code():
    """configs/compose.py checks dataset names with the registry: that must not load torch or the data stack."""
    code = "import sys, datamodules.sources; print(sorted(m for m in ('torch', 'webdataset', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
