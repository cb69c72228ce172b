"""Lightning overhead: the same model, data and optimizer in a plain PyTorch loop vs MultiTaskModule + Trainer.

Both sides train the repo's MultiTaskModule (same config, same initial weights, same synthetic dict
batches from the same DataLoaders, same timm AdamW + warmup/cosine schedule, gradient clipping at 1.0).
The plain loop calls ``module.compute_losses`` directly; the Lightning side runs ``Trainer.fit`` with
the module's ``training_step`` (logging, the non-finite-loss guard, hooks). Rounds alternate
plain/Lightning (ABBA order) to cancel drift on a shared machine; each round drops its first steps
(warm-up) and times the rest from the end of one step to the end of the next, so start-up is excluded.

    python benchmarks/bench_lightning_overhead.py            # the 6-block demo ViT at 32 px: about 1 minute
    python benchmarks/bench_lightning_overhead.py --rounds 2 --steps 4 --warmup 2 --batch-size 4   # smoke

Prints per-round and median step times of each side, wall-clock and process CPU time, and the ratio
(target: Lightning <= 1.05 x plain). With one torch thread and in-process data loading, process CPU
time is the work each side does, unaffected by other processes sharing the cores; wall time is shown too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from configs.compose import compose, to_dict  # noqa: E402
from lit_modules import MultiTaskModule  # noqa: E402

NUM_CLASSES = {"weak_label": 100, "fashion_mnist": 10}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_demo", help="configs/model preset (default: the CPU demo ViT)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="per dataset (2 datasets per step)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=10, help="rounds per side, interleaved")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work done)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> dict:
    return to_dict(
        compose(
            [
                f"model={args.model}",
                "tasks=multitask",
                f"data.img_size={args.img_size}",
                "logger=none",
                "trainer=cpu",
                f"trainer.max_steps={args.steps + args.warmup}",
                "trainer.gradient_clip_val=1.0",
                "optim.warmup_steps=2",
            ]
        )
    )


def make_loaders(args: argparse.Namespace) -> dict[str, DataLoader]:
    """One epoch covers a whole round, so no epoch boundary falls inside the timed steps."""
    n = args.batch_size * (args.steps + args.warmup)
    g = torch.Generator().manual_seed(0)
    images = lambda: torch.randn(n, 3, args.img_size, args.img_size, generator=g)  # noqa: E731
    weak = (torch.rand(n, NUM_CLASSES["weak_label"], generator=g) > 0.95).float()
    weak[torch.arange(n), torch.randint(0, NUM_CLASSES["weak_label"], (n,), generator=g)] = 1.0
    fashion = torch.randint(0, 10, (n,), generator=g)
    sets = {"weak_label": TensorDataset(images(), weak), "fashion_mnist": TensorDataset(images(), fashion)}
    return {ds: DataLoader(s, batch_size=args.batch_size, collate_fn=_collate) for ds, s in sets.items()}


def _collate(rows):
    image, target = torch.utils.data.default_collate(rows)
    return {"image": image, "target": target, "key": [str(i) for i in range(len(rows))]}


class _Combined:
    """Plain-PyTorch stand-in for a CombinedLoader: zip the per-dataset loaders into dict batches."""

    def __init__(self, loaders: dict[str, DataLoader]):
        self.loaders = loaders

    def __iter__(self):
        for parts in zip(*self.loaders.values()):
            yield dict(zip(self.loaders, parts))


def fresh_module(cfg: dict) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(cfg, NUM_CLASSES)


def run_plain(cfg: dict, args: argparse.Namespace) -> list[float]:
    module = fresh_module(cfg).train()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    stamps = []
    for batch in _Combined(make_loaders(args)):
        opt.zero_grad(set_to_none=True)
        total, _, _ = module.compute_losses(batch)
        total.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        stamps.append((time.perf_counter(), time.process_time()))
    return stamps


class _Stamps(pl.Callback):
    def __init__(self):
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps.append((time.perf_counter(), time.process_time()))


def run_lightning(cfg: dict, args: argparse.Namespace) -> list[float]:
    from lightning.pytorch.utilities import CombinedLoader

    module = fresh_module(cfg)
    stamps = _Stamps()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps + args.warmup,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[stamps],
    )
    trainer.fit(module, train_dataloaders=CombinedLoader(make_loaders(args), mode="max_size_cycle"))
    return stamps.stamps


def step_time(stamps: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds between step ends after the warm-up steps."""
    timed = stamps[warmup - 1 :] if warmup >= 1 else stamps
    steps = len(timed) - 1
    return (timed[-1][0] - timed[0][0]) / steps, (timed[-1][1] - timed[0][1]) / steps


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = make_config(args)
    wall: dict[str, list[float]] = {"plain": [], "lightning": []}
    cpu: dict[str, list[float]] = {"plain": [], "lightning": []}
    for r in range(args.rounds):
        order = ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain")
        for side in order:
            stamps = run_plain(cfg, args) if side == "plain" else run_lightning(cfg, args)
            w, c = step_time(stamps, args.warmup)
            wall[side].append(w)
            cpu[side].append(c)
        print(
            f"round {r}: wall plain {wall['plain'][-1] * 1e3:7.2f} / lightning {wall['lightning'][-1] * 1e3:7.2f} ms"
            f" (x{wall['lightning'][-1] / wall['plain'][-1]:.3f});  cpu plain {cpu['plain'][-1] * 1e3:7.2f} / "
            f"lightning {cpu['lightning'][-1] * 1e3:7.2f} ms (x{cpu['lightning'][-1] / cpu['plain'][-1]:.3f})",
            flush=True,
        )
    images = 2 * args.batch_size
    print(
        f"\nmodel={args.model} img={args.img_size} batch={args.batch_size}x2 datasets, {args.rounds} rounds x "
        f"{args.steps} timed steps, {args.threads} threads, torch {torch.__version__}, lightning {pl.__version__}"
    )
    result = {}
    for label, table in (("wall-clock", wall), ("process CPU", cpu)):
        plain, light = statistics.median(table["plain"]), statistics.median(table["lightning"])
        ratio = light / plain
        print(
            f"{label:>11} step time (median of rounds): plain {plain * 1e3:8.2f} ms ({images / plain:6.1f} img/s), "
            f"Lightning {light * 1e3:8.2f} ms ({images / light:6.1f} img/s), ratio {ratio:.3f}"
        )
        paired = statistics.median(lt / pt for lt, pt in zip(table["lightning"], table["plain"]))
        result[label] = {
            "plain_step_s": plain,
            "lightning_step_s": light,
            "ratio": ratio,
            "paired_ratio": paired,
            "rounds": table,
        }
    paired = result["process CPU"]["paired_ratio"]
    print(
        f"median of per-round ratios: wall {result['wall-clock']['paired_ratio']:.3f}, process CPU {paired:.3f}\n"
        f"ratio lightning/plain (process CPU, median of the {args.rounds} side-by-side rounds): {paired:.3f} "
        f"(target <= 1.05: {'met' if paired <= 1.05 else 'NOT met'})"
    )
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
