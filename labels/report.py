"""The label report: ``report/stats.json``, plots (matplotlib, Agg) and the readable cluster list."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from labels.shards import write_json
from labels.vocab import frequency_bands, histogram_stats
from tracking.textio import escape_cell


def write_report(
    report_dir: str,
    stats: dict,
    raw_names: Sequence[str],
    raw_counts: Sequence[int],
    clustered_names: Sequence[str],
    clustered_counts: Sequence[int],
    members: Sequence[Sequence[str]],
    per_image: Mapping[str, Mapping[int, int]],
) -> dict:
    """Write ``stats.json``, ``freq_by_rank.png``, ``labels_per_image.png`` and ``clusters.tsv``.

    Args:
        stats: counts, coverage, timings... (frequency bands and per-image statistics are added here).
        raw_counts / clustered_counts: images per label (written samples).
        per_image: label space -> histogram ``{labels per image: images}``.

    Returns:
        The stats dict as written.
    """
    os.makedirs(report_dir, exist_ok=True)
    stats = dict(stats)
    stats["frequency"] = {"raw": frequency_bands(raw_counts), "clustered": frequency_bands(clustered_counts)}
    stats["labels_per_image"] = {space: histogram_stats(h) for space, h in per_image.items()}
    stats["top_labels"] = {
        "raw": _top(raw_names, raw_counts, 25),
        "clustered": _top(clustered_names, clustered_counts, 25),
    }
    stats["largest_clusters"] = [
        {"name": clustered_names[c], "count": clustered_counts[c], "members": list(members[c])}
        for c in sorted(range(len(members)), key=lambda c: (-len(members[c]), c))[:25]
    ]
    write_json(os.path.join(report_dir, "stats.json"), stats)
    with open(os.path.join(report_dir, "clusters.tsv"), "w", encoding="utf-8") as f:
        f.write("cluster_id\tname\timages\tnum_members\tmembers\n")
        for c, name in enumerate(clustered_names):
            cells = [c, name, clustered_counts[c], len(members[c]), ", ".join(members[c])]
            f.write("\t".join(escape_cell(x) for x in cells) + "\n")  # no tab or line break inside a cell
    _plots(report_dir, raw_counts, clustered_counts, per_image)
    return stats


def _top(names: Sequence[str], counts: Sequence[int], k: int) -> list[list]:
    order = sorted(range(len(names)), key=lambda i: (-counts[i], i))[:k]
    return [[names[i], counts[i]] for i in order]


def _plots(report_dir: str, raw_counts, clustered_counts, per_image) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, counts, color in (("raw terms", raw_counts, "C0"), ("clustered labels", clustered_counts, "C1")):
        ys = sorted((c for c in counts if c > 0), reverse=True)
        if ys:
            ax.plot(range(1, len(ys) + 1), ys, color=color, label=f"{name} ({len(ys)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Plain-text log labels ("100", "2"): the default mathtext ones made drawing most of a small mining run.
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ticker.LogFormatter())
        axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.set_xlabel("label rank")
    ax.set_ylabel("images with the label")
    ax.set_title("Label frequency by rank")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    # Fixed margins: tight_layout measured every (log-axis) tick label and took most of a small mining run.
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(os.path.join(report_dir, "freq_by_rank.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.4
    for j, (space, color) in enumerate((("raw", "C0"), ("clustered", "C1"))):
        hist = per_image.get(space, {})
        xs = sorted(hist)
        ax.bar([x + (j - 0.5) * width for x in xs], [hist[x] for x in xs], width=width, color=color, label=space)
    ax.set_xlabel("labels per image")
    ax.set_ylabel("images")
    ax.set_title("Labels per image")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(os.path.join(report_dir, "labels_per_image.png"), dpi=110)
    plt.close(fig)
