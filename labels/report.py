"""The label report: ``report/stats.json``, plots (matplotlib, Agg) and the readable cluster list."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import storage
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


# What to turn when images are skipped for a reason (the quality report prints it beside each count).
SKIP_KNOBS = {
    "no_label": "see 'images without a label' below",
    "group_cap": "curation.max_per_group (or curation.group_by)",
    "series_cap": "curation.max_per_series (0: off)",
    "duplicate_merged": "none: byte-identical copies are merged into one sample, their texts joined",
    "no_text": "sources[i].fields / sources[i].text_signal: which caption and json fields are read",
    "missing_image": "the input: a sample without an image member / file",
    "corrupt_image": "the input: bytes that do not decode",
    "image_too_large": "the input: a decompression bomb",
    "bad_metadata": "the input: a .json that does not parse",
    "svg_too_large": "image.max_svg_bytes",
    "render_timeout": "image.render_timeout_s",
    "render_failed": "the input: an SVG the renderer refuses",
    "unreadable_svg": "the input: an SVG that is not XML",
    "mirror_variant": "none: Tux Paint's hand-made mirror copies",
}
UNLABELLED_KNOBS = {
    "no_terms": "text held no eligible term (stopwords, numbers, dates, boilerplate, or under vocab.min_score): "
    "signals.weights, vocab.min_score, text.boilerplate",
    "template_only": "only template text: templates.rigidity / templates.min_share (raise to keep more words)",
    "over_ceiling": "only template text and terms over the ceiling: vocab.max_df_share",
    "rare_terms": "terms too rare for the vocabulary: vocab.min_df (lower), vocab.max_terms (raise)",
}
HEAD_LABELS = 30

# A head label that looks like a few sites' scaffolding rather than content (``scaffold_suspect``): a safety net that
# changes no label, its thresholds chosen on benchmarks/bench_web_labels.py's six caption sets (docs/labels.md, "The
# label-quality report"). An origin (site, else source) is *bound* to a label when the label is on a large share of
# the origin's written images; a label is suspect when its bound origins give most of its images and are a small part
# of the corpus.
SUSPECT_COVER = 0.3  # bound: the label is on at least 30% of the origin's written images
SUSPECT_CONCENTRATION = 0.5  # suspect: its bound origins give at least half of the label's images...
SUSPECT_LIFT = 2.0  # ...at least twice their share of the written images (so never with one origin)
SUSPECT_KNOB = (
    "If the word is those sites' template text (licence, shop, page or keyword scaffolding), add it to"
    " `text.stop_terms` (whole terms never used as labels; empty unless the preset sets it) or the phrase around it to"
    " `text.boilerplate` (cut from every text; a list you set replaces the default list in configs/labels_schema.py,"
    " so copy it), in the config YAML or on the command line (`text.stop_terms=[word,'two words']`), and mine again."
    " If it is a site's subject (a flag shop's 'flag'), keep it. This check changes no label."
)


def scaffold_suspect(
    images: int,
    label_origins: Mapping[str, int],
    origin_written: Mapping[str, int],
    written: int,
    cover: float = SUSPECT_COVER,
    concentration: float = SUSPECT_CONCENTRATION,
    lift: float = SUSPECT_LIFT,
) -> tuple[bool, list[list]]:
    """Whether a label with ``images`` images, ``label_origins`` (origin -> its images) of them, looks like scaffolding
    of the origins it is bound to (thresholds ``SUSPECT_*`` above); and those origins as ``[origin, images, share of
    the origin's written images]``, largest first. The thresholds are arguments for benchmarks/bench_web_labels.py's
    sensitivity grid.

    The numbers cannot tell a site's template word ("envelope included" on half a print shop's captions) from a
    topical site's subject ("flag" on half a flag shop's): both are flagged, and the report leaves the call to the
    reader. A label spread over many origins, or bound to an origin that is most of the corpus, is not."""
    bound = sorted(
        (
            [o, n, round(n / origin_written[o], 3)]
            for o, n in label_origins.items()
            if origin_written.get(o, 0) > 0 and n >= cover * origin_written[o]
        ),
        key=lambda e: (-e[1], e[0]),
    )
    if images <= 0 or written <= 0 or not bound:
        return False, bound
    share = sum(n for _, n, _ in bound) / images
    size = sum(origin_written[o] for o, _, _ in bound) / written
    return share >= concentration and share >= lift * size, bound


def write_quality_report(
    report_dir: str,
    stats: dict,
    raw_names: Sequence[str],
    raw_counts: Sequence[int],
    origins: Mapping[int, Mapping],
    origin_written: Mapping[str, int],
) -> dict:
    """``label_quality.json`` and ``label_quality.md``: is the head of the labels content? The most frequent labels
    with their top origins (site, else source), the skips by reason with the knob to turn, why images have no label,
    and the text dropped as boilerplate, dates or templates with its counts.

    Args:
        stats: the label report's stats (``write_report``'s return value).
        origins: label id -> origin -> images (each write task's largest ``labels.passes.ORIGINS_KEPT`` origins per
            label, summed: exact for a label's top origins unless they spread over many partitions).
        origin_written: origin -> written images (the denominator of a suspect's cover, ``scaffold_suspect``).
    """
    counts = stats["counts"]
    written, read = counts["written"], counts["read"]
    order = sorted(range(len(raw_names)), key=lambda i: (-raw_counts[i], i))[:HEAD_LABELS]
    head = []
    for i in order:
        top = sorted(origins.get(i, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        suspect, bound = scaffold_suspect(raw_counts[i], origins.get(i, {}), origin_written, written)
        head.append(
            {
                "label": raw_names[i],
                "images": raw_counts[i],
                "share": round(raw_counts[i] / written, 4) if written else 0.0,
                "top_origins": [[o, n, round(n / raw_counts[i], 3) if raw_counts[i] else 0.0] for o, n in top],
                # origins whose written images carry the label at least SUSPECT_COVER of the time: [origin,
                # images, share of the origin's written images]
                "bound_origins": bound,
                "suspect": suspect,
            }
        )
    skipped = stats["counts"]["skipped"]
    considered = stats["coverage"]["considered"]
    unlabelled = stats.get("unlabelled", {})
    dropped = stats["dropped"]
    quality = {
        "read": read,
        "written": written,
        "skipped": [
            {
                "reason": r,
                "images": n,
                "share_of_read": round(n / read, 4) if read else 0.0,
                "knob": SKIP_KNOBS.get(r, ""),
            }
            for r, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "no_label": {
            "images": sum(unlabelled.values()),
            "share_of_considered": round(sum(unlabelled.values()) / considered, 4) if considered else 0.0,
            "why": [
                {"reason": r, "images": n, "knob": UNLABELLED_KNOBS.get(r, "")}
                for r, n in sorted(unlabelled.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        },
        "head": head,
        "suspects": {
            "labels": [h["label"] for h in head if h["suspect"]],
            "rule": {
                "concentration": SUSPECT_CONCENTRATION,
                "lift": SUSPECT_LIFT,
                "cover": SUSPECT_COVER,
            },
            "written_by_origin": dict(sorted(origin_written.items(), key=lambda kv: (-kv[1], kv[0]))),
            "knob": SUSPECT_KNOB,
        },
        "dropped": {
            "template_words": [
                [w, *v] for w, v in sorted(dropped["templates"]["words"].items(), key=lambda kv: -kv[1][0])
            ],
            "template_terms": dropped["templates"]["terms"],
            "template_terms_head": dropped["templates"]["head"],
            "series_scaffold": [[w, n] for w, n in dropped.get("series_scaffold", {}).items()],
            "boilerplate_and_dates": [[k, n] for k, n in dropped["boilerplate_phrases"].items()],
            "df_ceiling": [[d["term"], d["df"], d["share"]] for d in dropped["df_ceiling"]["dropped"]],
        },
    }
    write_json(os.path.join(report_dir, "label_quality.json"), quality)
    lines = [
        f"# Label quality: {stats.get('name', '')}",
        "",
        f"{read:,} images read, {written:,} written. Are the head labels content? Each label's top origins show"
        " whether one site or source makes it.",
        "",
        "## Head labels",
        "",
        "| label | images | share of written | top origins (images, share of the label) | suspect |",
        "|---|---:|---:|---|---|",
    ]
    for h in head:
        tops = "; ".join(f"{escape_cell(o)} {n} ({s:.0%})" for o, n, s in h["top_origins"])
        mark = "site scaffolding?" if h["suspect"] else ""
        lines.append(f"| {escape_cell(h['label'])} | {h['images']:,} | {h['share']:.1%} | {tops} | {mark} |")
    suspects = [h for h in head if h["suspect"]]
    lines += [
        "",
        f"## Suspect head labels (site scaffolding?): {len(suspects)}",
        "",
        f"An origin (site, else source) is bound to a label that is on at least {SUSPECT_COVER:.0%} of its written"
        f" images. A head label is suspect when its bound origins give at least {SUSPECT_CONCENTRATION:.0%} of its"
        f" images, at least {SUSPECT_LIFT:g} times their share of the written images: a word those sites put on"
        " their captions, or a topical site's subject. " + SUSPECT_KNOB,
        "",
    ]
    for h in suspects:
        share = sum(n for _, n, _ in h["bound_origins"]) / h["images"]
        sites = "; ".join(f"{escape_cell(o)} (on {c:.0%} of its images)" for o, _, c in h["bound_origins"])
        lines.append(f"- {escape_cell(h['label'])}: {share:.0%} of its {h['images']:,} images from {sites}")
    if not suspects:
        lines.append("(none)" if len(origin_written) > 1 else "(none: one origin, nothing to compare it with)")
    lines += [
        "",
        "## Skipped images, by reason",
        "",
        "| reason | images | share of read | knob |",
        "|---|---:|---:|---|",
    ]
    for e in quality["skipped"]:
        lines.append(f"| {e['reason']} | {e['images']:,} | {e['share_of_read']:.1%} | {escape_cell(e['knob'])} |")
    nl = quality["no_label"]
    lines += [
        "",
        f"## Images without a label: {nl['images']:,} ({nl['share_of_considered']:.1%} of those that reached labelling)",
        "",
        "| why | images | knob |",
        "|---|---:|---|",
    ]
    for e in nl["why"]:
        lines.append(f"| {e['reason']} | {e['images']:,} | {escape_cell(e['knob'])} |")
    dq = quality["dropped"]
    lines += [
        "",
        "## Dropped as template text (templates.*)",
        "",
        f"{len(dq['template_words'])} template words, {dq['template_terms']:,} template terms. Words (documents,"
        " rigidity, the neighbour they are bound to):",
        "",
        ", ".join(f"{escape_cell(w)} ({n}, {r:.2f}, {escape_cell(b)})" for w, n, r, b in dq["template_words"][:60])
        or "(none)",
        "",
        "Most frequent template terms: "
        + (", ".join(f"{escape_cell(t)} ({n})" for t, n in dq["template_terms_head"]) or "(none)"),
        "",
        "Series' own caption words (next to a counter; dropped from the kept copies of their series, with the copies):"
        " " + (", ".join(f"{escape_cell(w)} ({n})" for w, n in dq["series_scaffold"]) or "(none)"),
        "",
        "## Cut as boilerplate phrases, dates and quantities (text.boilerplate, dates, numbers with units)",
        "",
        ", ".join(f"{escape_cell(k)} ({n})" for k, n in dq["boilerplate_and_dates"][:40]) or "(none)",
        "",
        "## Over the document-frequency ceiling (vocab.max_df_share)",
        "",
        ", ".join(f"{escape_cell(t)} ({n}, {s:.1%})" for t, n, s in dq["df_ceiling"][:40]) or "(none)",
        "",
    ]
    with open(os.path.join(report_dir, "label_quality.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return quality


def suspects_warning(report_dir: str, top: int = 5) -> str | None:
    """The one console line mining ends with when head labels are suspect (``label_quality.json``), else None."""
    path = os.path.join(report_dir, "label_quality.md")
    # The report may be on a bucket (output=s3://...: docs/labels_distributed.md), so it is read through storage/.
    head = json.loads(storage.read_text(os.path.join(report_dir, "label_quality.json")))["head"]
    suspects = [h for h in head if h["suspect"]]
    if not suspects:
        return None
    names = ", ".join(
        f"'{h['label']}' (on {h['bound_origins'][0][2]:.0%} of {h['bound_origins'][0][0]}'s images"
        + (f" and {len(h['bound_origins']) - 1} more sites'" if len(h["bound_origins"]) > 1 else "")
        + ")"
        for h in suspects[:top]
    )
    more = f" and {len(suspects) - top} more" if len(suspects) > top else ""
    return (
        f"warning: {len(suspects)} of the {len(head)} head labels look like site scaffolding rather than content:"
        f" {names}{more}. Check {path} ('Suspect head labels'); template words go in text.stop_terms /"
        " text.boilerplate (no label was changed)."
    )
