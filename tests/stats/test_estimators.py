"""Debiased L2 (against uncertainty-calibration 0.1.4), ECE-sweep, top-label ECE (against netcal per class)
and KS (against float64 numpy references written from the papers' definitions), with hand cases and the
bin-edge semantics at 0, 1 and every edge.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from calibration import utils as uc
from hypothesis import given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE

from audit.errors import AuditError
from audit.stats import adaptive_ece, estimators, smooth_ece
from audit.stats.estimators import (
    calibration_extras,
    ece_debiased,
    ece_sweep,
    ece_sweep_bins,
    ece_toplabel,
    ks_error,
)

FAST = settings(max_examples=40, deadline=None)


# --- float64 numpy references from the definitions ----------------------------------------------------

def ref_sweep(conf: np.ndarray, hit: np.ndarray) -> tuple[float, int]:
    """Roelofs et al.: equal-mass groups of the stable sort order; the largest b with every b' <= b strictly
    increasing in accuracy; the ECE at that b."""
    order = np.argsort(conf, kind="stable")
    best = 1
    for b in range(2, len(conf) + 1):
        acc = [hit[g].mean() for g in np.array_split(order, b)]
        if not all(x < y for x, y in zip(acc, acc[1:])):
            break
        best = b
    groups = np.array_split(order, best)
    return sum(abs(hit[g].sum() - conf[g].sum()) for g in groups) / len(conf), best


def ref_ks(conf: np.ndarray, hit: np.ndarray) -> float:
    """Gupta et al. 2021: the largest |cumulative confidence - cumulative accuracy| / N over thresholds."""
    return max(abs(np.sum((conf - hit)[conf <= s])) for s in np.unique(conf)) / len(conf)


def ref_toplabel(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """sum over predicted class c and equal-width bin b of |correct - confidence| / N, edges i / n_bins."""
    pred, conf = probs.argmax(1), probs.max(1)
    hit = pred == labels
    total = 0.0
    for c in np.unique(pred):
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            mask = (pred == c) & (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= 1))
            total += abs(hit[mask].sum() - conf[mask].sum())
    return total / len(conf)


def oracle_debiased(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    return uc.lower_bound_scaling_ce(conf, hit.astype(np.int64), p=2, debias=True, num_bins=n_bins,
                                     binning_scheme=uc.get_equal_bins)


# --- strategies -----------------------------------------------------------------------------------------

@st.composite
def cases(draw, max_n: int = 200):
    """(confidences float64 in [0, 1] with edges, ties, 0 and 1; correct)."""
    n = draw(st.integers(1, max_n))
    grid = st.integers(0, 60).map(lambda i: i / 60)
    raw = draw(st.lists(st.one_of(st.floats(0, 1), grid, st.sampled_from([0.0, 1.0])), min_size=n, max_size=n))
    hit = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return np.array(raw), hit


@st.composite
def monotone_cases(draw, max_n: int = 300):
    """Distinct confidences with correctness drawn from them: sweeps of several bins."""
    n = draw(st.integers(2, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    return conf.numpy(), (torch.rand(n, generator=g, dtype=torch.float64) < conf).numpy()


def t(conf: np.ndarray, hit: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(conf), torch.from_numpy(hit)


# --- debiased L2 --------------------------------------------------------------------------------------

@FAST
@given(cases(), st.integers(1, 20))
def test_debiased_matches_uncertainty_calibration(case, n_bins):
    conf, hit = case
    assert ece_debiased(*t(conf, hit), n_bins).item() == pytest.approx(oracle_debiased(conf, hit, n_bins), abs=1e-12)


@FAST
@given(monotone_cases(), st.sampled_from([5, 10, 15]))
def test_debiased_matches_uncertainty_calibration_on_model_like_data(case, n_bins):
    conf, hit = case
    assert ece_debiased(*t(conf, hit), n_bins).item() == pytest.approx(oracle_debiased(conf, hit, n_bins), abs=1e-12)


def test_debiased_float32_sorts_like_float64():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(5000, generator=g)
    hit = torch.rand(5000, generator=g) < conf
    expected = oracle_debiased(conf.double().numpy(), hit.numpy(), 15)
    assert ece_debiased(conf, hit).item() == pytest.approx(expected, abs=1e-12)


def test_debiased_hand_case_and_edges():
    # sorted .2 .4 | .6 .8 with n_bins=2: edge (.4 + .6) / 2 = .5; correct F T | T T
    conf = torch.tensor([0.8, 0.2, 0.6, 0.4], dtype=torch.float64)
    # bin 1: c .3, a 1, n 2 -> .49 - 0; bin 2: c .7, a 0 -> .49 - 0: sqrt(.49) = .7
    assert ece_debiased(conf, torch.tensor([False, True, False, True]), 2).item() == pytest.approx(0.7, abs=1e-15)
    # bin 1: c .3, a .5 -> .04 - .25 / 1; bin 2: c .7, a 1 -> .09: the sum is negative, clamped to 0
    assert ece_debiased(conf, torch.tensor([True, False, True, True]), 2).item() == 0.0
    # a tie cut in two goes to the lower bin: values .5 .5 .5 .9 with 2 bins -> edges {.5, 1}: 3 | 1
    conf = torch.tensor([0.5, 0.5, 0.5, 0.9], dtype=torch.float64)
    hit = torch.tensor([False, False, False, True])
    # bin 1: c .5 a 0 n 3 -> .25; bin 2: n 1 adds nothing: sqrt(3/4 * .25)
    assert ece_debiased(conf, hit, 2).item() == pytest.approx((0.75 * 0.25) ** 0.5, abs=1e-15)
    # exactly 0 and 1 are binned like any value: 0 first, 1 last
    conf = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    hit = torch.tensor([True, True, False, False])
    # bin 1: c 0 a 1 -> 1 - 0; bin 2: c 1 a 0 -> 1 - 0: sqrt(1) = 1
    assert ece_debiased(conf, hit, 2).item() == 1.0


# --- ECE-sweep ----------------------------------------------------------------------------------------

@FAST
@given(cases(max_n=120))
def test_sweep_matches_definition(case):
    conf, hit = case
    value, bins = ref_sweep(conf, hit)
    c, k = t(conf, hit)
    assert ece_sweep_bins(c, k) == bins
    assert ece_sweep(c, k).item() == pytest.approx(value, abs=1e-12)
    assert ece_sweep(c, k).item() == pytest.approx(adaptive_ece(c, k, bins).item(), abs=1e-12)


@FAST
@given(monotone_cases())
def test_sweep_matches_definition_with_many_bins(case):
    conf, hit = case
    value, bins = ref_sweep(conf, hit)
    assert ece_sweep_bins(*t(conf, hit)) == bins
    assert ece_sweep(*t(conf, hit)).item() == pytest.approx(value, abs=1e-12)


def test_sweep_crosses_a_block_of_candidates(monkeypatch):
    # group g of 80 has g correct: the sweep runs past two blocks of 7 candidates
    n_groups = 80
    hit = torch.tensor([i < g for g in range(n_groups) for i in range(n_groups)])  # group g: g correct of 80
    conf = torch.linspace(0.01, 0.99, hit.numel(), dtype=torch.float64)
    value, bins = ref_sweep(conf.numpy(), hit.numpy())
    assert bins > 14
    monkeypatch.setattr(estimators, "_SWEEP_BLOCK", 7)
    assert ece_sweep_bins(conf, hit) == bins
    assert ece_sweep(conf, hit).item() == pytest.approx(value, abs=1e-12)


def test_sweep_hand_cases():
    conf = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    # F F T F T T: b=2 (1/3, 2/3) and b=3 (0, .5, 1) rise, b=4 (0, .5, 1, 1) does not: b* = 3
    hit = torch.tensor([False, False, True, False, True, True])
    assert ece_sweep_bins(conf, hit) == 3
    assert ece_sweep(conf, hit).item() == pytest.approx((0.3 + 0.3 + 0.9) / 6, abs=1e-15)
    # all correct: b = 2 already ties, b* = 1 (the overall gap)
    everything = torch.ones(6, dtype=torch.bool)
    assert ece_sweep_bins(conf, everything) == 1
    assert ece_sweep(conf, everything).item() == pytest.approx(1 - 0.35, abs=1e-15)
    # F T F T...: b = 2 gives 1/3, 2/3 (rises), b = 3 gives .5 .5 .5 (ties): b* = 2
    alternating = torch.tensor([False, True, False, True, False, True])
    assert ece_sweep_bins(conf, alternating) == 2
    # one example: b* = 1
    assert ece_sweep_bins(torch.tensor([1.0]), torch.tensor([True])) == 1
    assert ece_sweep(torch.tensor([0.0]), torch.tensor([True])).item() == 1.0


# --- KS ---------------------------------------------------------------------------------------------------

@FAST
@given(cases())
def test_ks_matches_definition(case):
    conf, hit = case
    assert ks_error(*t(conf, hit)).item() == pytest.approx(ref_ks(conf, hit), abs=1e-12)


@FAST
@given(cases(), st.randoms(use_true_random=False))
def test_ks_ignores_the_order_of_ties(case, rng):
    conf, hit = case
    perm = np.arange(len(conf))
    rng.shuffle(perm)
    assert ks_error(*t(conf[perm], hit[perm])).item() == pytest.approx(ks_error(*t(conf, hit)).item(), abs=1e-12)


def test_ks_hand_cases():
    # sorted .6 (T) .8 (F) .9 (T): partial sums -.4, .4, .3 -> .4 / 3
    assert ks_error(torch.tensor([0.9, 0.8, 0.6]), torch.tensor([True, False, True])).item() == pytest.approx(0.4 / 3, abs=1e-7)
    # ties summed as one step: .5 (T) and .5 (F) cancel, whatever their order
    assert ks_error(torch.tensor([0.5, 0.5]), torch.tensor([True, False])).item() == 0.0
    # 0 (T) then 1 (F): partial sums -1, 0 -> 1 / 2
    assert ks_error(torch.tensor([1.0, 0.0]), torch.tensor([False, True])).item() == 0.5


# --- top-label ECE ------------------------------------------------------------------------------------

@FAST
@given(st.integers(1, 300), st.integers(2, 8), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_toplabel_matches_netcal_per_class(n, k, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(n, k, generator=g, dtype=torch.float64)).softmax(-1)
    labels = torch.randint(0, k, (n,), generator=g)
    p, y = probs.numpy(), labels.numpy()
    pred, conf = p.argmax(1), p.max(1)
    # random float64 probabilities are on a bin edge with probability ~0, where netcal's linspace edges differ
    expected = sum((pred == c).mean() * ECE(bins=n_bins).measure(conf[pred == c], (y[pred == c] == c).astype(np.int64))
                   for c in np.unique(pred))
    assert ece_toplabel(probs, labels, n_bins).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 2, 4, 8, 16])
def test_toplabel_bin_edges(n_bins):
    # top probabilities exactly on every edge i / n_bins (dyadic: exact in float32 and float64), 0 and 1
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    top = edges.clamp(min=0.5)  # a top-1 probability of K=2 is >= 1/2
    probs = torch.stack([top, 1 - top], 1)
    labels = torch.arange(n_bins + 1) % 2
    expected = ref_toplabel(probs.numpy(), labels.numpy(), n_bins)
    for dtype in (torch.float64, torch.float32):
        assert ece_toplabel(probs.to(dtype), labels, n_bins).item() == pytest.approx(expected, abs=1e-12)


def test_toplabel_hand_case():
    # class 0 predicted at .8 twice (one right), class 1 at .8 once (wrong): bins of their own
    probs = torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.8, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # class 0: |1 - 1.6| = .6; class 1: |0 - .8| = .8; (0.6 + 0.8) / 3; the pooled ECE would be |1 - 2.4| / 3
    assert ece_toplabel(probs, labels, 10).item() == pytest.approx(1.4 / 3, abs=1e-15)


# --- together -----------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(st.integers(1, 400), st.integers(2, 6), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_extras_equal_the_separate_functions(n, k, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    probs = (2 * torch.randn(n, k, generator=g)).softmax(-1)
    labels = torch.randint(0, k, (n,), generator=g)
    conf, pred = probs.max(-1)
    hit = pred == labels
    out = calibration_extras(probs, labels, n_bins)
    assert torch.equal(out["smece"], smooth_ece(conf, hit))
    assert torch.equal(out["ece_debiased"], ece_debiased(conf, hit, n_bins))
    assert torch.equal(out["ece_sweep"], ece_sweep(conf, hit))
    assert int(out["ece_sweep_bins"]) == ece_sweep_bins(conf, hit)
    assert torch.equal(out["ece_toplabel"], ece_toplabel(probs, labels, n_bins))
    assert torch.equal(out["ks"], ks_error(conf, hit))


def test_inputs_are_not_modified():
    conf = torch.tensor([0.9, 0.2, 0.6], dtype=torch.float64)
    hit = torch.tensor([True, False, True])
    before = conf.clone()
    for fn in (ece_debiased, ece_sweep, ks_error):
        fn(conf, hit)
    assert torch.equal(conf, before)


@pytest.mark.parametrize("fn", [ece_debiased, ece_sweep, ece_sweep_bins, ks_error])
@pytest.mark.parametrize(
    "conf, hit, match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([True, False]), r"in \[0, 1\]"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([True, False]), "NaN"),
        (torch.tensor([0.5, 0.6]), torch.tensor([1, 0]), "bool"),
        (torch.tensor([], dtype=torch.float32), torch.tensor([], dtype=torch.bool), "at least one"),
    ],
)
def test_input_errors(fn, conf, hit, match):
    with pytest.raises(AuditError, match=match):
        fn(conf, hit)


def test_input_errors_of_probability_functions():
    with pytest.raises(AuditError, match="labels in"):
        ece_toplabel(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(AuditError, match=r"in \[0, 1\]"):
        calibration_extras(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(AuditError, match="n_bins"):
        ece_debiased(torch.tensor([0.5]), torch.tensor([True]), 0)


def test_docstring_examples():
    assert doctest.testmod(estimators, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
