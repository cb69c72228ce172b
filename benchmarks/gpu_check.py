"""One-call GPU check of the training stack on one GPU (H100/H200 class: under 8 minutes), or a CPU smoke run.

What it does, on real webdataset shards in the repo's format (synthetic noise JPEGs written by the repo's shard
fixture, ``tests/fixtures_data.make_dataset``, with webdataset's ShardWriter; noise JPEGs decode slower than
photos, so the loader figures are conservative), through the repo's own DataModule, LightningModule and Trainer:

1. Loader only: images/s of the weak-label training loader (decode, RandomResizedCrop, ...) with
   ``--workers`` workers, nothing on the GPU.
2. Training, bf16-mixed, 224 px: ViT-B/16 and ResNet-50 without and with ``model.compile`` (compiled in
   ``on_fit_start``, after wrapping), ViT-L/16 with activation checkpointing. Per case: images/s over the steps
   after ``--warmup``, MFU = (forward + backward FLOPs per image, counted by Lightning's ``measure_flops`` on a
   meta-device twin) x images/s / the GPU's dense bf16 peak (``lightning.fabric.utilities.throughput.
   get_available_flops``), peak GPU memory, and the bottleneck: "loader" when loader-only images/s is below
   1.1 x the training images/s, else "gpu".
3. Checkpoints, world size 1: ``trainer=fsdp`` (state_dict_type=sharded: ``last.ckpt/`` is a folder) and
   ``trainer=ddp``: train, save, resume with ``resume=auto`` (``lit_modules.trainer.resume_checkpoint``) and
   check the step continues.
4. Evaluation of the sharded checkpoint on the GPU and on the CPU (``eval.precision=fp32``): metrics compared.

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default: ``$OUT`` when set, else
benchmarks/results/gpu_check).

    python benchmarks/gpu_check.py                  # one GPU, everything (< 8 min on an H100/H200)
    python benchmarks/gpu_check.py --smoke          # CPU, tiny models, 64 px, a few steps (CI: < 60 s)

Needs: torch, lightning, timm, torchmetrics and the pure-Python wheels omegaconf, webdataset (plus pillow and
numpy, which torchvision/torch bring). No W&B (logger=none), no network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# (name, model overrides, batch size) of the training cases; --smoke swaps in tiny models.
GPU_CASES = [
    ("vit_b16", ["model=vit_b16"], 256),
    ("vit_b16_compile", ["model=vit_b16", "model.compile=true"], 256),
    ("resnet50", ["model=resnet50"], 256),
    ("resnet50_compile", ["model=resnet50", "model.compile=true"], 256),
    ("vit_l16_act_ckpt", ["model=vit_l16", "model.grad_checkpointing=true"], 256),
]
SMOKE_CASES = [
    ("vit_demo", ["model=vit_demo", "model.kwargs.depth=1"], 8),
    ("vit_demo_compile", ["model=vit_demo", "model.kwargs.depth=1", "model.compile=true"], 8),
    ("resnet10t", ["model=resnet_demo", "model.name=resnet10t"], 8),
    ("vit_demo_act_ckpt", ["model=vit_demo", "model.kwargs.depth=1", "model.grad_checkpointing=true"], 8),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, 64 px, a few steps")
    p.add_argument("--out", default=os.environ.get("OUT") and str(Path(os.environ["OUT"]) / "gpu_check"))
    p.add_argument("--steps", type=int, default=None, help="training steps per case (default 120; smoke 4)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 30; smoke 1)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: CPUs - 2; smoke 0)")
    p.add_argument("--cases", nargs="*", default=None, help="training case names to run (default: all)")
    p.add_argument("--train-images", type=int, default=None, help="distinct training images (default 6144)")
    p.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default inductor; smoke: eager, no C++)"
    )
    args = p.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (3 if smoke else 120)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 30)
    args.workers = args.workers if args.workers is not None else (0 if smoke else max(1, (os.cpu_count() or 4) - 2))
    args.train_images = args.train_images or (48 if smoke else 6144)
    args.compile_backend = args.compile_backend or ("eager" if smoke else "inductor")
    args.img_size = 64 if smoke else 224
    args.out = Path(args.out or REPO / "benchmarks" / "results" / "gpu_check")
    return args


def make_shards(root: Path, args: argparse.Namespace) -> str:
    from tests.fixtures_data import make_dataset

    size = args.img_size + args.img_size // 7  # a short side a little above the crop, as web images are resized
    data = make_dataset(
        root,
        n_train=args.train_images,
        n_val=16 if args.smoke else 256,
        shard_size=16 if args.smoke else 256,
        num_raw=100,
        num_clustered=50,
        img_size=size,
        scales=(1.0,),
    )
    return data["manifest"]


def base_overrides(args: argparse.Namespace, manifest: str, out: Path) -> list[str]:
    return [
        "tasks=weak_label",
        "logger=none",
        "trainer=cpu" if args.smoke else "trainer=gpu",
        f"data.weak_label.manifest={manifest}",
        f"data.img_size={args.img_size}",
        f"data.num_workers={args.workers}",
        "data.shuffle_buffer=256",
        "optim.warmup_steps=0",
        "trainer.val_check_interval=100000",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=50",
        f"output_dir={out / 'runs'}",
    ]


class StepTimer:
    """Lightning callback: wall time between the end of step ``warmup`` and the end of the last step (CUDA
    synchronised at both ends only), and the first global step of the fit (to check a resume)."""

    def __new__(cls, warmup: int):
        import lightning.pytorch as pl

        class _Timer(pl.Callback):
            def __init__(self):
                self.warmup, self.t0, self.t1, self.timed_steps, self.first_step = warmup, None, None, 0, None

            def _sync(self, pl_module):
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize(pl_module.device)

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if self.first_step is None:
                    self.first_step = trainer.global_step

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                step = trainer.global_step - (self.first_step or 0)
                if step == self.warmup:
                    self._sync(pl_module)
                    self.t0 = time.perf_counter()
                elif step > self.warmup:
                    self.timed_steps = step - self.warmup
                    if trainer.global_step >= trainer.max_steps:
                        self._sync(pl_module)
                        self.t1 = time.perf_counter()

        return _Timer()


def loader_images_per_sec(cfg, batches: int) -> float:
    from datamodules import build_datamodule

    dm = build_datamodule(cfg)
    it = iter(dm.train_dataloader())
    next(it)  # workers started, first shards opened
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        n += sum(int(part["image"].shape[0]) for part in batch.values())
    return n / (time.perf_counter() - start)


def train_flops_per_image(config: dict, num_classes: dict) -> int:
    """Forward + backward FLOPs of one image, counted by Lightning's measure_flops on a meta-device twin."""
    import copy

    from lightning.fabric.utilities.throughput import measure_flops

    from lit_modules import MultiTaskModule

    twin_cfg = copy.deepcopy(config)
    twin_cfg["model"].update(compile=False, grad_checkpointing=False, channels_last=False)
    size = int(config["data"]["img_size"])
    with torch.device("meta"):
        twin = MultiTaskModule(twin_cfg, num_classes)
        x = torch.empty(2, 3, size, size)
    flops = measure_flops(twin, lambda: twin.forward_all_heads(x), lambda out: sum(v.sum() for v in out.values()))
    return int(flops) // 2


