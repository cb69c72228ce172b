"""PNG plots from run records (matplotlib, Agg backend: no display needed).

- ``scaling_plot``: metric vs dataset scale per architecture on a log x axis, a power law
  ``metric = c * scale**k`` fitted per architecture where it has at least 3 scales (least squares in
  log-log space, numpy.polyfit), random-init baselines as dotted horizontal lines.
- ``label_space_plot``: raw vs clustered labels, grouped bars per architecture and scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from studies.collect import is_random_init
from studies.tables import LABEL_SPACES, choose_metric, context_axes, group_rows, make_cell, varying


@dataclass(frozen=True)
class PowerLaw:
    """``y = coefficient * x ** exponent``, fitted in log-log space; ``r2`` is that fit's R²."""

    exponent: float
    coefficient: float
    r2: float
    points: int

    def __call__(self, x: Any) -> Any:
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Fit ``y = c * x**k`` by a degree-1 ``numpy.polyfit`` of log y on log x.

    Raises:
        ValueError: fewer than 2 distinct x, or a value <= 0 (no logarithm).
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or len(np.unique(xs)) < 2:
        raise ValueError("a power-law fit needs at least 2 distinct x values, one y per x")
    if np.any(xs <= 0) or np.any(ys <= 0):
        raise ValueError("a power-law fit needs positive x and y (it is fitted on their logarithms)")
    lx, ly = np.log(xs), np.log(ys)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    total = ly - ly.mean()
    ss_tot = float(total @ total)
    r2 = 1.0 - float(residual @ residual) / ss_tot if ss_tot > 0 else 1.0
    return PowerLaw(exponent=float(slope), coefficient=float(math.exp(intercept)), r2=r2, points=len(xs))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def scaling_series(
    records: Sequence[Mapping[str, Any]], metric: str
) -> tuple[dict[str, list[tuple[float, float, float, int]]], dict[str, tuple[str, float]]]:
    """Per row label (as in the arch x scale table): sorted (scale, mean, std, n); and per random-init
    label: (its architecture, value)."""
    trained = [r for r in records if not is_random_init(r) and r.get("scale") is not None and metric in r]
    extras = context_axes(trained, drop=("scale",))
    series: dict[str, list[tuple[float, float, float, int]]] = {}
    for label, group in group_rows(trained, extras):
        points = []
        for scale in sorted({float(r["scale"]) for r in group}):
            cell = make_cell(r.get(metric) for r in group if float(r["scale"]) == scale)
            if cell is not None:
                points.append((scale, cell.mean, cell.std, cell.n))
        if points:
            series[label] = points
    randoms: dict[str, tuple[str, float]] = {}
    random_records = [r for r in records if is_random_init(r) and metric in r]
    random_extras = [a for a in varying(random_records, ("img_size", "label_space")) if a]
    for label, group in group_rows(random_records, random_extras):
        cell = make_cell(r.get(metric) for r in group)
        if cell is not None:
            randoms[label] = (str(group[0].get("arch")), cell.mean)
    return series, randoms


def scaling_plot(
    records: Sequence[Mapping[str, Any]],
    path: Path,
    metric: str | None = None,
    min_points: int = 3,
) -> dict[str, PowerLaw]:
    """Write a PNG of metric vs dataset scale (log x) per architecture, with power-law fits.

    Args:
        records: run records (``studies.collect``).
        path: the PNG to write.
        metric: the y metric (default: ``tables.choose_metric``).
        min_points: distinct scales an architecture needs for a fit.

    Returns:
        {row label: PowerLaw} for every architecture with a fit (empty when none qualifies).

    Raises:
        ValueError: when no run holds the metric at a known scale, nor any baseline.
    """
    metric = metric or choose_metric(records)
    if metric is None:
        raise ValueError("no run holds a metric to plot")
    series, randoms = scaling_series(records, metric)
    if not series and not randoms:
        raise ValueError(f"no run holds {metric} at a known dataset scale")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of: dict[str, str] = {}
    fits: dict[str, PowerLaw] = {}
    all_scales = sorted({p[0] for pts in series.values() for p in pts}) or [0.01, 1.0]
    for i, (label, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        color_of.setdefault(label.split(" ")[0], color)
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        errs = [p[2] for p in points]
        legend = label
        positive = [(x, y) for x, y in zip(xs, ys) if y > 0]
        if len({x for x, _ in positive}) >= min_points:
            fit = fit_power_law([x for x, _ in positive], [y for _, y in positive])
            fits[label] = fit
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, fit(grid), linestyle="--", linewidth=1, color=color)
            legend += f"  (fit: ∝ scale^{fit.exponent:.3f})"
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", color=color, label=legend, capsize=3)
    for j, (label, (arch, value)) in enumerate(randoms.items()):
        color = color_of.get(arch, colors[(len(series) + j) % len(colors)])
        ax.hlines(value, all_scales[0], all_scales[-1], colors=color, linestyles=":", label=label)
    ax.set_xscale("log")
    ax.set_xticks(all_scales)
    ax.set_xticklabels([f"{s:g}" for s in all_scales])
    ax.minorticks_off()
    ax.set_xlabel("dataset scale (fraction of the weak-label training set, log)")
    ax.set_ylabel(metric)
    ax.set_title("Metric vs dataset scale per architecture")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return fits


def label_space_plot(records: Sequence[Mapping[str, Any]], path: Path, metric: str | None = None) -> bool:
    """Write grouped bars of raw vs clustered labels per architecture (and scale). A missing run has no
    bar (marked "n/a"), never a zero bar. Returns False (nothing written) without both label spaces."""
    metric = metric or choose_metric(records)
    trained = [r for r in records if not is_random_init(r) and r.get("label_space") in LABEL_SPACES and metric in r]
    if metric is None or {r["label_space"] for r in trained} != set(LABEL_SPACES):
        return False
    extras = context_axes(trained, drop=("label_space", "experiment"))
    groups = group_rows(trained, extras, base=("scale",))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups)), 4), dpi=120)
    width = 0.38
    for k, space in enumerate(LABEL_SPACES):
        labelled = False
        for i, (_, group) in enumerate(groups):
            cell = make_cell(r.get(metric) for r in group if r["label_space"] == space)
            x = i + (k - 0.5) * width
            if cell is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            yerr = cell.std if cell.n > 1 else None
            ax.bar(x, cell.mean, width, yerr=yerr, color=f"C{k}", capsize=3, label=None if labelled else space)
            labelled = True
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([label for label, _ in groups], fontsize=7, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title("Raw vs clustered weak labels")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
