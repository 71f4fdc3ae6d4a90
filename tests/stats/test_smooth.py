"""Smooth ECE and the smooth reliability curve against relplot 1.0.3 (the oracle, a test dependency only),
to 1e-6, and against hand-derived properties of the kernel smoother.

relplot is called with float64 numpy arrays (it computes in the dtype it is given; ours widens to float64).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import relplot
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relplot.estimators import KernelSmoother
from relplot.kernels import ReflectedGaussianKernel

from audit.errors import AuditError
from audit.stats import smooth
from audit.stats.smooth import (
    smooth_ece,
    smooth_ece_bandwidth,
    smooth_ece_sigma,
    smooth_reliability,
    smooth_reliability_band,
)

FAST = settings(max_examples=30, deadline=None)
TOL = 1e-6


@st.composite
def cases(draw, max_n: int = 300):
    """(confidences float64 in [0, 1] with 0, 1 and ties, correct): calibrated, over- or under-confident."""
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, generator=g, dtype=torch.float64) ** draw(st.sampled_from([0.2, 1.0, 3.0]))
    special = torch.rand(n, generator=g) < draw(st.sampled_from([0.0, 0.1]))
    conf = torch.where(special, torch.randint(0, 2, (n,), generator=g).double(), conf)
    shift = draw(st.sampled_from([-0.3, 0.0, 0.2]))
    hit = torch.rand(n, generator=g, dtype=torch.float64) < (conf + shift).clamp(0, 1)
    return conf, hit


def np_args(conf: torch.Tensor, hit: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return conf.double().numpy(), hit.double().numpy()


@FAST
@given(cases())
def test_smooth_ece_matches_relplot(case):
    conf, hit = case
    expected, width = relplot.smECE(*np_args(conf, hit), return_width=True)
    assert smooth_ece(conf, hit).item() == pytest.approx(expected, abs=TOL)
    assert smooth_ece_bandwidth(conf, hit) == width


@FAST
@given(cases(), st.sampled_from([1.0, 0.3, 0.05, 0.0123, 0.004, 0.0011]))
def test_smooth_ece_sigma_matches_relplot(case, sigma):
    conf, hit = case
    expected = relplot.smECE_sigma(*np_args(conf, hit), sigma)
    assert smooth_ece_sigma(conf, hit, sigma).item() == pytest.approx(expected, abs=TOL)


def test_large_near_calibrated_input_matches_relplot():
    # 200k examples, small smECE: the bisection goes below sigma = 0.01 and uses several grid sizes
    g = torch.Generator().manual_seed(1)
    probs = (2 * torch.randn(200_000, 10, generator=g)).softmax(-1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    conf, pred = probs.max(-1)
    hit = pred == labels
    expected, width = relplot.smECE(*np_args(conf, hit), return_width=True)
    assert width < 0.01
    assert smooth_ece(conf, hit).item() == pytest.approx(expected, abs=TOL)


@FAST
@given(cases(max_n=200), st.sampled_from([None, 0.2, 0.02]), st.integers(2, 300))
def test_curve_matches_relplot_smoother_and_kde(case, sigma, n_points):
    conf, hit = case
    f, y = np_args(conf, hit)
    curve = smooth_reliability(conf, hit, sigma, n_points=n_points)
    width = relplot.smECE(f, y, return_width=True)[1] if sigma is None else sigma
    assert curve.sigma == width
    mesh = np.linspace(0, 1, n_points)
    np.testing.assert_array_equal(curve.mesh.numpy(), mesh)
    # prepare_rel_diagram's main line without bagging, and its density
    mu = KernelSmoother(ReflectedGaussianKernel(width)).fit(f[:, None], y).predict(mesh[:, None])
    np.testing.assert_allclose(curve.accuracy.numpy(), mu, rtol=0, atol=TOL)
    np.testing.assert_allclose(curve.density.numpy(), ReflectedGaussianKernel(width).kde(f, mesh), rtol=0, atol=TOL)
    assert curve.smece.item() == pytest.approx(relplot.smECE_sigma(f, y, width), abs=TOL)


def test_float32_input_equals_its_float64_widening():
    g = torch.Generator().manual_seed(3)
    conf = torch.rand(5000, generator=g)
    hit = torch.rand(5000, generator=g) < conf
    assert smooth_ece(conf, hit).item() == smooth_ece(conf.double(), hit).item()


def test_inputs_are_not_modified():
    conf = torch.tensor([0.2, 0.9, 0.6], dtype=torch.float64)
    hit = torch.tensor([False, True, True])
    before = conf.clone()
    smooth_ece(conf, hit)
    smooth_reliability_band(conf, hit, 0.1, n_resamples=3)
    assert torch.equal(conf, before)


@pytest.mark.parametrize("m", [1025, 1281, 2561])
def test_merged_fine_cells_equal_a_direct_pass(m):
    # the grids whose m - 1 divides 5120 come from merging the 5121-point grid's cells
    g = torch.Generator().manual_seed(8)
    conf = torch.cat([torch.rand(5000, generator=g, dtype=torch.float64), torch.tensor([0.0, 1.0, 0.5, 0.25])])
    label = torch.rand(conf.numel(), generator=g) < 0.5
    merged = smooth._merge_cells(smooth._cell_sums(conf, label, 5121, 2), 5120 // (m - 1))
    torch.testing.assert_close(merged, smooth._cell_sums(conf, label, m, 2), rtol=0, atol=1e-9)


def test_chunked_deposit_equals_one_pass(monkeypatch):
    g = torch.Generator().manual_seed(4)
    conf = torch.rand(3000, generator=g, dtype=torch.float64)
    hit = torch.rand(3000, generator=g, dtype=torch.float64) < conf
    whole = smooth_ece_sigma(conf, hit, 0.01)
    monkeypatch.setattr(smooth, "_CPU_CHUNK", 7)
    torch.testing.assert_close(smooth_ece_sigma(conf, hit, 0.01), whole, rtol=0, atol=1e-14)


# --- hand-derived properties ------------------------------------------------------------------------

def test_perfectly_calibrated_point_masses_are_near_zero():
    # half the examples at 0.25 with a quarter correct, half at 0.75 with three quarters correct
    conf = torch.tensor([0.25] * 400 + [0.75] * 400, dtype=torch.float64)
    hit = torch.tensor(([True] + [False] * 3) * 100 + ([True] * 3 + [False]) * 100)
    assert smooth_ece_sigma(conf, hit, 0.05).item() < 1e-9


def test_constant_residual_gives_the_residual():
    # every example at confidence c and wrong: the smoothed residual is c times the smoothed mass, so
    # smECE_sigma = c * sum d / (sum d + 1e-4 e), just below c (e evaluation points)
    c, sigma = 0.6, 0.1
    conf = torch.full((1000,), c, dtype=torch.float64)
    value = smooth_ece_sigma(conf, torch.zeros(1000, dtype=torch.bool), sigma).item()
    assert c * (1 - 1e-6) < value < c


def test_one_example_right_at_zero_confidence():
    # f = 0, y = 1: residual -1 everywhere the mass is; the value is 1 up to the density floor
    value = smooth_ece(torch.tensor([0.0]), torch.tensor([True])).item()
    assert 0.999 < value <= 1.0


def test_band_contains_the_curve_and_narrows_with_more_data():
    g = torch.Generator().manual_seed(5)

    def width(n: int) -> float:
        conf = torch.rand(n, generator=g, dtype=torch.float64)
        hit = torch.rand(n, generator=g, dtype=torch.float64) < conf
        curve = smooth_reliability(conf, hit, 0.1, n_points=21)
        low, high = smooth_reliability_band(conf, hit, 0.1, n_points=21, n_resamples=100, seed=1)
        inner = slice(2, -2)
        assert bool(((low[inner] <= curve.accuracy[inner] + 1e-12) & (curve.accuracy[inner] <= high[inner] + 1e-12)).all())
        return float((high - low)[inner].mean())

    assert width(20_000) < width(500) / 3


def test_band_resamples_like_a_manual_bootstrap():
    # the band is the quantile of the curves of the resamples drawn by randint from the seeded generator
    g = torch.Generator().manual_seed(6)
    conf = torch.rand(300, generator=g, dtype=torch.float64)
    hit = torch.rand(300, generator=g, dtype=torch.float64) < conf
    low, high = smooth_reliability_band(conf, hit, 0.08, n_points=11, n_resamples=30, level=0.9, seed=7)
    draw = torch.Generator().manual_seed(7)
    index = torch.randint(0, 300, (30, 300), generator=draw)
    curves = torch.stack([smooth_reliability(conf[i], hit[i], 0.08, n_points=11).accuracy for i in index])
    expected = torch.quantile(curves, torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
    torch.testing.assert_close(low, expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(high, expected[1], rtol=0, atol=1e-12)


def test_band_is_seeded():
    conf = torch.linspace(0, 1, 200, dtype=torch.float64)
    hit = conf > 0.5
    a = smooth_reliability_band(conf, hit, 0.1, n_points=5, n_resamples=20, seed=3)
    b = smooth_reliability_band(conf, hit, 0.1, n_points=5, n_resamples=20, seed=3)
    c = smooth_reliability_band(conf, hit, 0.1, n_points=5, n_resamples=20, seed=4)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: smooth_ece(torch.tensor([0.5, 1.5]), torch.tensor([True, False])), r"in \[0, 1\]"),
        (lambda: smooth_ece(torch.tensor([float("nan")]), torch.tensor([True])), "NaN"),
        (lambda: smooth_ece(torch.tensor([], dtype=torch.float32), torch.tensor([], dtype=torch.bool)), "at least one"),
        (lambda: smooth_ece(torch.tensor([0.5]), torch.tensor([1])), "bool"),
        (lambda: smooth_ece_sigma(torch.tensor([0.5]), torch.tensor([True]), 0.0), "sigma"),
        (lambda: smooth_ece_sigma(torch.tensor([0.5]), torch.tensor([True]), 1.5), "sigma"),
        (lambda: smooth_reliability(torch.tensor([0.5]), torch.tensor([True]), n_points=1), "n_points"),
        (lambda: smooth_reliability_band(torch.tensor([0.5]), torch.tensor([True]), 0.1, n_resamples=0), "n_resamples"),
        (lambda: smooth_reliability_band(torch.tensor([0.5]), torch.tensor([True]), 0.1, level=1.0), "level"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(AuditError, match=match):
        call()


def test_docstring_examples():
    assert doctest.testmod(smooth, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
