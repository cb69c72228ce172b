"""The paper's tables from run records, as Markdown, CSV and LaTeX.

- ``arch_scale_table``: rows architectures (plus "<arch> (random init)" baselines), columns dataset scales.
- ``label_space_table``: raw vs clustered labels per architecture and scale, with the difference.
- ``multitask_table``: task sets (multi-task, weak-label only, single task) against retrieval and task metrics.
- ``embedding_form_table``: float vs binarized retrieval per embedding/feature.
- ``cost_table``: throughput, MFU, wall and accelerator hours per run, next to the quality metric.

A cell is the mean over the runs that share its row and column, shown "mean ± std (n=N)" when there are
several, and only runs that are replicates share a cell: runs whose configs differ in anything but the seed
(``tracking.identity``: every science key, the data manifest's fingerprint, the world size, the global batch,
the precision) get rows of their own, labelled with what differs; they are never averaged together. Every
table lists the runs behind each cell (``<table>.runs.csv``). A missing run or metric is a missing cell: "—" in
Markdown and LaTeX, an empty field in CSV, never a zero and never another metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.collect import AXES, is_metric, is_private, is_random_init
from tracking.textio import escape_cell

MISSING = "—"
# Preferred cell metrics, best first: the retrieval embedding when the runs have one, else the backbone.
DEFAULT_METRICS = (
    "eval/fashion_mnist/embedding/float/mAP@10",
    "eval/fashion_mnist/backbone/float/mAP@10",
    "eval/fashion_mnist/embedding/linear_probe_acc",
    "eval/fashion_mnist/backbone/linear_probe_acc",
    "eval/fashion_mnist/embedding/knn_acc",
    "eval/fashion_mnist/backbone/knn_acc",
    "eval/weak_label_val/head/mAP",
    "val/weak_label/mAP",
)
# Axes that split rows when they vary among a table's runs.
CONTEXT_AXES = ("experiment", "label_space", "tasks", "stage", "img_size")
# Row order: the CNN baselines, then ViTs by size; unknown names after, alphabetically.
ARCH_ORDER = (
    "resnet_demo",
    "resnet50",
    "resnet101",
    "resnext101_32x8d",
    "vit_demo",
    "vit_ti16",
    "vit_s16",
    "vit_b16",
    "vit_l16",
    "vit_h14",
)
COST_METRICS = (
    "perf/images_per_sec",
    "perf/step_time_s",
    "perf/mfu",
    "trainer/global_step",
    "cost/devices",
    "cost/wall_hours",
    "cost/accelerator_hours",
)
LABEL_SPACES = ("raw", "clustered")
# Swept parameters whose last name is clear on its own in a row label (dim=64); other keys keep their full name.
SWEPT_SHORT = ("tasks.embedding.dim",)


@dataclass(frozen=True)
class Cell:
    """The values of one table cell (one per run) and their summary."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def n(self) -> int:
        return len(self.values)


