"""Scaling plots: the power-law fit recovers known exponents; PNG files are written."""

from __future__ import annotations

import numpy as np
import pytest

from studies.plots import fit_power_law, label_space_plot, scaling_plot

PNG = b"\x89PNG\r\n\x1a\n"
METRIC = "eval/fashion_mnist/backbone/float/mAP@10"


def _record(arch, scale, value, **axes):
    base = {"arch": arch, "scale": scale, "init": "trained", "label_space": "clustered", "tasks": "weak_label"}
    return {**base, **axes, METRIC: value}


def test_power_law_fit_recovers_a_known_exponent():
    x = np.array([0.01, 0.1, 0.25, 1.0])
    fit = fit_power_law(x, 0.3 * x**0.25)
    assert fit.exponent == pytest.approx(0.25, abs=1e-9)
    assert fit.coefficient == pytest.approx(0.3, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.points == 4
    assert fit(0.5) == pytest.approx(0.3 * 0.5**0.25)
    rng = np.random.default_rng(0)
    x = np.geomspace(0.01, 1.0, 8)
    noisy = 0.5 * x**-0.2 * np.exp(rng.normal(0, 0.01, size=x.size))
    assert fit_power_law(x, noisy).exponent == pytest.approx(-0.2, abs=0.02)


def test_power_law_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="2 distinct"):
        fit_power_law([1.0, 1.0], [0.2, 0.3])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([0.1, 1.0], [0.0, 0.3])


def test_scaling_plot_writes_png_and_fits_archs_with_three_scales(tmp_path):
    scales = [0.1, 0.25, 1.0]
    records = [_record("vit_demo", s, 0.4 * s**0.15) for s in scales]
    records += [_record("vit_demo", s, 0.4 * s**0.15, seed=1) for s in scales]  # a second seed per point
    records += [_record("resnet_demo", s, 0.3 * s**0.05) for s in (0.25, 1.0)]  # two scales: no fit
    records += [{"arch": "vit_demo", "init": "random", "scale": 1.0, METRIC: 0.1}]
    path = tmp_path / "plots" / "scaling.png"
    fits = scaling_plot(records, path, METRIC)
    assert path.read_bytes()[:8] == PNG
    assert list(fits) == ["vit_demo"]
    assert fits["vit_demo"].exponent == pytest.approx(0.15, abs=1e-9)
    with pytest.raises(ValueError, match="no run holds"):
        scaling_plot([{"arch": "a", "scale": 1.0, "init": "trained"}], tmp_path / "x.png", METRIC)


def test_label_space_plot_needs_both_spaces(tmp_path):
    records = [_record("vit_demo", 1.0, 0.5, label_space="raw"), _record("vit_demo", 1.0, 0.55)]
    records += [_record("resnet_demo", 1.0, 0.4)]  # raw missing: a marked gap, not a zero bar
    path = tmp_path / "label_space.png"
    assert label_space_plot(records, path, METRIC)
    assert path.read_bytes()[:8] == PNG
    assert not label_space_plot(records[1:], tmp_path / "none.png", METRIC)
    assert not (tmp_path / "none.png").exists()