def train_case(name: str, overrides: list[str], batch: int, args, manifest: str, out: Path, loader_ips: float) -> dict:
    from lightning.fabric.utilities.throughput import get_available_flops
    from lightning.pytorch import seed_everything

    from configs.compose import compose, to_dict
    from datamodules import build_datamodule
    from lit_modules import MultiTaskModule
    from lit_modules.callbacks import available_flops
    from lit_modules.trainer import build_trainer
    from tracking.run_dir import RunDir

    cfg = compose(
        [
            *base_overrides(args, manifest, out),
            *overrides,
            f"data.batch_size={batch}",
            f"trainer.max_steps={args.steps}",
            f"run_name={name}",
        ]  # fmt: skip
    )
    seed_everything(0)
    dm = build_datamodule(cfg)
    module = MultiTaskModule(to_dict(cfg), dm.num_classes)
    flops = train_flops_per_image(to_dict(cfg), dm.num_classes)
    timer = StepTimer(args.warmup)
    trainer = build_trainer(cfg, RunDir.for_config(cfg), callbacks=[timer], enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    seconds = (timer.t1 or time.perf_counter()) - (timer.t0 or time.perf_counter())
    ips = timer.timed_steps * batch / seconds if seconds > 0 and timer.timed_steps else float("nan")
    device = trainer.strategy.root_device
    # The repo's dense bf16 table first (Lightning's has no plain "NVIDIA H200" and quotes sparse peaks), then Lightning's.
    peak = available_flops(device, get_available_flops(device, torch.bfloat16)) if device.type == "cuda" else None
    row = {
        "case": name,
        "model": str(cfg.model.name),
        "batch": batch,
        "img_size": args.img_size,
        "compile": bool(cfg.model.compile),
        "grad_checkpointing": bool(cfg.model.grad_checkpointing),
        "steps_timed": timer.timed_steps,
        "images_per_sec": round(ips, 1),
        "train_gflops_per_image": round(flops / 1e9, 2),
        "mfu": round(flops * ips / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "loader_images_per_sec": round(loader_ips, 1),
        "bottleneck": "loader" if loader_ips < 1.1 * ips else "gpu",
        "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(json.dumps(row), flush=True)
    return row


def checkpoint_case(strategy: str, args, manifest: str, out: Path) -> dict:
    """Train 4 steps with checkpoints every 2, then resume=auto to step 6: a sharded folder under fsdp."""
    from lightning.pytorch import seed_everything

    from configs.compose import compose, to_dict
    from datamodules import build_datamodule
    from lit_modules import MultiTaskModule
    from lit_modules.checkpoints import is_sharded_checkpoint
    from lit_modules.trainer import build_trainer, resume_checkpoint
    from tracking.run_dir import RunDir

    model = ["model=vit_demo", "model.kwargs.depth=1"] if args.smoke else ["model=vit_s16"]
    hardware = ["trainer=ddp_cpu", "trainer.devices=1"] if args.smoke else [f"trainer={strategy}", "trainer.devices=1"]
    result = {"strategy": strategy}
    resume: list[str] = []
    for max_steps in (4, 6):
        cfg = compose(
            [*base_overrides(args, manifest, out), *model, *hardware, "data.batch_size=8", "data.num_workers=0",
             f"trainer.max_steps={max_steps}", "trainer.checkpoint_every_n_steps=2", f"run_name=ckpt-{strategy}",
             *resume]
        )  # fmt: skip
        seed_everything(0)
        run_dir = RunDir.for_config(cfg)
        run_dir.start(cfg)  # config.yaml, which evaluate.py reads next to the checkpoint
        dm = build_datamodule(cfg)
        module = MultiTaskModule(to_dict(cfg), dm.num_classes)
        timer = StepTimer(0)
        trainer = build_trainer(cfg, run_dir, callbacks=[timer])
        ckpt = resume_checkpoint(cfg, run_dir)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        result[f"fit_to_{max_steps}"] = {
            "resumed_from": ckpt,
            "first_step": timer.first_step,
            "end": trainer.global_step,
        }
        run_dir.finish()
        # Training on to more steps changes the run's schedule, so its identity: continued explicitly.
        resume = [f"resume={run_dir.last_checkpoint}"]
    last = run_dir.last_checkpoint
    if args.smoke and strategy == "fsdp":  # Lightning runs FSDP on GPUs only: write the same folder with its writer
        from lightning.pytorch.strategies import FSDPStrategy

        sharded = last.parent / "sharded.ckpt"
        FSDPStrategy(state_dict_type="sharded").save_checkpoint(torch.load(last, weights_only=True), sharded)
        last = sharded
    result.update(
        last=str(last),
        sharded_folder=is_sharded_checkpoint(last),
        layout=sorted(p.name for p in last.iterdir()) if last.is_dir() else None,
        ok=result["fit_to_6"]["first_step"] == 4 and result["fit_to_6"]["end"] == 6,
    )
    print(json.dumps(result), flush=True)
    return result


def eval_case(ckpt: str, args) -> dict:
    """Evaluate ``ckpt`` on the GPU and on the CPU (fp32 both) and compare every metric."""
    from configs.compose import load_run_config
    from evaluation.checkpoint import resolve_checkpoint, run_config_path
    from evaluation.runner import evaluate_run

    path, run = resolve_checkpoint(ckpt)
    devices = ["cpu", "cpu"] if args.smoke else ["cuda", "cpu"]
    scores, seconds = {}, {}
    # Training ran with TF32 matmuls ("high"); the comparison is of true fp32 evaluation on both devices.
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    for i, device in enumerate(devices):
        keys = ["eval.datasets=[weak_label_val]", "eval.features=[backbone]", "eval.ks=[1,5]", "eval.knn_k=5"]
        cfg = load_run_config(run_config_path(path, run), [*keys, f"eval.device={device}", "eval.precision=fp32"])
        start = time.perf_counter()
        scores[f"{device}{i}"] = evaluate_run(cfg, checkpoint=path, run_dir=run / f"eval-{device}{i}", progress=False)
        seconds[f"{device}{i}"] = round(time.perf_counter() - start, 2)
    torch.set_float32_matmul_precision(matmul_precision)
    a, b = scores.values()
    diffs = {k: abs(a[k] - b[k]) for k in a if isinstance(a[k], float) and a[k] == a[k] and b.get(k) == b.get(k)}
    result = {
        "checkpoint": str(path),
        "devices": devices,
        "seconds": seconds,
        "metrics": len(a),
        "max_abs_diff": max(diffs.values(), default=0.0),
        "worst_metric": max(diffs, key=diffs.get) if diffs else None,
    }
    print(json.dumps(result), flush=True)
    return result


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({report['device']}, torch {report['torch']}, {report['when']})",
        "",
        f"Loader only: {report['loader_images_per_sec']:.0f} images/s with {report['workers']} workers.",
        "",
        "| case | batch | img/s | MFU | train GFLOPs/img | peak mem GiB | loader img/s | bottleneck |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['images_per_sec']:.0f} | {mfu} | {r['train_gflops_per_image']} | "
            f"{r['peak_memory_gib'] if r['peak_memory_gib'] is not None else 'n/a'} | "
            f"{r['loader_images_per_sec']:.0f} | {r['bottleneck']} |"
        )
    lines += ["", "| checkpoint | resumed from | steps | sharded folder | layout | ok |", "|---|---|---|---|---|---|"]
    for c in report["checkpoints"]:
        second = c["fit_to_6"]
        lines.append(
            f"| {c['strategy']} | {Path(second['resumed_from'] or '-').name} | {second['first_step']}->"
            f"{second['end']} | {c['sharded_folder']} | {c['layout']} | {c['ok']} |"
        )
    e = report["eval"]
    lines += [
        "",
        f"Evaluation of `{Path(e['checkpoint']).name}` on {e['devices'][0]} vs {e['devices'][1]} (fp32): "
        f"{e['metrics']} metrics, max |diff| {e['max_abs_diff']:.2e} ({e['worst_metric']}); seconds {e['seconds']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke on a CPU machine")
    if args.compile_backend != "inductor":  # model.compile compiles in place with nn.Module.compile(): pick backend
        compile_in_place = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, **kw: compile_in_place(self, backend=args.compile_backend)
    torch.set_float32_matmul_precision("high")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.rmtree(out / "runs", ignore_errors=True)  # this script's own runs: a rerun must not resume them
    start = time.perf_counter()
    manifest = make_shards(out / "shards", args)
    print(f"shards written in {time.perf_counter() - start:.1f} s", flush=True)

    from configs.compose import compose

    cases = SMOKE_CASES if args.smoke else GPU_CASES
    if args.cases:
        cases = [c for c in cases if c[0] in args.cases]
    loader_batch = cases[0][2] if cases else 8
    loader_cfg = compose([*base_overrides(args, manifest, out), *cases[0][1], f"data.batch_size={loader_batch}"])
    loader_ips = loader_images_per_sec(loader_cfg, batches=3 if args.smoke else 40)
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu",
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "smoke": args.smoke,
        "workers": args.workers,
        "loader_images_per_sec": round(loader_ips, 1),
        "train": [train_case(n, o, b, args, manifest, out, loader_ips) for n, o, b in cases],
        "checkpoints": [checkpoint_case(s, args, manifest, out) for s in ("fsdp", "ddp")],
    }
    report["eval"] = eval_case(report["checkpoints"][0]["last"], args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
