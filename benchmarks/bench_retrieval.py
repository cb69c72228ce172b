"""Evaluation speed on this machine: the gallery pass (embeddings/s) and the blockwise top-k search.

    .venv/bin/python benchmarks/bench_retrieval.py                      # ~3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_retrieval.py --largest-seconds 20 --skip-224

Prints:
  1. embeddings/s of evaluation.embeddings.extract_outputs (embedding + backbone feature in one
     pass) for a small ViT on CPU: the CPU demo's ViT (configs/model/vit_demo.yaml) at 64 px and
     ViT-Ti/16 at 224 px, random weights (speed does not depend on them).
  2. top-k search time (k = 50, 1,000 queries, random 256-d embeddings) for 10k and 100k galleries,
     float cosine and binarized Hamming (packed codes), and the Fashion-MNIST evaluation shape
     (10,000 test queries x 60,000 train gallery).
  3. the largest gallery searched within --largest-seconds (size chosen from the 100k timing),
     float and binary, with its time, peak memory and the linear extrapolation to 2 minutes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.embeddings import extract_outputs  # noqa: E402
from evaluation.retrieval import hamming_topk, pack_signs, topk_search  # noqa: E402

DIM, K, QUERIES = 256, 50, 1000


class TimmEmbedder(nn.Module):
    """A timm backbone plus a 256-d projection head, with the MultiTaskModule ``embed`` contract."""

    def __init__(self, name: str, img_size: int, **kwargs):
        super().__init__()
        import timm

        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
        self.heads = nn.ModuleDict({"embedding": _Projection(self.backbone.num_features, DIM)})

    def embed(self, images: torch.Tensor, feature: str = "embedding") -> torch.Tensor:
        feat = self.backbone(images)
        return feat if feature == "backbone" else self.heads["embedding"](feat)


class _Projection(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(x), dim=-1)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def bench_embeddings(label: str, module: nn.Module, img_size: int, batch: int, batches: int) -> None:
    images = torch.randn(batch, 3, img_size, img_size)
    loader = [{"image": images, "target": torch.zeros(batch, dtype=torch.long), "key": [str(i) for i in range(batch)]}]
    extract_outputs(module, loader, ["embedding", "backbone"], "cpu", progress=False)  # warm-up
    got = extract_outputs(module, loader * batches, ["embedding", "backbone"], "cpu", progress=False)
    print(f"  {label:<34} {len(got):>6} images  {got.seconds:7.2f} s  {got.images_per_sec:8.1f} embeddings/s")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_search(label: str, num_q: int, num_g: int, gen: torch.Generator) -> tuple[float, float]:
    q = torch.randn(num_q, DIM, generator=gen)
    g = torch.randn(num_g, DIM, generator=gen)
    t_float = timed(lambda: topk_search(q, g, K, "cosine"))
    q_codes, g_codes = pack_signs(q), pack_signs(g)
    t_bin = timed(lambda: hamming_topk(q_codes, g_codes, DIM, K))
    print(
        f"  {label:<34} float {t_float:7.2f} s ({1e3 * t_float / num_q:6.2f} ms/query)   "
        f"binary {t_bin:7.2f} s ({1e3 * t_bin / num_q:6.2f} ms/query)"
    )
    return t_float, t_bin


def bench_largest(kind: str, per_item_s: float, seconds: float, cap: int, gen: torch.Generator) -> None:
    num_g = int(min(cap, max(100_000, seconds / per_item_s)) // 100_000 * 100_000)
    q = torch.randn(QUERIES, DIM, generator=gen)
    if kind == "float":
        gallery = torch.randn(num_g, DIM, generator=gen)
        stored = gallery.numel() * 4
        start = time.perf_counter()
        topk_search(q, gallery, K, "cosine")
    else:
        gallery = torch.randint(0, 256, (num_g, DIM // 8), dtype=torch.uint8, generator=gen)  # packed codes
        stored = gallery.numel()
        start = time.perf_counter()
        hamming_topk(pack_signs(q), gallery, DIM, K)
    t = time.perf_counter() - start
    print(
        f"  {kind:<6} gallery {num_g:>11,} items ({stored / 2**30:5.2f} GiB stored): {t:6.1f} s for {QUERIES} queries, "
        f"peak RSS {peak_rss_gib():5.1f} GiB; at this rate 120 s covers ~{int(num_g * 120 / t):,} items"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--largest-seconds", type=float, default=35.0, help="time budget of each largest-gallery run")
    parser.add_argument("--float-cap", type=int, default=3_000_000, help="max float gallery (2 KiB/item at peak)")
    parser.add_argument("--binary-cap", type=int, default=40_000_000, help="max binary gallery (32 B/item)")
    parser.add_argument("--skip-224", action="store_true", help="skip the 224 px gallery pass")
    parser.add_argument("--only-largest", action="store_true", help="only the 100k timing and the largest galleries")
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    if not args.only_largest:
        print("1. gallery pass (extract_outputs: embedding + backbone feature, one backbone pass, fp32 on CPU)")
        with torch.inference_mode():
            demo = TimmEmbedder("vit_tiny_patch16_224", 64, patch_size=8, depth=6)
            bench_embeddings("ViT demo (Ti width, 6 blocks, p8) 64px", demo, 64, 64, 6)
            if not args.skip_224:
                vit_ti = TimmEmbedder("vit_tiny_patch16_224", 224)
                bench_embeddings("ViT-Ti/16 224px", vit_ti, 224, 32, 3)

    print(f"2. top-{K} search, {DIM}-d, block_size 1024 (binary: packed sign codes, exact Hamming)")
    if not args.only_largest:
        bench_search(f"{QUERIES:,} queries x 10,000 gallery", QUERIES, 10_000, gen)
    t100_f, t100_b = bench_search(f"{QUERIES:,} queries x 100,000 gallery", QUERIES, 100_000, gen)
    if not args.only_largest:
        bench_search("Fashion-MNIST: 10,000 x 60,000", 10_000, 60_000, gen)

    print(f"3. largest gallery within ~{args.largest_seconds:.0f} s ({QUERIES:,} queries, k={K})")
    bench_largest("float", t100_f / 100_000, args.largest_seconds, args.float_cap, gen)
    bench_largest("binary", t100_b / 100_000, args.largest_seconds, args.binary_cap, gen)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
