"""``make_report.py``: collect runs, write the paper's tables and the scaling plots into one folder.

    python make_report.py --runs runs --group demo_cpu --out results/demo_cpu
    python make_report.py --wandb ENTITY/PROJECT --sweep SWEEP_ID --out results/scale_arch
    python make_report.py --wandb-dir wandb --group demo_cpu --out results/demo_cpu   # offline W&B runs, unsynced

Writes to ``--out``: ``<table>.md`` / ``.csv`` (``.tex`` with ``--latex``) for every table the runs fill,
``scaling.png`` (+ ``scaling_fit.json``, the power-law exponents), ``label_space.png`` when both label
spaces ran, ``records.csv`` (one row per run, every axis and metric) and ``report.md`` (all of it).
Prints the architecture x scale table and the fitted exponents.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.collect import AXES, collect_local, collect_wandb, collect_wandb_offline, dedupe, metric_names
from studies.plots import PowerLaw, label_space_plot, scaling_plot
from studies.tables import Table, build_tables, choose_metric, param_axes
from tracking.textio import escape_cell


@dataclass
class Report:
    """What ``write_report`` produced."""

    metric: str | None
    tables: list[Table]
    skipped: dict[str, str]
    fits: dict[str, PowerLaw] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


def write_records_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per run: the axes, swept parameters, then every metric (empty where a run lacks one)."""
    columns = [*AXES, *param_axes(records), *metric_names(records)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writerow({k: escape_cell(k) for k in columns})
        for record in records:
            # Strings escaped (tracking.textio): no row spans lines for a line-based reader.
            writer.writerow({k: _csv_value(record.get(k)) for k in columns})
    return path


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return escape_cell(value) if isinstance(value, str) else value


def fit_lines(fits: Mapping[str, PowerLaw], metric: str | None) -> list[str]:
    """Human-readable power-law lines, one per architecture."""
    return [
        f"{label}: {metric} ≈ {fit.coefficient:.4g} · scale^{fit.exponent:.4f} (R² {fit.r2:.3f}, {fit.points} scales)"
        for label, fit in fits.items()
    ]


def write_report(
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    metric: str | None = None,
    formats: Sequence[str] = ("md", "csv"),
    title: str = "Results",
) -> Report:
    """Write tables, plots, records.csv and report.md for a set of run records.

    Args:
        records: from ``studies.collect``.
        out_dir: created if needed.
        metric: the cell / y-axis metric (default: ``tables.choose_metric``).
        formats: table formats among "md", "csv", "tex".
        title: report.md's heading.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = metric or choose_metric(records)
    tables, skipped = build_tables(records, metric)
    report = Report(metric, tables, skipped)
    for table in tables:
        report.files += table.write(out_dir, formats)
    sections = [f"# {title}", "", f"{len(records)} runs; table metric `{metric}`.", ""]
    if metric is not None:
        try:
            report.fits = scaling_plot(records, out_dir / "scaling.png", metric)
            report.files.append(out_dir / "scaling.png")
            fits_path = out_dir / "scaling_fit.json"
            payload = {"metric": metric, "fits": {k: v.as_dict() for k, v in report.fits.items()}}
            fits_path.write_text(json.dumps(payload, indent=2))
            report.files.append(fits_path)
            sections += ["![metric vs dataset scale](scaling.png)", ""]
        except ValueError as err:
            skipped["scaling.png"] = str(err)
        if label_space_plot(records, out_dir / "label_space.png", metric):
            report.files.append(out_dir / "label_space.png")
            sections += ["![raw vs clustered labels](label_space.png)", ""]
    for table in tables:
        sections += [table.to_markdown()]
    if report.fits:
        sections += ["### Power-law fits (metric = c · scale^k, least squares in log-log)", ""]
        sections += [f"- {line}" for line in fit_lines(report.fits, metric)] + [""]
    if skipped:
        sections += ["### Not reported", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    (out_dir / "report.md").write_text("\n".join(sections))
    report.files.append(out_dir / "report.md")
    if records:
        report.files.append(write_records_csv(records, out_dir / "records.csv"))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_report.py",
        description="Tables (Markdown, CSV) and scaling plots from local run dirs or W&B.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python make_report.py --runs runs --group demo_cpu --out results/demo_cpu     # after `make demo`
  python make_report.py --wandb ENTITY/PROJECT --sweep SWEEP_ID --out results/scale_arch

writes to --out: <table>.md and .csv (.tex with --latex) per table the runs fill, the scaling plots
(.png), records.csv (one row per run: every axis and metric) and report.md (all of it).""",
    )
    parser.add_argument(
        "--runs", default=None, help="runs directory (offline): a folder, e.g. runs, or a URL, e.g. s3://bucket/runs"
    )
    parser.add_argument("--group", default=None, help="only runs of this W&B group / sweep name / experiment")
    parser.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT", help="collect from the W&B API (online)")
    parser.add_argument("--sweep", default=None, help="with --wandb: only runs of this sweep id")
    parser.add_argument(
        "--wandb-dir", default=None, help="offline W&B runs (a ./wandb folder), read with W&B's reader, merged per id"
    )
    parser.add_argument("--tag", action="append", default=[], help="with --wandb: runs with any of these tags")
    parser.add_argument("--metric", default=None, help="table cell / plot metric (default: chosen from the runs)")
    parser.add_argument("--include-unfinished", action="store_true", help="also tabulate running/failed runs")
    parser.add_argument("--latex", action="store_true", help="also write .tex tables")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``make_report.py``: 0 when a table was written, 1 when the runs filled none, 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    if not args.runs and not args.wandb and not args.wandb_dir:
        args.runs = "runs"
    records: list[dict] = []
    try:
        if args.runs:
            records += collect_local(args.runs, group=args.group, include_unfinished=args.include_unfinished)
        if args.wandb:
            records += collect_wandb(
                args.wandb,
                sweep=args.sweep,
                group=args.group,
                tags=args.tag,
                include_unfinished=args.include_unfinished,
            )
        if args.wandb_dir:
            records += collect_wandb_offline(
                args.wandb_dir, group=args.group, include_unfinished=args.include_unfinished
            )
    except (FileNotFoundError, PermissionError) as err:
        print(f"make_report: {err}", file=sys.stderr)
        return 2
    found = len(records)
    records = dedupe(records)  # a run in runs/ and in W&B is one run
    if len(records) < found:
        print(f"{found - len(records)} W&B run(s) already collected from run directories: counted once")
    sources = (
        args.runs and f"{args.runs}/",
        args.wandb and f"W&B {args.wandb}",
        args.wandb_dir and f"{args.wandb_dir}/",
    )
    source = " + ".join(x for x in sources if x)
    where = f" in group {args.group}" if args.group else ""
    print(f"{len(records)} runs from {source}{where}")
    formats = ("md", "csv", "tex") if args.latex else ("md", "csv")
    title = f"Results: {args.group}" if args.group else "Results"
    report = write_report(records, Path(args.out), metric=args.metric, formats=formats, title=title)
    main_table = report.table("arch_scale") or (report.tables[0] if report.tables else None)
    if main_table is not None:
        print()
        print(main_table.to_markdown())
    for line in fit_lines(report.fits, report.metric):
        print(f"power law  {line}")
    for name, why in report.skipped.items():
        print(f"not reported  {name}: {why}")
    print(f"wrote {len(report.files)} files to {args.out}/")
    return 0 if report.tables else 1