def make_cell(values: Iterable[float | None]) -> Cell | None:
    """A cell of the finite values given; None (a missing cell) when there are none."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
    return Cell(kept) if kept else None


def format_value(value: float, like: float | None = None) -> str:
    """Four decimals below 10 (metrics in [0, 1]), one below 1,000, thousands separators above; with
    ``like``, the precision that value would get (a std printed as its mean is)."""
    size = abs(value if like is None else like)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.4f}"


def format_cell(cell: Cell | None, missing: str = MISSING) -> str:
    if cell is None:
        return missing
    if cell.n > 1:
        return f"{format_value(cell.mean)} ± {format_value(cell.std, like=cell.mean)} (n={cell.n})"
    return format_value(cell.mean)


def _latex_escape(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text).replace("—", "--").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


@dataclass
class Table:
    """A rendered-ready table: ``rows`` are (label, one cell per column)."""

    name: str
    title: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell | None]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The runs behind each cell: (row label, column, metric, record), written as <name>.runs.csv.
    members: list[tuple[str, str, str, Mapping[str, Any]]] = field(default_factory=list)

    def cell(self, row: str, column: str) -> Cell | None:
        """The cell at a row label and column name (KeyError when either is not in the table)."""
        cells = dict(self.rows)[row]
        return cells[self.columns.index(column)]

    @property
    def filled(self) -> int:
        """How many cells hold a value."""
        return sum(c is not None for _, cells in self.rows for c in cells)

    def to_markdown(self) -> str:
        def esc(text: str) -> str:
            return escape_cell(text, extra="|")  # a "|" or a line break would end the cell or the row

        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(esc(c) for c in [self.row_header, *self.columns]) + " |")
        lines.append("|" + "---|" + "---:|" * len(self.columns))
        for label, cells in self.rows:
            lines.append("| " + " | ".join([esc(label), *(format_cell(c) for c in cells)]) + " |")
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Means at full precision; a missing cell is an empty field."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        # Labels escaped: csv quotes a line break, but a line-based reader would still split the row.
        writer.writerow([escape_cell(c) for c in [self.row_header, *self.columns]])
        for label, cells in self.rows:
            writer.writerow([escape_cell(label), *("" if c is None else f"{c.mean:.6g}" for c in cells)])
        return buffer.getvalue()

    def to_latex(self) -> str:
        """A booktabs tabular (needs \\usepackage{booktabs})."""
        lines = [
            f"% {self.title}",
            r"\begin{tabular}{l" + "r" * len(self.columns) + "}",
            r"\toprule",
            " & ".join(_latex_escape(c) for c in [self.row_header, *self.columns]) + r" \\",
            r"\midrule",
        ]
        for label, cells in self.rows:
            lines.append(" & ".join(_latex_escape(x) for x in [label, *(format_cell(c) for c in cells)]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def runs_csv(self) -> str:
        """One line per (cell, run): row, column, the run's name, W&B id, seed, replicate fingerprint, the metric and
        its value (empty when the run lacks it: that run is the cell's gap)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["row", "column", "run_name", "wandb_id", "seed", "replicate", "metric", "value"])
        for row, column, metric, r in self.members:
            value = r.get(metric)
            cells = [row, column, r.get("run_name"), r.get("wandb_id"), r.get("seed"), r.get("replicate"), metric]
            writer.writerow(
                [escape_cell("" if c is None else str(c)) for c in cells] + ["" if value is None else value]
            )
        return buffer.getvalue()

    def write(self, out_dir: Path, formats: Sequence[str] = ("md", "csv")) -> list[Path]:
        """Write ``<out_dir>/<name>.<fmt>`` for each of "md", "csv", "tex", and ``<name>.runs.csv``; returns the
        paths."""
        renderers: dict[str, Callable[[], str]] = {"md": self.to_markdown, "csv": self.to_csv, "tex": self.to_latex}
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in formats:
            path = out_dir / f"{self.name}.{fmt}"
            path.write_text(renderers[fmt]())
            paths.append(path)
        path = out_dir / f"{self.name}.runs.csv"
        path.write_text(self.runs_csv())
        paths.append(path)
        return paths


# --------------------------------------------------------------------------------- helpers


def choose_metric(records: Sequence[Mapping[str, Any]], candidates: Sequence[str] = DEFAULT_METRICS) -> str | None:
    """The table metric: the sweep's own ``metric.name`` (recorded by the runner) when the runs name one; else the
    candidate most trained runs hold (ties: the earlier one), among candidates some run holds. A run with no eval/
    metric at all (its evaluation failed or never ran) counts as holding every eval/ candidate: it is a gap in its
    cell (the notes name it), never a reason to show another metric. Else the eval/ metric most runs hold; None
    when the runs hold no such metric."""
    trained = [r for r in records if not is_random_init(r)] or list(records)
    declared = {r["_sweep_metric"] for r in trained if r.get("_sweep_metric")}
    if len(declared) == 1:
        return declared.pop()

    def holds(record: Mapping[str, Any], name: str) -> bool:
        return name in record or (name.startswith("eval/") and not any(k.startswith("eval/") for k in record))

    best, best_count = None, 0
    for name in candidates:
        count = sum(holds(r, name) for r in trained) if any(name in r for r in trained) else 0
        if count > best_count:
            best, best_count = name, count
    if best is not None:
        return best
    counts: dict[str, int] = {}
    for r in trained:
        for key in r:
            if key.startswith("eval/"):
                counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[0] if counts else None


def param_axes(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Swept parameters recorded as axes (dotted names such as tasks.embedding.dim), sorted."""
    return sorted({k for r in records for k in r if k not in AXES and not is_metric(k) and not is_private(k)})


def value_of(record: Mapping[str, Any], key: str) -> Any:
    """An axis of a record, else one of its comparison keys (``_science``: config keys and ``lineage.*``)."""
    return record[key] if key in record else (record.get("_science") or {}).get(key)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying(records: Sequence[Mapping[str, Any]], axes: Iterable[str]) -> list[str]:
    """The axes that take more than one value among the records."""
    out = []
    for axis in axes:
        values = {_canon(value_of(r, axis)) for r in records}
        if len(values) > 1:
            out.append(axis)
    return out


def replicate_splits(records: Sequence[Mapping[str, Any]], cell_of: Callable[[Mapping[str, Any]], Any]) -> list[str]:
    """The comparison keys (``_science``) that differ between runs that would share a cell: what the rows must be
    split by so that a cell averages replicates only (runs with one ``replicate`` fingerprint). A record without
    comparison keys splits by its fingerprint itself."""
    cells: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        cells.setdefault(_canon(cell_of(r)), []).append(r)
    keys: set[str] = set()
    for group in cells.values():
        if len({r.get("replicate") for r in group}) < 2:
            continue
        known = [r.get("_science") or {} for r in group]
        names = {k for s in known for k in s if k != "seed"}
        differ = {k for k in names if len({_canon(s.get(k)) for s in known}) > 1}
        keys |= differ or {"replicate"}
    return sorted(keys)


def _axis_text(axis: str, value: Any) -> str:
    if axis == "img_size":
        return f"{value}px"
    if axis == "scale" and isinstance(value, (int, float)):
        return f"scale {value:g}"
    if axis in ("experiment", "label_space", "tasks", "stage"):
        return str(value)
    if axis == "lineage.data_fingerprint":
        return f"data {str(value)[:8]}"
    if axis.startswith("lineage."):
        return f"{axis.removeprefix('lineage.')}={value}"
    if axis == "replicate":
        return f"config {value}"
    if axis in SWEPT_SHORT:
        return f"{axis.split('.')[-1]}={value}"
    return f"{axis}={value}"


def arch_rank(arch: Any) -> tuple[int, str]:
    """Sort key of an architecture name (ARCH_ORDER first)."""
    name = str(arch)
    return (ARCH_ORDER.index(name), name) if name in ARCH_ORDER else (len(ARCH_ORDER), name)


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def row_label(record: Mapping[str, Any], extras: Sequence[str], base: Sequence[str] = ()) -> str:
    """``arch`` (+ " (random init)") + the base axes (" · scale 0.25", task set) + " [differing axes]".
    A random-init baseline has no dataset scale, so scale never labels it."""
    label = str(record.get("arch"))
    if is_random_init(record):
        label += " (random init)"
        extras = [a for a in extras if a != "scale"]
    for axis in base:
        label += f" · {_axis_text(axis, value_of(record, axis))}"
    if extras:
        label += " [" + ", ".join(_axis_text(a, value_of(record, a)) for a in extras) + "]"
    return label


def group_rows(
    records: Sequence[Mapping[str, Any]], extras: Sequence[str], base: Sequence[str] = ()
) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Records grouped by row label, in table order (architecture, random-init after trained, then axes)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    keys: dict[str, tuple] = {}
    for r in records:
        label = row_label(r, extras, base)
        groups.setdefault(label, []).append(r)
        keys[label] = (
            arch_rank(r.get("arch")),
            is_random_init(r),
            tuple(_sortable(value_of(r, a)) for a in (*base, *extras)),
        )
    return [(label, groups[label]) for label in sorted(groups, key=lambda lab: keys[lab])]


def _metric_cell(records: Iterable[Mapping[str, Any]], metric: str) -> Cell | None:
    return make_cell(r.get(metric) for r in records)


def _filled(table: Table, row: str, column: str, records: Sequence[Mapping[str, Any]], metric: str) -> Cell | None:
    """The cell of ``records`` for ``metric``, its runs recorded in ``table.members``."""
    table.members.extend((row, column, metric, r) for r in records)
    return _metric_cell(records, metric)


def _split_rows(records: Sequence[Mapping[str, Any]], extras: list[str], base: Sequence[str], column: Any) -> list[str]:
    """``extras`` plus the comparison keys non-replicates that would share a cell differ in (``replicate_splits``);
    ``column(record)`` names a record's column (None: a row is one cell per metric)."""
    more = replicate_splits(records, lambda r: (row_label(r, extras, base), column(r) if column else None))
    return [*extras, *[k for k in more if k not in extras]]


def _gap_notes(records: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    missing = sorted(str(r.get("run_name")) for r in records if metric not in r)
    if not missing:
        return []
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [f"{len(missing)} run(s) lack `{metric}` and are gaps in their cells: {shown}."]


def _trained(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if not is_random_init(r)]


def context_axes(records: Sequence[Mapping[str, Any]], drop: Sequence[str] = ()) -> list[str]:
    axes = [a for a in (*CONTEXT_AXES, *param_axes(records)) if a not in drop]
    return varying(records, axes)


def _cell_note(metric: str) -> str:
    return (
        f"Cells: `{metric}`, mean ± std (n=runs) over replicates (runs that differ only in the seed); "
        f"{MISSING} = no finished run holds it. The runs of each cell: the table's .runs.csv."
    )


# ---------------------------------------------------------------------------------- tables


def _split_note(extras: Sequence[str]) -> list[str]:
    return [f"Rows split by what differs between runs: {', '.join(extras)}."] if extras else []


def arch_scale_table(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> Table | None:
    """Architecture x dataset scale. Random-init baselines do not depend on scale: their value is
    repeated under every scale, as the bar each trained cell should clear. None without a metric."""
    metric = metric or choose_metric(records)
    if metric is None:
        return None
    trained = [r for r in _trained(records) if r.get("scale") is not None]
    randoms = [r for r in records if is_random_init(r)]
    scales = sorted({float(r["scale"]) for r in trained})
    columns = [f"{s:g}" for s in scales] or ["any scale"]
    extras = _split_rows(trained, context_axes(trained, drop=("scale",)), (), lambda r: float(r["scale"]))
    random_extras = [a for a in context_axes(randoms, drop=("scale",)) if a != "experiment"]
    random_extras = _split_rows(randoms, random_extras, (), None)
    table = Table("arch_scale", f"Architecture x dataset scale: {metric}", "model \\ data scale", columns)
    keyed = []  # (sort key, label, cells): each random-init row right after its architecture's trained rows
    for i, (label, group) in enumerate(group_rows(trained, extras)):
        cells = [_filled(table, label, f"{s:g}", [r for r in group if float(r["scale"]) == s], metric) for s in scales]
        keyed.append(((arch_rank(group[0].get("arch")), 0, i), label, cells))
    for i, (label, group) in enumerate(group_rows(randoms, random_extras)):
        cell = _filled(table, label, "any scale", group, metric)
        keyed.append(((arch_rank(group[0].get("arch")), 1, i), label, [cell] * len(columns)))
    table.rows = [(label, cells) for _, label, cells in sorted(keyed, key=lambda item: item[0])]
    table.notes = [_cell_note(metric), "Columns: fraction of the weak-label training set (nested subsets)."]
    if randoms:
        table.notes.append("Random-init rows: the backbone without pretraining, one value repeated under every scale.")
    table.notes += _split_note(extras) + _gap_notes([*trained, *randoms], metric)
    return table


def label_space_table(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> Table | None:
    """Raw vs clustered labels per architecture and scale, with clustered − raw. None without a metric."""
    metric = metric or choose_metric(records)
    if metric is None:
        return None
    trained = [r for r in _trained(records) if r.get("label_space") in LABEL_SPACES]
    extras = context_axes(trained, drop=("label_space", "experiment"))
    extras = _split_rows(trained, extras, ("scale",), lambda r: r["label_space"])
    columns = ["raw", "clustered", "Δ (clustered − raw)"]
    table = Table("label_space", f"Label space: raw vs clustered, {metric}", "model · scale", columns)
    for label, group in group_rows(trained, extras, base=("scale",)):
        raw = _filled(table, label, "raw", [r for r in group if r["label_space"] == "raw"], metric)
        clustered = _filled(table, label, "clustered", [r for r in group if r["label_space"] == "clustered"], metric)
        delta = Cell((clustered.mean - raw.mean,)) if raw and clustered else None
        table.rows.append((label, [raw, clustered, delta]))
    table.notes = [_cell_note(metric), "Δ: clustered − raw (positive: clustering the long tail helped)."]
    table.notes += _split_note(extras) + _gap_notes(trained, metric)
    return table


def _present(records: Sequence[Mapping[str, Any]], names: Iterable[str]) -> list[str]:
    return [n for n in dict.fromkeys(names) if any(n in r for r in records)]


def multitask_table(
    records: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None, dataset: str = "fashion_mnist"
) -> Table | None:
    """Task sets (rows: architecture · tasks) against retrieval and per-task metrics (columns)."""
    trained = _trained(records)
    if metrics is None:
        ds = f"eval/{dataset}"
        classifiers = sorted({k for r in trained for k in r if re.fullmatch(r"val/clf/[^/]+/acc", k)})
        metrics = [
            f"{ds}/embedding/float/mAP@10",
            f"{ds}/backbone/float/mAP@10",
            f"{ds}/embedding/knn_acc",
            f"{ds}/backbone/knn_acc",
            f"{ds}/embedding/linear_probe_acc",
            f"{ds}/backbone/linear_probe_acc",
            *classifiers,
            "eval/weak_label_val/head/mAP",
            "val/weak_label/mAP",
        ]
    columns = _present(trained, metrics)
    if not columns:
        return None
    extras = context_axes(trained, drop=("tasks", "experiment"))
    extras += varying(trained, ["scale"])
    extras = _split_rows(trained, extras, ("tasks",), None)
    table = Table("multitask", "Multi-task vs single-task", "model · tasks", columns)
    for label, group in group_rows(trained, extras, ("tasks",)):
        table.rows.append((label, [_filled(table, label, m, group, m) for m in columns]))
    table.notes = [
        f"Cells: mean ± std (n=runs) over replicates; {MISSING} = the run has no such task or metric.",
        "Tasks: weak_label = weak labels only; +embedding = retrieval proxies; clf:<name> = a use-case classifier.",
        *_split_note(extras),
    ]
    return table


def embedding_form_table(
    records: Sequence[Mapping[str, Any]], k: int | None = None, dataset: str = "fashion_mnist"
) -> Table | None:
    """Float (cosine) vs binarized (Hamming on sign bits) retrieval mAP@k, per feature; the ratio says how
    much binarizing keeps. ``k`` defaults to the chosen metric's k (else 10). None without binary metrics."""
    if k is None:
        chosen = choose_metric(records) or ""
        match = re.search(r"@(\d+)$", chosen)
        k = int(match.group(1)) if match else 10
    columns, pairs = [], []
    for feature in ("embedding", "backbone"):
        flt, binary = (f"eval/{dataset}/{feature}/{form}/mAP@{k}" for form in ("float", "binary"))
        if any(binary in r for r in records):
            columns += [f"{feature} float", f"{feature} binary", f"{feature} binary/float"]
            pairs.append((flt, binary))
    if not pairs:
        return None
    extras = context_axes(records, drop=("experiment",)) + varying(_trained(records), ["scale"])
    extras = _split_rows(records, extras, (), None)
    table = Table("embedding_form", f"Float vs binarized retrieval (mAP@{k})", "model", columns)
    for label, group in group_rows(records, extras):
        cells: list[Cell | None] = []
        for flt, binary in pairs:
            f_cell = _filled(table, label, flt, group, flt)
            b_cell = _filled(table, label, binary, group, binary)
            ratio = Cell((b_cell.mean / f_cell.mean,)) if f_cell and b_cell and f_cell.mean else None
            cells += [f_cell, b_cell, ratio]
        table.rows.append((label, cells))
    table.notes = [f"Cells: eval/{dataset}/<feature>/<float|binary>/mAP@{k}; binary/float = share of quality kept."]
    table.notes += _split_note(extras)
    return table


def cost_table(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> Table | None:
    """Throughput and accelerator time per run group, next to the quality metric (quality at equal
    compute). Reads perf/*, trainer/global_step, any time/* metric and the cost/* figures derived from
    run.json's wall time x devices. None when the runs hold none of them."""
    trained = _trained(records)
    timings = sorted({k for r in trained for k in r if k.startswith("time/")})
    quality = metric or choose_metric(trained)
    columns = _present(trained, [*COST_METRICS, *timings, *([quality] if quality else [])])
    if not any(c.startswith(("perf/", "time/", "cost/")) for c in columns):
        return None
    extras = context_axes(trained, drop=("experiment",)) + varying(trained, ["scale"])
    extras = _split_rows(trained, extras, (), None)
    table = Table("cost", "Cost: throughput and accelerator time", "model", columns)
    for label, group in group_rows(trained, extras):
        table.rows.append((label, [_filled(table, label, m, group, m) for m in columns]))
    table.notes = [
        "Per run, mean over replicates sharing a row. cost/wall_hours: run.json started → ended (includes restarts "
        "and evaluation after fit); cost/accelerator_hours = wall hours x devices x nodes from the run's trainer "
        "config.",
        *_split_note(extras),
    ]
    return table


def build_tables(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> tuple[list[Table], dict[str, str]]:
    """Every table the records can fill.

    Returns:
        (tables in paper order, {table name: why it was left out}).
    """
    metric = metric or choose_metric(records)
    trained = _trained(records)
    tables: list[Table] = []
    skipped: dict[str, str] = {}

    def add(name: str, table: Table | None, reason: str) -> None:
        if table is not None and table.filled:
            tables.append(table)
        else:
            skipped[name] = reason

    add("arch_scale", arch_scale_table(records, metric), "no run holds the table metric")
    if {r.get("label_space") for r in trained} >= set(LABEL_SPACES):
        add("label_space", label_space_table(records, metric), "no run holds the table metric")
    else:
        skipped["label_space"] = "needs runs with both raw and clustered labels"
    if len({r.get("tasks") for r in trained}) > 1:
        add("multitask", multitask_table(records), "no run holds a multi-task metric")
    else:
        skipped["multitask"] = "needs runs with more than one task set"
    add("embedding_form", embedding_form_table(records), "no run holds binarized retrieval metrics")
    add("cost", cost_table(records, metric), "no run holds perf/ or timing metrics")
    return tables, skipped
