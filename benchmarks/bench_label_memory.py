"""Label memory: what crosses the loader per batch, and what the validation mAP keeps, against the label count C.

Three measurements, old (code at 3793c3b) and new side by side where that is cheap:

1. Loader batch bytes (what a worker writes to shared memory per batch and the main process pins and copies to the
   device), from real ``DecodeSample`` + ``Collate`` batches of JPEGs at ``--img-size``, for C in ``--labels``:
   new = uint8 images + int32 label ids + float32 weights ``[B, L]``; old = float32 images + dense float32 ``[B, C]``
   (the old tensors are built too, not computed). Shared memory per worker and per rank multiply the batch by
   ``prefetch_factor`` (2, PyTorch's default) and ``--workers`` (REVIEW's example: 10).
   Also: time of the device transform (scatter, normalize) on this CPU at C = max.
2. Validation mAP state vs the number of validation rows: the bounded ``WeakLabelMAP`` (binned, ``[2, C, T]`` int64)
   and the old torchmetrics ``MultilabelAveragePrecision(thresholds=None)`` fed as the old module fed it (fp32
   scores, int64 targets), measured after 1 and ``--batches`` batches; the old state at REVIEW's 204,800 rows
   (50 batches x 256 x 16 ranks, gathered on every rank) is extrapolated from the measured bytes per row.
3. JPEG decoding on CPU, one thread: PIL (with and without ``draft``, the DCT-domain downscale the loader uses) vs
   ``torchvision.io.decode_jpeg``, for images rendered like the demo's (openclipart SVGs, short side 256, JPEG
   quality 90; synthetic JPEGs if the SVGs are missing), decoded and resized to 64 and 224 px (short side).
   ``decode_jpeg(device="cuda")`` (nvjpeg) is the GPU path; it needs a GPU and is not measured here. Also per loader
   sample (decode + the timm train/eval transform), torchvision where PIL's draft cannot shrink vs PIL only.

Prints a table and writes ``benchmarks/results/bench_label_memory.json``.

    python benchmarks/bench_label_memory.py            # ~1 minute on a 2-core machine
"""

from __future__ import annotations

import argparse
import glob
import io
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datamodules.stages import Collate, DecodeSample, SkipCounter  # noqa: E402
from datamodules.targets import BatchTransform  # noqa: E402
from datamodules.transforms import decode_image, draft_size  # noqa: E402
from evaluation.head_metrics import EXACT_MAP_MAX_ELEMENTS, MAP_THRESHOLDS, WeakLabelMAP  # noqa: E402

MB = 2**20


def demo_jpegs(n: int, seed: int = 0) -> tuple[list[bytes], str]:
    """``n`` JPEGs made like the demo's shards: openclipart SVGs rendered (short side 256) and encoded at q=90."""
    svgs = sorted(glob.glob("/usr/share/openclipart/svg/**/*.svg", recursive=True))
    out: list[bytes] = []
    if svgs:
        from labels.images import bound, encode_jpeg, render_svg, to_rgb

        rng = np.random.default_rng(seed)
        for path in rng.permutation(len(svgs)):
            try:
                with open(svgs[path], "rb") as f:
                    im = bound(to_rgb(render_svg(f.read(), 256)), 256, 3.0, enlarge=False)
                out.append(encode_jpeg(im, 90))
            except Exception:  # noqa: BLE001 - an SVG cairosvg cannot draw: take the next one
                continue
            if len(out) == n:
                return out, "openclipart SVGs rendered like labels/images.py (short side 256, q=90)"
    rng = np.random.default_rng(seed)
    for _ in range(n - len(out)):
        arr = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, "synthetic noise JPEGs 256x320 q=90 (no openclipart SVGs found)"


def tensor_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))


def loader_bytes(jpegs: list[bytes], labels: list[int], batch: int, img: int, max_labels: int, workers: int) -> dict:
    from configs.compose import compose
    from datamodules.transforms import image_transform

    cfg = compose(["logger=none", f"data.img_size={img}"]).data
    transform = image_transform(cfg, train=False)
    rng = np.random.default_rng(0)
    rows = []
    for c in labels:
        decode = DecodeSample("clustered", c, transform, draft_size(img, 0.08, False), seed=None)
        samples = []
        for i in range(batch):
            ids = sorted(rng.choice(c, size=int(rng.integers(1, max_labels + 1)), replace=False).tolist())
            meta = {"labels": {"clustered": ids}, "scores": {"clustered": [0.5] * len(ids)}}
            samples.append(
                decode(
                    {
                        "__key__": f"{i:016x}",
                        "jpg": jpegs[i % len(jpegs)],
                        "json": json.dumps(meta).encode(),
                        "__raw__": i,
                    }
                )
            )
        new = Collate(SkipCounter(), 0, max_labels)(samples)
        dense = torch.zeros(batch, c)  # the old worker-side target
        for r, s in enumerate(samples):
            dense[r, torch.from_numpy(s["label_ids"]).long()] = 1.0
        old = {"image": new["image"].float(), "target": dense}
        new_b, old_b = tensor_bytes(new), tensor_bytes(old)
        rows.append(
            {
                "num_classes": c,
                "new_batch_bytes": new_b,
                "old_batch_bytes": old_b,
                "new_bytes_per_sample": new_b / batch,
                "old_bytes_per_sample": old_b / batch,
                "new_shm_per_worker_MB": 2 * new_b / MB,
                "old_shm_per_worker_MB": 2 * old_b / MB,
                "new_shm_per_rank_MB": workers * 2 * new_b / MB,
                "old_shm_per_rank_MB": workers * 2 * old_b / MB,
                "device_dense_target_MB": batch * c * 4 / MB,  # built on the device, as the loss needs it
            }
        )
        if c == max(labels):
            transform_dev = BatchTransform(c)
            t0 = time.perf_counter()
            for _ in range(5):
                out = transform_dev(new)
            rows[-1]["cpu_device_transform_ms"] = (time.perf_counter() - t0) / 5 * 1e3
            assert torch.equal(out["target"], dense)
    return {"batch_size": batch, "img_size": img, "max_labels": max_labels, "workers": workers, "rows": rows}


