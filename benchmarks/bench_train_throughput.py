"""Training throughput and MFU of the repo's MultiTaskModule on synthetic data.

On a GPU (defaults): ViT-B/16 at 224 px in bf16 autocast, without and with torch.compile, ViT-L/16 and
ResNet-50 (channels-last), each with the weak-label head and loss (softmax over the normalized
multi-hot target) and fused AdamW, exactly as a pretraining step. Data is one synthetic batch kept
on the device, so the figures are the model's, not the input pipeline's. MFU = 3 x forward FLOPs
(counted with FlopCounterMode, lit_modules.callbacks) x images/s / the device's dense bf16 peak.

    python benchmarks/bench_train_throughput.py                      # GPU, all cases (a few minutes)
    python benchmarks/bench_train_throughput.py --cases vit_b16 vit_b16_compile --steps 30
    python benchmarks/bench_train_throughput.py --smoke              # CPU: tiny models, checks it runs

Public anchor: 1,459 img/s for ViT-B/16 training on one H100 (NVIDIA's JAX recipe); target here
>= 3,000 img/s (about 32 % MFU), stretch 4,000; ViT-L/16 >= 1,000 img/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from configs.compose import compose, to_dict  # noqa: E402
from lit_modules import MultiTaskModule  # noqa: E402
from lit_modules.callbacks import device_peak_flops, mfu  # noqa: E402

WEAK_LABELS = 1000  # label-space size of the synthetic weak-label head


@dataclass
class Case:
    name: str
    overrides: list[str]
    batch_size: int
    compile: bool = False
    extra: list[str] = field(default_factory=list)


GPU_CASES = {
    "vit_b16": Case("vit_b16", ["model=vit_b16"], 256),
    "vit_b16_compile": Case("vit_b16_compile", ["model=vit_b16"], 256, compile=True),
    # Throughput without activation checkpointing (model FLOPs; it fits in 80 GB at this batch).
    "vit_l16": Case("vit_l16", ["model=vit_l16", "model.grad_checkpointing=false"], 128),
    "vit_l16_compile": Case("vit_l16_compile", ["model=vit_l16", "model.grad_checkpointing=false"], 128, compile=True),
    "resnet50": Case("resnet50", ["model=resnet50"], 256),
    "resnet50_compile": Case("resnet50_compile", ["model=resnet50"], 256, compile=True),
}
SMOKE_CASES = {
    "vit_tiny": Case("vit_tiny", ["model=vit_demo", "model.kwargs.depth=2"], 4),
    "resnet10t": Case("resnet10t", ["model=resnet_demo", "model.name=resnet10t"], 4),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cases",
        nargs="*",
        help=f"subset of {sorted(GPU_CASES)} (default: vit_b16, vit_b16_compile, vit_l16, resnet50)",
    )
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, help="override every case's batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation, cuDNN autotuning)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models at 32 px, 2 + 2 steps")
    p.add_argument("--json", help="write the results to this JSON file")
    return p.parse_args(argv)


def build(case: Case, img_size: int, device: torch.device) -> tuple[MultiTaskModule, torch.optim.Optimizer]:
    cfg = to_dict(
        compose(
            [
                *case.overrides,
                "tasks=weak_label",
                f"data.img_size={img_size}",
                "logger=none",
                "trainer=cpu",  # the config's hardware check runs here; the device is chosen below
                f"model.compile={str(case.compile).lower()}",
                "optim.warmup_steps=0",
                *case.extra,
            ]
        )
    )
    torch.manual_seed(0)
    module = MultiTaskModule(cfg, {"weak_label": WEAK_LABELS}).to(device).train()
    return module, module.configure_optimizers()["optimizer"]


def synthetic_batch(batch_size: int, img_size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(batch_size, WEAK_LABELS, generator=g) > 0.995).float()
    target[torch.arange(batch_size), torch.randint(0, WEAK_LABELS, (batch_size,), generator=g)] = 1.0
    image = torch.randn(batch_size, 3, img_size, img_size, generator=g)
    return {"weak_label": {"image": image.to(device), "target": target.to(device), "key": [""] * batch_size}}


def train_step(module: MultiTaskModule, opt: torch.optim.Optimizer, batch: dict, bf16: bool) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=batch["weak_label"]["image"].device.type, dtype=torch.bfloat16, enabled=bf16):
        total, _, _ = module.compute_losses(batch)
    total.backward()
    opt.step()


def measure(case: Case, args: argparse.Namespace, device: torch.device) -> dict:
    bf16 = device.type == "cuda"
    batch_size = args.batch_size or case.batch_size
    module, opt = build(case, args.img_size, device)
    flops = module.count_flops(batch_size=1)
    batch = synthetic_batch(batch_size, args.img_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        train_step(module, opt, batch, bf16)
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(module, opt, batch, bf16)
    sync()
    elapsed = time.perf_counter() - t0
    ips = batch_size * args.steps / elapsed
    peak = device_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    result = {
        "case": case.name,
        "model": module.cfg["model"]["name"],
        "compile": case.compile,
        "batch_size": batch_size,
        "img_size": args.img_size,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "images_per_sec": ips,
        "step_time_s": elapsed / args.steps,
        "warmup_s": warmup_s,
        "gflops_per_image_fwd": flops / 1e9,
        "mfu": mfu(flops, ips, peak) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    del module, opt, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # a shared CPU: oversubscribed OpenMP threads spin and crawl
        args.img_size, args.steps, args.warmup = 32, 2, 2
        cases = list(SMOKE_CASES.values())
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --smoke on CPU")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        names = args.cases or ["vit_b16", "vit_b16_compile", "vit_l16", "resnet50"]
        unknown = sorted(set(names) - set(GPU_CASES))
        if unknown:
            sys.exit(f"unknown case(s) {unknown}: choose from {sorted(GPU_CASES)}")
        cases = [GPU_CASES[n] for n in names]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up steps")
    results = []
    header = f"{'case':<18}{'batch':>6}{'img/s':>10}{'step ms':>10}{'GFLOPs/img':>12}{'MFU':>8}{'mem GB':>8}"
    print(header)
    for case in cases:
        r = measure(case, args, device)
        results.append(r)
        mfu_s = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem_s = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(
            f"{r['case']:<18}{r['batch_size']:>6}{r['images_per_sec']:>10.1f}{1e3 * r['step_time_s']:>10.1f}"
            f"{r['gflops_per_image_fwd']:>12.2f}{mfu_s:>8}{mem_s:>8}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
