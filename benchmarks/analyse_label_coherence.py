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
"""

import argparse
import io
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("half", choices=sorted(TEMPLATES), help="a caption set of benchmarks/web_captions.py")
    half = ap.parse_args().half
    tmp = Path(f"/tmp/label_coherence/{half}")
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    pools = load_content(half, 1200, 160, cache=REPO / "data" / "web_captions_cache")
    samples = build_samples(half, pools)
    truth = [t for _, t in samples]
    if not (out / "manifest.json").exists():
        write_corpus(tmp / "corpus", samples)
        B.mine(REPO, tmp / "corpus", out, ["vocab.keep_unlabeled=true"])
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for split in ("train", "val"):
        for sh in manifest["splits"][split]["shards"]:
            with tarfile.open(out / sh["url"]) as tf:
                cur = {}
                for m in tf:
                    k, ext = m.name.rsplit(".", 1)
                    cur.setdefault(k, {})[ext] = tf.extractfile(m).read()
                for v in cur.values():
                    rows.append((json.loads(v["json"]), v["jpg"]))

    def feat(b):
        im = Image.open(io.BytesIO(b)).convert("RGB")
        a = np.asarray(im.resize((16, 16)), dtype=np.float32) / 255
        q = (a * 3.999).astype(int)
        hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / 256
        g = np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255
        return np.concatenate([hist, g, a.reshape(-1, 3).mean(0), a.reshape(-1, 3).std(0)])

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
    for n0, thr in [(0, 1.5), (0, 2), (0, 3), (0, 4), (10, 2), (20, 2), (20, 3), (30, 3)]:
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
