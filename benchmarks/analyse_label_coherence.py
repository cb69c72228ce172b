"""Is a label's image set distinguishable from a random draw of the corpus? An offline diagnosis of one idea for
issue 22 (a template word is written whatever the picture shows, so its images are a random draw), with pixel
features only (no pretrained image model can be fetched here). Not a rule of the pipeline: docs/labels.md ("Weighed and
not adopted") records what it showed.

    OMP_NUM_THREADS=1 python benchmarks/analyse_label_coherence.py <set>    # a set of benchmarks/web_captions.py

It mines the set with the repo's img2dataset preset (``vocab.keep_unlabeled=true``) into /tmp/label_coherence/<set>,
then, per label on >= 3 written images: stat = n x mean over 137 standardized pixel features (a 64-bin RGB histogram, an
8x8 grey thumbnail, channel means and spreads) of the squared mean shift from the corpus, divided by (1 - n/N): about 1
for a random draw of n images, larger for a coherent set. Labels are split into template and content words by the
bench's oracle (bench_web_labels.quality).

With ``--checkpoint``, the features are instead a trained model's pooled backbone features (L2-normalized, then
standardized) of the corpus images at 64 px. The model must not have seen the sets' drawings: ``--pretrain-corpus
DIR`` copies the Open Clip Art SVGs that none of the six sets uses into DIR, to mine and train on
(docs/labels.md, "Weighed and not adopted", has the commands).
"""

import argparse
import io
import json
import shutil
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_web_labels as B  # noqa: E402
from web_captions import TEMPLATES, build_samples, load_content, write_corpus  # noqa: E402

from labels.text import TermExtractor  # noqa: E402

CACHE = REPO / "data" / "web_captions_cache"


OPENCLIPART = Path("/usr/share/openclipart/svg")


def write_pretrain_corpus(dest: Path) -> None:
    """Copy the Open Clip Art SVGs that no caption set uses into ``dest`` (same folders)."""
    used = set()
    for half in TEMPLATES:
        used.update(t["uid"] for _, t in build_samples(half, load_content(half, 1200, 160, cache=CACHE)))
    kept = 0
    for svg in sorted(OPENCLIPART.rglob("*.svg")):
        rel = svg.relative_to(OPENCLIPART)
        if str(rel) not in used:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(svg, dest / rel)
            kept += 1
    print(f"{kept} drawings no set uses copied to {dest} ({len(used)} drawings and stamps used by the sets)")


def model_features(checkpoint: str, jpgs: list[bytes], size: int = 64) -> np.ndarray:
    """Pooled backbone features of a trained model, L2-normalized (the images resized to ``size``, ImageNet
    normalization as in training)."""
    import torch

    from lit_modules import load_module

    module = load_module(checkpoint).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(jpgs), 128):
        arrays = [
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
            for b in jpgs[i : i + 128]
        ]
        x = torch.from_numpy(np.stack(arrays) / 255).permute(0, 3, 1, 2)
        with torch.no_grad():
            out.append(module.embed((x - mean) / std, "backbone").numpy())
    feats = np.concatenate(out)
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-8)


def corpus_images(corpus: Path, uids: list[str]) -> list[bytes]:
    """The corpus JPEG of each ``<tar>:<key>`` uid (the full-size image, not the mined 32 px copy)."""
    wanted: dict[str, set[str]] = {}
    for uid in uids:
        tar, key = uid.split(":", 1)
        wanted.setdefault(tar, set()).add(key)
    found = {}
    for tar, keys in wanted.items():
        with tarfile.open(corpus / tar) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                if ext == "jpg" and key in keys:
                    found[f"{tar}:{key}"] = tf.extractfile(m).read()
    return [found[u] for u in uids]