def metric_state(labels: list[int], batch: int, batches: int) -> dict:
    from torchmetrics.classification import MultilabelAveragePrecision

    g = torch.Generator().manual_seed(0)
    rows = []
    for c in labels:
        b = batch if c <= 20_000 else max(8, batch // 4)  # keep the 100k-label updates within a few seconds
        new = WeakLabelMAP(c)
        old = MultilabelAveragePrecision(num_labels=c, average="none", thresholds=None, validate_args=False)
        row = {"num_classes": c, "batch_size": b}
        t_new = 0.0
        old_bytes = []
        for i in range(batches):
            preds = torch.rand(b, c, generator=g)
            target = torch.rand(b, c, generator=g) < (5 / c)
            t0 = time.perf_counter()
            new.update(preds, target)
            t_new += time.perf_counter() - t0
            if i == 0:
                row["new_state_MB_after_1"] = new.state_bytes() / MB
            if c <= 20_000 and i < 4:  # the old state grows: 4 batches show the slope
                old.update(preds, target.long())
                old_bytes.append(sum(t.numel() * t.element_size() for t in (*old.preds, *old.target)))
        row["new_state_MB_after_n"] = new.state_bytes() / MB
        row["n_batches"] = batches
        row["new_update_ms_per_batch"] = t_new / batches * 1e3
        t0 = time.perf_counter()
        value = float(new.compute())
        row["new_compute_ms"] = (time.perf_counter() - t0) * 1e3
        row["new_map_random_scores"] = value
        if old_bytes:
            per_row = old_bytes[-1] / (len(old_bytes) * b)
            row["old_state_MB_after_1"] = old_bytes[0] / MB
            row["old_state_MB_after_4"] = old_bytes[-1] / MB
            row["old_bytes_per_row"] = per_row
        else:
            per_row = c * (4 + 8)  # fp32 score + int64 target per label, as measured at the smaller C
            row["old_bytes_per_row"] = per_row
            row["old_bytes_per_row_note"] = "not measured at this C: fp32 + int64 per label, as measured below"
        row["old_state_GB_at_204800_rows_extrapolated"] = per_row * 204_800 / 2**30
        rows.append(row)
        del new, old
    return {
        "thresholds": MAP_THRESHOLDS,
        "exact_mode_max_rows_x_labels": EXACT_MAP_MAX_ELEMENTS,
        "rows": rows,
    }


def decode_bench(jpegs: list[bytes], repeats: int) -> dict:
    import torchvision
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    torch.set_num_threads(1)
    out = {"torchvision": torchvision.__version__, "images": len(jpegs), "results": []}

    def rate(fn) -> float:
        fn(jpegs[0])  # warm-up
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            for data in jpegs:
                fn(data)
            best = max(best, len(jpegs) / (time.perf_counter() - t0))
        return best

    for size in (64, 224):
        draft = draft_size(size, 0.08, train=False)

        def pil_full(data, size=size):
            im = decode_image(data, 0)
            return im.resize(_short(im.size, size), Image.BILINEAR)

        def pil_draft(data, size=size, draft=draft):
            im = decode_image(data, draft)
            return im.resize(_short(im.size, size), Image.BILINEAR)

        def tv(data, size=size):
            x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return F.resize(x, [size], antialias=True)

        row = {
            "out_short_side": size,
            "pil_decode_resize_per_s": rate(pil_full),
            "pil_draft_decode_resize_per_s": rate(pil_draft),
            "torchvision_decode_jpeg_resize_per_s": rate(tv),
        }
        row["fastest"] = max(
            ("pil", row["pil_decode_resize_per_s"]),
            ("pil_draft", row["pil_draft_decode_resize_per_s"]),
            ("torchvision", row["torchvision_decode_jpeg_resize_per_s"]),
            key=lambda kv: kv[1],
        )[0]
        out["results"].append(row)
    # What the loader does per sample (DecodeSample: decode + timm transform): torchvision's decoder where PIL's draft
    # cannot shrink the JPEG (decode_image(tensor_jpeg=True)) against PIL only. DecodeSample uses the former in
    # evaluation only, where it measured faster; in training PIL's crop-and-resize is cheaper.
    from configs.compose import compose
    from datamodules.transforms import image_transform

    meta = json.dumps({"labels": {"clustered": [1]}}).encode()
    for size in (64, 224):
        cfg = compose(["logger=none", f"data.img_size={size}"]).data
        for train in (False, True):
            row = {"out_size": size, "train": train}
            for name, tensor_jpeg in (("pil", False), ("auto", True)):
                dec = DecodeSample(
                    "clustered",
                    2,
                    image_transform(cfg, train),
                    draft_size(size, 0.08, train),
                    0 if train else None,
                    tensor_jpeg=tensor_jpeg,
                )
                raw = itertools.count()  # a new raw index per call: a new random crop each time, as in training
                row[f"{name}_samples_per_s"] = rate(
                    lambda d, dec=dec, raw=raw: dec({"__key__": "k", "jpg": d, "json": meta, "__raw__": next(raw)})
                )
            row["auto_over_pil"] = row["auto_samples_per_s"] / row["pil_samples_per_s"]
            out.setdefault("loader_sample", []).append(row)
    out["decode_only_per_s"] = {
        "pil": rate(lambda d: decode_image(d, 0)),
        "torchvision": rate(lambda d: decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8))),
    }
    out["gpu_path"] = "torchvision.io.decode_jpeg(device='cuda') (nvjpeg): not measured, no GPU on this machine"
    return out


