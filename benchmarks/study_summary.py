"""The CPU study's summary table (README): per cell, mean ± std over seeds of in-domain and Fashion-MNIST figures.

    python benchmarks/study_summary.py results/study_cpu/records.csv > results/study_cpu/summary.md

Reads the records.csv that ``make_report.py --group study_cpu`` writes; prints a Markdown table. Written beside
``studies.tables`` because its tables hold one metric each; this one puts the study's six figures side by side.
"""

import csv
import statistics as st
import sys

rows = list(csv.DictReader(open(sys.argv[1] if len(sys.argv) > 1 else "results/study_cpu/records.csv")))
M = [
    ("in-domain mAP@10", "eval/weak_label_val/backbone/float/mAP@10"),
    ("in-domain R@1", "eval/weak_label_val/backbone/float/recall@1"),
    ("FMNIST mAP@10", "eval/fashion_mnist/backbone/float/mAP@10"),
    ("FMNIST R@1", "eval/fashion_mnist/backbone/float/recall@1"),
    ("FMNIST kNN", "eval/fashion_mnist/backbone/knn_acc"),
    ("FMNIST probe", "eval/fashion_mnist/backbone/linear_probe_acc"),
    ("FMNIST binary/float mAP@10", None),
]
groups = {}
for r in rows:
    scale = "-" if r["init"] != "trained" else r["scale"]
    key = (r["arch"], r["init"], r["label_space"] if r["init"] == "trained" else "-", scale)
    groups.setdefault(key, []).append(r)


def f(v):
    return float(v) if v not in ("", None) else None


print("| model | init | labels | scale | n | " + " | ".join(m[0] for m in M) + " |")
print("|---|---|---|---:|---:|" + "---:|" * len(M))
for key in sorted(groups):
    rs = groups[key]
    cells = []
    for _name, col in M:
        if col is None:
            vals = [
                f(r["eval/fashion_mnist/backbone/binary/mAP@10"]) / f(r["eval/fashion_mnist/backbone/float/mAP@10"])
                for r in rs
            ]
        else:
            vals = [f(r[col]) for r in rs if f(r[col]) is not None]
        cells.append(
            f"{st.mean(vals):.3f} ± {st.stdev(vals):.3f}" if len(vals) > 1 else (f"{vals[0]:.3f}" if vals else "—")
        )
    print(
        f"| {key[0]} | {'random' if key[1] != 'trained' else 'pretrained'} | {key[2]} | {key[3]} | {len(rs)} | "
        + " | ".join(cells)
        + " |"
    )