def mined(half: str) -> tuple[list[dict], list[tuple[dict, bytes]]]:
    """The set's truth and its written images as (json, jpg), mined into /tmp/label_coherence/<set> when needed."""
    tmp = Path(f"/tmp/label_coherence/{half}")
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    samples = build_samples(half, load_content(half, 1200, 160, cache=CACHE))
    if not (out / "manifest.json").exists():
        write_corpus(tmp / "corpus", samples)
        B.mine(REPO, tmp / "corpus", out, ["vocab.keep_unlabeled=true"])
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for split in ("train", "val"):
        for sh in manifest["splits"][split]["shards"]:
            with tarfile.open(out / sh["url"]) as tf:
                cur: dict[str, dict[str, bytes]] = {}
                for m in tf:
                    k, ext = m.name.rsplit(".", 1)
                    cur.setdefault(k, {})[ext] = tf.extractfile(m).read()
                rows += [(json.loads(v["json"]), v["jpg"]) for v in cur.values()]
    return [t for _, t in samples], rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("half", nargs="?", choices=sorted(TEMPLATES), help="a caption set of benchmarks/web_captions.py")
    ap.add_argument("--checkpoint", help="features from this trained model instead of pixel statistics")
    ap.add_argument("--pretrain-corpus", type=Path, help="only copy the drawings no set uses into this folder")
    args = ap.parse_args()
    if args.pretrain_corpus:
        write_pretrain_corpus(args.pretrain_corpus)
        return
    if args.half is None:
        ap.error("a caption set is needed")
    half = args.half
    tmp = Path(f"/tmp/label_coherence/{half}")
    truth, rows = mined(half)

    def feat(b):
        im = Image.open(io.BytesIO(b)).convert("RGB")
        a = np.asarray(im.resize((16, 16)), dtype=np.float32) / 255
        q = (a * 3.999).astype(int)
        hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / 256
        g = np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255
        return np.concatenate([hist, g, a.reshape(-1, 3).mean(0), a.reshape(-1, 3).std(0)])

    if args.checkpoint:
        X = model_features(args.checkpoint, corpus_images(tmp / "corpus", [m["uids"][0] for m, _ in rows]))
    else:
        X = np.stack([feat(b) for _, b in rows])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    N = len(rows)
    plain = TermExtractor(max_words=3)
    by_key = {t["key"]: t for t in truth}
    content_terms = {k: set(x for c in t["content"] for x in plain.terms(c)) for k, t in by_key.items()}
    lab_imgs = defaultdict(list)
    as_content = Counter()
    for i, (meta, _) in enumerate(rows):
        key = meta["uids"][0].split(":", 1)[1]
        for x in meta["terms"]:
            lab_imgs[x].append(i)
            as_content[x] += x in content_terms[key]
    stat = {}
    for x, idx in lab_imgs.items():
        n = len(idx)
        if n < 3:
            continue
        m = Z[idx].mean(0)
        stat[x] = float(n * (m**2).mean() / max(1 - n / N, 1e-3))
    kind = {x: ("template" if as_content[x] < len(lab_imgs[x]) / 2 else "content") for x in stat}
    tem = sorted((stat[x], x, len(lab_imgs[x])) for x in stat if kind[x] == "template")
    con = sorted((stat[x], x, len(lab_imgs[x])) for x in stat if kind[x] == "content")

    def auc(a, b):
        a = np.array([s for s, _, _ in a])
        b = np.array([s for s, _, _ in b])
        return float((b[:, None] > a[None, :]).mean()) if len(a) and len(b) else float("nan")

    print(
        half,
        "labels",
        len(stat),
        "template",
        len(tem),
        "content",
        len(con),
        "AUC content>template",
        round(auc(tem, con), 3),
    )
    big_t = [t for t in tem if t[2] >= 20]
    big_c = [c for c in con if c[2] >= 20]
    print(" >=20 imgs: template", len(big_t), "content", len(big_c), "AUC", round(auc(big_t, big_c), 3))
    print(
        " template (stat, label, n), top by n:",
        [(round(s, 1), x, n) for s, x, n in sorted(tem, key=lambda t: -t[2])[:15]],
    )
    print(" content lowest stat with n>=20:", [(round(s, 1), x, n) for s, x, n in big_c[:15]])
    # (n0, T): labels on n0 images or more with stat < T removed, smaller ones kept (the test has power only there);
    # n0 = 0: every label with stat < T removed (labels on < 3 images too)
    for n0, thr in [(0, 1.5), (0, 2), (0, 3), (0, 4), (10, 2), (10, 3), (10, 5), (20, 2), (20, 3), (20, 5), (30, 3)]:
        keep = {x for x in lab_imgs if (n0 and len(lab_imgs[x]) < n0) or stat.get(x, 0) >= thr}
        labelled = with_t = has_c = lost = 0
        for meta, _ in rows:
            key = meta["uids"][0].split(":", 1)[1]
            labs = [x for x in meta["terms"] if x in keep]
            if labs:
                labelled += 1
                with_t += any(x not in content_terms[key] for x in labs)
            if content_terms[key] & set(meta["terms"]):
                has_c += 1
                lost += not labs
        print(
            f" n0 {n0} thr {thr}: template share {with_t / max(labelled, 1):.3f}  labelled {labelled}  lost-ish {lost}/{has_c}"
        )


if __name__ == "__main__":
    main()