def _short(size: tuple[int, int], short: int) -> tuple[int, int]:
    w, h = size
    s = short / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, nargs="+", default=[1_000, 20_000, 100_000])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--max-labels", type=int, default=10)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--batches", type=int, default=10, help="validation batches fed to the metrics")
    ap.add_argument("--images", type=int, default=64, help="demo JPEGs for the decode comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_label_memory.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    jpegs, source = demo_jpegs(args.images)
    loader = loader_bytes(jpegs, args.labels, args.batch_size, args.img_size, args.max_labels, args.workers)
    print(
        f"\n1. loader batch (B={args.batch_size}, {args.img_size} px, L={args.max_labels}, {args.workers} workers x 2)"
    )
    print(f"{'C':>8} {'new B/sample':>13} {'old B/sample':>13} {'new shm/rank MB':>16} {'old shm/rank MB':>16}")
    for r in loader["rows"]:
        print(
            f"{r['num_classes']:>8} {r['new_bytes_per_sample']:>13,.0f} {r['old_bytes_per_sample']:>13,.0f} "
            f"{r['new_shm_per_rank_MB']:>16,.1f} {r['old_shm_per_rank_MB']:>16,.1f}"
        )
    last = loader["rows"][-1]
    print(
        f"   device transform (scatter + normalize) at C={last['num_classes']} on this CPU: "
        f"{last['cpu_device_transform_ms']:.1f} ms per batch"
    )

    metrics = metric_state(args.labels, args.batch_size, args.batches)
    print(f"\n2. validation mAP state (T={MAP_THRESHOLDS} bins; exact below {EXACT_MAP_MAX_ELEMENTS:,} rows x labels)")
    print(
        f"{'C':>8} {'new MB @1':>10} {'new MB @n':>10} {'old MB @1':>10} {'old MB @4':>10} {'old GB @204,800 rows':>21}"
    )
    for r in metrics["rows"]:
        print(
            f"{r['num_classes']:>8} {r['new_state_MB_after_1']:>10.1f} {r['new_state_MB_after_n']:>10.1f} "
            f"{r.get('old_state_MB_after_1', float('nan')):>10.1f} {r.get('old_state_MB_after_4', float('nan')):>10.1f} "
            f"{r['old_state_GB_at_204800_rows_extrapolated']:>21.1f}"
        )

    decode = decode_bench(jpegs, args.repeats)
    print(f"\n3. JPEG decode + resize, 1 thread, {len(jpegs)} images ({source}), images/s")
    for r in decode["results"]:
        print(
            f"   {r['out_short_side']:>3} px: PIL {r['pil_decode_resize_per_s']:7.0f}  PIL+draft "
            f"{r['pil_draft_decode_resize_per_s']:7.0f}  torchvision {r['torchvision_decode_jpeg_resize_per_s']:7.0f}"
            f"  -> {r['fastest']}"
        )
    for r in decode["loader_sample"]:
        print(
            f"   loader sample {r['out_size']:>3} px {'train' if r['train'] else 'eval '}: PIL only "
            f"{r['pil_samples_per_s']:6.0f}/s, torchvision rule {r['auto_samples_per_s']:6.0f}/s "
            f"(x{r['auto_over_pil']:.2f})"
        )
    print(
        f"   decode only: PIL {decode['decode_only_per_s']['pil']:.0f}, "
        f"torchvision {decode['decode_only_per_s']['torchvision']:.0f}; {decode['gpu_path']}"
    )

    record = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "images": source,
        "loader": loader,
        "metric_state": metrics,
        "decode": decode,
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\nwrote {args.out} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
