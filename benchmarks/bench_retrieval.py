"""Evaluation speed on this machine: repo-before vs faiss retrieval, the gallery pass, the largest gallery.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_retrieval.py            # the comparison only, ~2 min
    .venv/bin/python benchmarks/bench_retrieval.py --gallery 50000              # smaller, faster
    .venv/bin/python benchmarks/bench_retrieval.py --extract --largest          # also sections 1 and 3

Prints:
  0. repo-before (evaluation/retrieval.py at commit 3793c3b, read with ``git show``: torch matmul
     search, Hamming by unpacking codes to +-1 floats, lowest-index tie-break) against this tree
     (faiss IndexFlatIP / IndexBinaryFlat, tie-aware metrics), side by side on one random set:
     1,000 queries x --gallery 256-d items (default 200,000), k = 50, float and binary. Per form:
     top-k search alone, and the whole evaluate_retrieval (search + relevance + metrics, 10 classes);
     the before/after ratio (float search also with faiss IndexFlatIP, the alternative the code does not
     use because it measured slower); the share of queries whose top-50 cut falls inside a tied group; and
     precision@50 before and after shuffling the gallery (before: the tie-break makes it move).
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
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evaluation.retrieval as retrieval  # noqa: E402
from evaluation.embeddings import extract_outputs  # noqa: E402
from evaluation.retrieval import (  # noqa: E402
    evaluate_retrieval,
    label_sets,
    pack_signs,
    tie_aware_search,
    topk_search,
)

BEFORE_COMMIT = "3793c3b"

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


def timed_result(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_search(label: str, num_q: int, num_g: int, gen: torch.Generator) -> tuple[float, float]:
    q = torch.randn(num_q, DIM, generator=gen)
    g = torch.randn(num_g, DIM, generator=gen)
    t_float = timed(lambda: topk_search(q, g, K, "cosine"))
    q_codes, g_codes = pack_signs(q), pack_signs(g)
    t_bin = timed(lambda: topk_search(q_codes, g_codes, K, "hamming", packed_dim=DIM))
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
        topk_search(pack_signs(q), gallery, K, "hamming", packed_dim=DIM)
    t = time.perf_counter() - start
    print(
        f"  {kind:<6} gallery {num_g:>11,} items ({stored / 2**30:5.2f} GiB stored): {t:6.1f} s for {QUERIES} queries, "
        f"peak RSS {peak_rss_gib():5.1f} GiB; at this rate 120 s covers ~{int(num_g * 120 / t):,} items"
    )


def load_before() -> object:
    """evaluation/retrieval.py as it was at BEFORE_COMMIT, imported from a temporary file."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:evaluation/retrieval.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "retrieval_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("retrieval_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def bench_before_after(num_g: int, gen: torch.Generator) -> None:
    before = load_before()
    q = torch.randn(QUERIES, DIM, generator=gen)
    g = torch.randn(num_g, DIM, generator=gen)
    q_t, g_t = torch.randint(0, 10, (QUERIES,), generator=gen), torch.randint(0, 10, (num_g,), generator=gen)
    perm = torch.randperm(num_g, generator=gen)
    q_codes, g_codes = pack_signs(q), pack_signs(g)
    print(
        f"0. repo-before ({BEFORE_COMMIT}) vs faiss + tie-aware: {QUERIES:,} queries x {num_g:,} gallery, {DIM}-d, k={K}"
    )
    print(f"   {'':<32} {'before s':>9} {'after s':>9} {'ratio':>7}")
    rows = [
        ("float top-k search", lambda: before.topk_search(q, g, K, "cosine"), lambda: topk_search(q, g, K, "cosine")),
        (
            "binary top-k search",
            lambda: before.hamming_topk(q_codes, g_codes, DIM, K),
            lambda: topk_search(q_codes, g_codes, K, "hamming", packed_dim=DIM),
        ),
    ]
    for metric, form in (("cosine", "float"), ("hamming", "binary")):
        rows.append(
            (
                f"{form} evaluate_retrieval",
                lambda m=metric: before.evaluate_retrieval(q, q_t, g, g_t, [K], m),
                lambda m=metric: evaluate_retrieval(q, q_t, g, g_t, [K], m),
            )
        )
    results = {}

    def faiss_float() -> object:
        index = retrieval.faiss.IndexFlatIP(DIM)
        index.add(retrieval.l2_normalize(g).numpy())
        return index.search(retrieval.l2_normalize(q).numpy(), K)

    rows.insert(1, ("float search, faiss IndexFlatIP", lambda: before.topk_search(q, g, K, "cosine"), faiss_float))
    for label, old, new in rows:
        t_old, results[(label, "old")] = timed_result(old)
        t_new, results[(label, "new")] = timed_result(new)
        print(f"   {label:<32} {t_old:9.2f} {t_new:9.2f} {t_old / t_new:6.1f}x")
    for metric, form in (("cosine", "float"), ("hamming", "binary")):
        ranked = tie_aware_search(q, g, label_sets(q_t), label_sets(g_t), K, metric)
        crossing = (ranked.cut_count > (ranked.scores == ranked.scores[:, K - 1 : K]).sum(1)).double().mean().item()
        old_p = results[(f"{form} evaluate_retrieval", "old")][0][f"precision@{K}"]
        new_p = results[(f"{form} evaluate_retrieval", "new")][0][f"precision@{K}"]
        old_shuffled = before.evaluate_retrieval(q, q_t, g[perm], g_t[perm], [K], metric)[0][f"precision@{K}"]
        new_shuffled = evaluate_retrieval(q, q_t, g[perm], g_t[perm], [K], metric)[0][f"precision@{K}"]
        print(
            f"   {form}: {100 * crossing:5.1f}% of queries have a tie across the top-{K} cut; precision@{K} "
            f"before {old_p:.6f} -> shuffled gallery {old_shuffled:.6f}; after {new_p:.6f} -> {new_shuffled:.6f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=200_000, help="gallery size of the before/after comparison")
    parser.add_argument("--extract", action="store_true", help="also section 1 (gallery pass)")
    parser.add_argument("--largest", action="store_true", help="also sections 2-3 (search scaling, largest gallery)")
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

    bench_before_after(args.gallery, gen)
    if args.extract and not args.only_largest:
        print("1. gallery pass (extract_outputs: embedding + backbone feature, one backbone pass, fp32 on CPU)")
        with torch.inference_mode():
            demo = TimmEmbedder("vit_tiny_patch16_224", 64, patch_size=8, depth=6)
            bench_embeddings("ViT demo (Ti width, 6 blocks, p8) 64px", demo, 64, 64, 6)
            if not args.skip_224:
                vit_ti = TimmEmbedder("vit_tiny_patch16_224", 224)
                bench_embeddings("ViT-Ti/16 224px", vit_ti, 224, 32, 3)
    if args.largest:
        print(f"2. top-{K} search, {DIM}-d (faiss; binary: packed sign codes, exact Hamming)")
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
