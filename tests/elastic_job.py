"""One rank of a data-only elastic-resume job (tests/test_elastic_resume.py), launched by ``torch.distributed.run``
on gloo: builds the run's DataModule as training does, iterates the epoch's training steps, records the sample keys
it consumed and, at step ``--save-at``, writes the data position Lightning would checkpoint (a collective).

    python -m torch.distributed.run --nproc-per-node=R tests/elastic_job.py CONFIG.json OUT_DIR [--save-at K]
        [--resume STATE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import build_datamodule  # noqa: E402
from tests.fixtures_data import compose_cfg  # noqa: E402


class GlooStrategy:
    """The two things the DataModule asks of a Lightning strategy: the device and an all-gather."""

    root_device = torch.device("cpu")

    def __init__(self, world: int) -> None:
        self.world_size = world

    def all_gather(self, tensor: torch.Tensor, group=None, sync_grads: bool = False) -> torch.Tensor:
        out = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return torch.stack(out)

    def reduce(self, tensor: torch.Tensor, group=None, reduce_op="sum") -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--save-at", type=int, default=-1)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = json.loads(Path(args.config).read_text())
    dm = build_datamodule(compose_cfg(spec["manifest"], *spec["overrides"]))
    dm.trainer = SimpleNamespace(
        global_rank=rank,
        world_size=world,
        strategy=GlooStrategy(world),
        state=SimpleNamespace(fn="fit"),
        current_epoch=0,
        sanity_checking=False,
    )
    loader = dm.train_dataloader()
    start = 0
    if args.resume:
        state = json.loads(Path(args.resume).read_text())
        loader.load_state_dict(state)
        start = state["batches"]
    keys, saved = [], None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = start
    for batch in loader:
        keys.append(batch["weak_label"]["key"])
        step += 1
        if step == args.save_at:
            saved = loader.state_dict()
    if saved is not None and rank == 0:
        (out / "state.json").write_text(json.dumps(saved))
    (out / f"rank{rank}.json").write_text(json.dumps({"keys": keys, "start": start, "length": len(loader)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
