"""The length Lightning gives the epoch a run resumes on another world size (``TrainLoader.__len__``, ``EpochLength``).

Lightning computes its per-loader limit from ``len(loader)`` before it restores the loader's position
(``FitLoop.setup_data``), and then clamps the epoch to that limit; on more ranks the rest of the interrupted epoch is
longer than a fresh epoch there, so the clamp ended the epoch early and silently dropped the batches left.

In process: the resumed run is rank 0 of 2 (``TrainLoader`` and ``EpochSampler`` take rank and world size as arguments;
each rank of a real 2-rank run computes its length alone, so one rank is enough to see the length it trains on).
"""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch
from omegaconf import OmegaConf

N, BATCH, SAVE_AT = 40, 2, 4  # 20 global batches: 20 steps an epoch on 1 rank, 10 on 2


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(1), "target": 0, "key": f"s{i:03d}"}


def _fit(tmp, rank: int, world: int, max_steps: int, ckpt: str | None = None, save_every: int = 0) -> list:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from datamodules.loaders import MapSource
    from datamodules.resume import EpochClock, PassLoader, TrainLoader
    from lit_modules.trainer import EpochLength

    class Data(L.LightningDataModule):
        def train_dataloader(self) -> TrainLoader:
            clock = EpochClock(lambda: self.trainer)
            source = MapSource("m", Items(), OmegaConf.create({"batch_size": BATCH, "num_workers": 0}), 0, rank, world)
            return TrainLoader({"m": PassLoader("m", source, clock)}, "combined", {}, 0, clock, rank, world)

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list = []

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            self.seen.append((self.current_epoch, batch_idx, list(batch["m"]["key"])))
            return (self.w**2).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callbacks = [EpochLength()]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp, every_n_train_steps=save_every, save_top_k=-1, filename="{step}"))
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        enable_checkpointing=bool(save_every),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=Data(), ckpt_path=ckpt)
    return model.seen


@pytest.mark.parametrize("world", [2, 1])
def test_a_resume_on_more_ranks_trains_the_whole_rest_of_the_interrupted_epoch(tmp_path, world):
    """Saved on 1 rank after 4 of its 20 steps: 16 global batches are left, 8 steps on each of 2 ranks, so epoch 0
    is 4 + 8 steps long there (on 1 rank, 4 + 16), and every batch left is trained on before epoch 1 starts."""
    _fit(tmp_path, 0, 1, max_steps=SAVE_AT + 1, save_every=SAVE_AT)
    seen = _fit(tmp_path, 0, world, max_steps=SAVE_AT + 16 // world + 2, ckpt=str(tmp_path / f"step={SAVE_AT}.ckpt"))
    epoch0 = [(i, keys) for e, i, keys in seen if e == 0]
    assert [i for i, _ in epoch0] == list(range(SAVE_AT, SAVE_AT + 16 // world))
    assert [e for e, _, _ in seen[len(epoch0) :]] == [1, 1]  # then the next epoch, from its start
    assert seen[len(epoch0)][1] == 0
    # Rank 0 trains on global batches 4, 6, ..., 18 (rank 1 on 5, 7, ..., 19): what the 1-rank run had left.
    from datamodules.loaders import EpochSampler, mix_seed

    sampler = EpochSampler(N, BATCH, 0, world, mix_seed(0, zlib.crc32(b"m")))
    sampler.set_pass(0, 0, SAVE_AT)
    order = list(sampler)
    assert [k for _, keys in epoch0 for k in keys] == [f"s{i:03d}" for i in order]


def _loader(rank: int, world: int, n: int = N):
    from datamodules.loaders import MapSource
    from datamodules.resume import EpochClock, PassLoader, TrainLoader

    clock = EpochClock()  # no trainer: epoch 0
    source = MapSource("m", Items(n), OmegaConf.create({"batch_size": BATCH, "num_workers": 0}), 0, rank, world)
    return TrainLoader({"m": PassLoader("m", source, clock)}, "combined", {}, 0, clock, rank, world)


def _steps(loader, n: int | None = None) -> list[str]:
    keys: list[str] = []
    for i, step in enumerate(loader):
        keys.extend(step["m"]["key"])
        if n is not None and i + 1 == n:
            break
    return keys


@pytest.mark.parametrize("first,second", [(1, 2), (2, 1)])
def test_a_second_resume_on_the_same_new_cluster_keeps_the_interrupted_epochs_length(first, second):
    """Epoch 0 saved on ``first`` ranks after 4 steps, resumed on ``second`` ranks, saved again 2 steps later and
    resumed once more on ``second`` ranks (a requeued job preempted twice): the epoch keeps the length of the first
    resume and, over the three runs, every sample of the epoch is read once. (On more ranks a fresh epoch is shorter,
    so taking its length skipped batches; on fewer ranks longer, so the epoch went on into the next pass.)"""
    keys: list[str] = []
    runs = [_loader(r, first) for r in range(first)]
    for loader in runs:
        keys += _steps(loader, SAVE_AT)
    state = runs[0].state_dict()
    runs = [_loader(r, second) for r in range(second)]
    for loader in runs:
        loader.load_state_dict(state)
        keys += _steps(loader, 2)
    length = len(runs[0])
    assert length == SAVE_AT + (N // BATCH - SAVE_AT * first) // second
    state = runs[0].state_dict()
    runs = [_loader(r, second) for r in range(second)]
    for loader in runs:
        loader.load_state_dict(state)
        assert len(loader) == length
        keys += _steps(loader)
    assert sorted(keys) == [f"s{i:03d}" for i in range(N)]


@pytest.mark.parametrize("second_resume", [False, True])
def test_a_map_dataset_resumed_on_more_ranks_ends_the_interrupted_epoch_inside_its_pass(second_resume):
    """26 samples, 13 global batches; saved on 2 ranks after 1 step (2 global batches), resumed on 4: the 11 left are
    3 more steps on each of the 4 ranks (TrainLoader's rule, rounded up like the stream's cut plans), so the pass is
    padded with 1 global batch read again, and the epoch ends inside pass 0: every sample read, 2 of them twice (before,
    EpochSampler gave each rank 2 batches and the third step started pass 1: 6 samples skipped, 8 read twice). With
    ``second_resume`` the 4 ranks save after 1 more step and resume on 4 again: the padded pass stays padded."""
    keys: list[str] = []
    runs = [_loader(r, 2, n=26) for r in range(2)]
    for loader in runs:
        keys += _steps(loader, 1)
    state = runs[0].state_dict()
    runs = [_loader(rank, 4, n=26) for rank in range(4)]
    for loader in runs:
        loader.load_state_dict(state)
        assert len(loader) == 1 + 3
        if second_resume:
            keys += _steps(loader, 1)
    if second_resume:
        state = runs[0].state_dict()
        runs = [_loader(rank, 4, n=26) for rank in range(4)]
        for loader in runs:
            loader.load_state_dict(state)
            assert len(loader) == 1 + 3
    for loader in runs:
        keys += _steps(loader)
        assert loader._passes == {"m": 0}
    assert len(keys) == (2 + 12) * BATCH
    assert sorted(set(keys)) == [f"s{i:03d}" for i in range(26)]
    assert len(keys) - len(set(keys)) == BATCH  # the one padding global batch
