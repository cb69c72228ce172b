"""Two-process CPU (gloo) jobs for tests/test_multigpu_rules.py, run as ``python tests/fixtures_multigpu.py JOB``.

* ``gradckpt``: a tiny timm ViT with grad checkpointing (``lit_modules.backbones.create_backbone``) and a head that
  gets no gradient, under ``DistributedDataParallel(find_unused_parameters=True)``: forward + backward, 2 steps.
  Prints ``OK <rank>`` per rank.
* ``failfast OUT``: one rank of a 2-process CPU DDP fit built by ``lit_modules.trainer.build_trainer``, started
  from outside as ``srun``/torchrun do (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT`` set by the test; no
  Lightning launcher to kill the other process). Rank 1's training data raises ``CorruptSampleError`` at its
  third sample; rank 0's data is fine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _gradckpt(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lit_modules.backbones import create_backbone

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    torch.manual_seed(0)
    cfg = {"name": "vit_tiny_patch16_224", "grad_checkpointing": True, "kwargs": {"depth": 2, "patch_size": 8}}
    backbone = create_backbone(cfg, 32)
    model = torch.nn.ModuleDict(
        {"backbone": backbone, "used": torch.nn.Linear(backbone.num_features, 3), "unused": torch.nn.Linear(192, 3)}
    )

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["used"](self.m["backbone"](x))  # the "unused" head idles, as interleaved tasks do

    ddp = DistributedDataParallel(Net(), find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(2):
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank * 10 + step))
        loss = ddp(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"OK {rank}", flush=True)
    dist.destroy_process_group()


class CorruptSampleError(ValueError):
    pass


def _failfast(out: str) -> None:
    import torch
    from torch.utils.data import DataLoader

    from configs.compose import compose
    from lit_modules import MultiTaskModule
    from lit_modules.trainer import build_trainer
    from tests.fixtures_model import IMG, NUM_CLASSES, VIT, SyntheticSet
    from tracking.run_dir import RunDir

    rank = int(os.environ["LOCAL_RANK"])

    class RankData(SyntheticSet):
        def __getitem__(self, i: int) -> dict:
            if rank == 1 and i >= 2:
                print(f"FAIL_AT {time.time()}", file=sys.stderr, flush=True)
                raise CorruptSampleError(f"corrupt sample {self.keys[i]} (rank {rank}'s data)")
            return super().__getitem__(i)

    cfg = compose(
        [
            *VIT,
            "tasks=weak_label",
            f"data.img_size={IMG}",
            "logger=none",
            "trainer=ddp_cpu",
            "trainer.max_steps=200",
            "trainer.checkpoint_every_n_steps=1000",
            "trainer.gradient_clip_val=null",
            "optim.warmup_steps=0",
            f"output_dir={out}",
            "run_name=failfast",
        ]
    )
    from configs.compose import to_dict

    module = MultiTaskModule(to_dict(cfg), {"weak_label": NUM_CLASSES["weak_label"]})
    loader = {"weak_label": DataLoader(RankData("weak_label", 64), batch_size=1)}
    trainer = build_trainer(cfg, RunDir.for_config(cfg), enable_checkpointing=False)
    torch.manual_seed(0)
    trainer.fit(module, train_dataloaders=loader)
    print(f"finished {rank}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    import torch.multiprocessing as mp

    job, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if job == "gradckpt":
        mp.spawn(_gradckpt, args=(2, port), nprocs=2, join=True)
    elif job == "failfast":
        _failfast(sys.argv[3])
    else:
        raise SystemExit(f"unknown job {job}")
