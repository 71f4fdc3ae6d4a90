"""Calibration metrics against netcal 1.4 (the oracle), a float64 numpy reference and hand-computed cases.

netcal is called with 1-D confidences and 0/1 correctness flags, which gives top-label ECE for binary and
multiclass alike. netcal builds its edges with np.linspace and clips to [eps, 1 - eps]; the hypothesis
comparisons therefore keep confidences off the edges and away from 0 and 1, and the edge cases are
checked by hand (and the divergence on an edge is pinned in test_netcal_edge_divergence).
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from netcal.metrics import ECE, MCE

from audit.errors import AuditError
from audit.stats import calibration
from audit.stats.calibration import (
    BinnedCalibration,
    adaptive_ece,
    calibration_errors,
    classwise_ece,
    ece,
    mce,
    reliability_bins,
)

FAST = settings(max_examples=40, deadline=None)


# --- float64 numpy reference: the convention written out bin by bin ---------------------------------

def ref_bins(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> list[tuple[int, float, float]]:
    """(count, mean confidence, accuracy) per bin: [i/n, (i+1)/n), last closed, edges as float64 i/n."""
    out = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        mask = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= 1.0))
        n_b = int(mask.sum())
        out.append((n_b, float(conf[mask].mean()) if n_b else np.nan, float(hit[mask].mean()) if n_b else np.nan))
    return out


def ref_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    return sum(n_b / len(conf) * abs(a - c) for n_b, c, a in ref_bins(conf, hit, n_bins) if n_b)


def ref_mce(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    return max(abs(a - c) for n_b, c, a in ref_bins(conf, hit, n_bins) if n_b)


def ref_adaptive(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    order = np.argsort(conf, kind="stable")
    return sum(len(g) / len(conf) * abs(hit[g].mean() - conf[g].mean())
               for g in np.array_split(order, n_bins) if len(g))


def netcal_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int, equal_intervals: bool = True) -> float:
    return ECE(bins=n_bins, equal_intervals=equal_intervals).measure(conf, hit.astype(np.int64))


# --- strategies -------------------------------------------------------------------------------------

@st.composite
def off_edge_cases(draw, max_n: int = 200):
    """(confidences float64, correct, n_bins) with every confidence at least 1e-9 from a bin edge."""
    n_bins = draw(st.integers(1, 30))
    n = draw(st.integers(1, max_n))
    raw = draw(st.lists(st.floats(1e-6, 1 - 1e-6), min_size=n, max_size=n))
    conf = np.array(raw)
    scaled = conf * n_bins
    conf = np.where(np.abs(scaled - np.round(scaled)) < 1e-9 * n_bins, conf + 1e-7, conf)
    hit = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return conf, hit, n_bins


@st.composite
def any_cases(draw, max_n: int = 200):
    """(confidences float64 in [0, 1], edges and ties included, correct, n_bins)."""
    n_bins = draw(st.integers(1, 30))
    n = draw(st.integers(1, max_n))
    on_grid = st.integers(0, 4 * n_bins).map(lambda i: i / (4 * n_bins))
    raw = draw(st.lists(st.one_of(st.floats(0, 1), on_grid, st.sampled_from([0.0, 1.0])), min_size=n, max_size=n))
    hit = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return np.array(raw), hit, n_bins


def t(conf: np.ndarray, hit: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(conf), torch.from_numpy(hit)


# --- against netcal ---------------------------------------------------------------------------------

@FAST
@given(off_edge_cases())
def test_ece_mce_match_netcal_off_edges(case):
    conf, hit, n_bins = case
    c, k = t(conf, hit)
    assert ece(c, k, n_bins).item() == pytest.approx(netcal_ece(conf, hit, n_bins), abs=1e-12)
    assert mce(c, k, n_bins).item() == pytest.approx(MCE(bins=n_bins).measure(conf, hit.astype(np.int64)), abs=1e-12)


@FAST
@given(off_edge_cases(), st.integers(1, 20))
def test_adaptive_matches_netcal_equal_mass_when_bins_agree(case, per_bin):
    # netcal cuts at np.quantile edges; with distinct values and N = per_bin * n_bins its groups are
    # exactly the tensor_split groups (module docstring of calibration)
    conf, hit, n_bins = case
    conf = np.resize(conf, per_bin * n_bins) + np.arange(per_bin * n_bins) * 1e-12
    hit = np.resize(hit, conf.shape)
    assert len(np.unique(conf)) == len(conf)
    got = adaptive_ece(*t(conf, hit), n_bins).item()
    assert got == pytest.approx(netcal_ece(conf, hit, n_bins, equal_intervals=False), abs=1e-12)


@FAST
@given(off_edge_cases(max_n=60))
def test_float32_inputs_match_netcal(case):
    conf, hit, n_bins = case
    conf32 = conf.astype(np.float32)
    c, k = t(conf32, hit)
    # netcal clips float32 inputs to [eps32, 1 - eps32]: keep away from both ends
    assume(conf32.min() > 1e-6 and conf32.max() < 1 - 1e-6)
    assert ece(c, k, n_bins).item() == pytest.approx(netcal_ece(conf32, hit, n_bins), abs=1e-9)


@FAST
@given(st.integers(1, 50), st.integers(2, 6), st.integers(1, 20), st.randoms(use_true_random=False))
def test_classwise_matches_netcal_per_class(n, k, n_bins, rng):
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    probs = (torch.randn(n, k, generator=gen, dtype=torch.float64) * 3).softmax(-1)
    labels = torch.randint(0, k, (n,), generator=gen)
    p, y = probs.numpy(), labels.numpy()
    expected = np.mean([netcal_ece(p[:, c], y == c, n_bins) for c in range(k)])
    # random float64 probabilities are on an edge with probability ~0, and never below 1e-16 here
    assert classwise_ece(probs, labels, n_bins).item() == pytest.approx(expected, abs=1e-12)


def test_netcal_edge_divergence():
    # float64 0.7 is the edge 7/10 here (bin 7) but lies below netcal's linspace edge 7 * 0.1 (bin 6)
    conf, hit = np.array([0.7, 0.65]), np.array([True, False])
    assert np.linspace(0, 1, 11)[7] > 0.7
    assert ece(*t(conf, hit), 10).item() == pytest.approx((0.3 + 0.65) / 2, abs=1e-15)
    assert netcal_ece(conf, hit, 10) == pytest.approx(abs(0.5 - 0.675), abs=1e-12)


# --- against the float64 reference, edges and ties included -----------------------------------------

@FAST
@given(any_cases())
def test_matches_reference_everywhere(case):
    conf, hit, n_bins = case
    c, k = t(conf, hit)
    assert ece(c, k, n_bins).item() == pytest.approx(ref_ece(conf, hit, n_bins), abs=1e-12)
    assert mce(c, k, n_bins).item() == pytest.approx(ref_mce(conf, hit, n_bins), abs=1e-12)
    assert adaptive_ece(c, k, n_bins).item() == pytest.approx(ref_adaptive(conf, hit, n_bins), abs=1e-12)
    bins = reliability_bins(c, k, n_bins)
    ref = ref_bins(conf, hit, n_bins)
    assert bins.count.tolist() == [r[0] for r in ref]
    np.testing.assert_allclose(bins.confidence.numpy(), [r[1] for r in ref], atol=1e-12)
    np.testing.assert_allclose(bins.accuracy.numpy(), [r[2] for r in ref], atol=1e-12)


@FAST
@given(any_cases(max_n=100))
def test_float32_binning_is_by_exact_value(case):
    conf, hit, n_bins = case
    conf32 = conf.astype(np.float32)
    # the reference compares the exact (widened) float32 value with float64 i/n
    got = reliability_bins(*t(conf32, hit), n_bins).count.tolist()
    assert got == [r[0] for r in ref_bins(conf32.astype(np.float64), hit, n_bins)]


def test_adaptive_large_skewed_input_matches_reference():
    # many ties and a crowded top bucket exercise the histogram path of adaptive_ece
    gen = torch.Generator().manual_seed(0)
    conf = torch.cat([torch.rand(30_000, generator=gen) ** 8, torch.ones(20_000), torch.full((5_000,), 0.5)])
    conf = conf[torch.randperm(conf.numel(), generator=gen)]
    hit = torch.rand(conf.numel(), generator=gen) < conf
    expected = ref_adaptive(conf.double().numpy(), hit.numpy(), 15)
    assert adaptive_ece(conf, hit, 15).item() == pytest.approx(expected, abs=1e-12)


@FAST
@given(any_cases(max_n=150), st.integers(1, 40))
def test_equal_mass_sums_with_coarse_buckets(case, n_buckets):
    # few buckets put many examples, ties and several cuts into one bucket: the exact-rank path
    conf, hit, n_bins = case
    count, conf_sum, n_correct = calibration._equal_mass_sums(*t(conf, hit), n_bins, n_buckets=n_buckets)
    groups = np.array_split(np.argsort(conf, kind="stable"), n_bins)
    assert count.tolist() == [len(g) for g in groups]
    np.testing.assert_allclose(conf_sum.numpy(), [conf[g].sum() for g in groups], atol=1e-12)
    assert n_correct.tolist() == [hit[g].sum() for g in groups]


@settings(max_examples=25, deadline=None)
@given(any_cases(max_n=120), st.integers(1, 50))
def test_chunked_passes_equal_one_pass(case, chunk):
    # inputs above calibration._CPU_CHUNK examples are processed chunk by chunk on CPU
    conf, hit, n_bins = case
    c, k = t(conf, hit)
    probs = torch.stack([c, 1 - c], 1)  # (N, 2)
    labels = torch.from_numpy((~hit).astype(np.int64))
    whole = [ece(c, k, n_bins), mce(c, k, n_bins), adaptive_ece(c, k, n_bins), classwise_ece(probs, labels, n_bins)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "_CPU_CHUNK", chunk)
        chunked = [ece(c, k, n_bins), mce(c, k, n_bins), adaptive_ece(c, k, n_bins), classwise_ece(probs, labels, n_bins)]
    torch.testing.assert_close(torch.stack(chunked), torch.stack(whole), atol=1e-12, rtol=0)


def test_strided_float64_input_is_not_modified():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], dtype=torch.float64)
    column = probs[:, 1]
    before = probs.clone()
    hit = torch.tensor([True, False, True])
    assert ece(column, hit, 10).item() == pytest.approx(ref_ece(column.numpy().copy(), hit.numpy(), 10), abs=1e-15)
    adaptive_ece(column, hit, 2)
    classwise_ece(probs, torch.tensor([1, 0, 0]))
    assert torch.equal(probs, before)


# --- hand-computed cases ----------------------------------------------------------------------------

def test_hand_case_edges_zero_and_one():
    # 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]: 0 -> bin 0, each inner edge -> the bin above, 1 -> bin 3
    conf = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    hit = torch.tensor([True, False, True, False, True])
    bins = reliability_bins(conf, hit, n_bins=4)
    assert bins.count.tolist() == [1, 1, 1, 2]
    assert bins.confidence.tolist() == [0.0, 0.25, 0.5, 0.875]
    assert bins.accuracy.tolist() == [1.0, 0.0, 1.0, 0.5]
    assert bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # (1 * 1 + 1 * .25 + 1 * .5 + 2 * .375) / 5
    assert ece(conf, hit, 4).item() == 0.5
    assert mce(conf, hit, 4).item() == 1.0


@pytest.mark.parametrize("n_bins", [1, 2, 3, 4, 7, 10, 15, 22])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_edge_zero_and_one_for_all_binned_estimators(n_bins, dtype):
    # one example on each edge i / n_bins (as its dtype rounds it), 0 and 1 included; each lands in the bin
    # its exact value selects: [i/n, (i+1)/n), the last bin closed
    conf = (torch.arange(n_bins + 1, dtype=torch.float64) / n_bins).to(dtype)
    hit = torch.arange(n_bins + 1) % 2 == 0
    wide = conf.double().numpy()
    expected = [r[0] for r in ref_bins(wide, hit.numpy(), n_bins)]
    assert reliability_bins(conf, hit, n_bins).count.tolist() == expected
    assert sum(expected) == n_bins + 1 and expected[0] >= 1 and expected[-1] >= 1  # 0 first, 1 last
    assert ece(conf, hit, n_bins).item() == pytest.approx(ref_ece(wide, hit.numpy(), n_bins), abs=1e-12)
    assert mce(conf, hit, n_bins).item() == pytest.approx(ref_mce(wide, hit.numpy(), n_bins), abs=1e-12)
    assert adaptive_ece(conf, hit, n_bins).item() == pytest.approx(ref_adaptive(wide, hit.numpy(), n_bins), abs=1e-12)
    stream = BinnedCalibration(n_bins)
    stream.update(conf, hit)
    assert stream.compute()["bins"].count.tolist() == expected
    # classwise: K = 2 columns c and 1 - c, both on edges
    probs = torch.stack([conf, 1 - conf], 1)
    labels = (~hit).long()
    p = probs.double().numpy()
    ref = np.mean([ref_ece(p[:, j], labels.numpy() == j, n_bins) for j in range(2)])
    assert classwise_ece(probs, labels, n_bins).item() == pytest.approx(ref, abs=1e-12)


def test_hand_case_float32_point_seven():
    # float32 0.7 is 0.69999998..., below the edge 7/10: bin 6; float64 0.7 is the edge itself: bin 7
    hit = torch.tensor([True])
    assert reliability_bins(torch.tensor([0.7], dtype=torch.float32), hit, 10).count.argmax().item() == 6
    assert reliability_bins(torch.tensor([0.7], dtype=torch.float64), hit, 10).count.argmax().item() == 7


@pytest.mark.parametrize(
    "value, n_bins, expected",
    [
        (np.nextafter(0.9, 0.0), 10, 8),  # c * 10 rounds up to 9.0 in float64, yet c < 9/10
        (15 / 22, 22, 15),  # c * 22 rounds down below 15.0, yet c is the edge 15/22 itself
    ],
)
def test_hand_case_float64_next_to_an_edge(value, n_bins, expected):
    bins = reliability_bins(torch.tensor([value], dtype=torch.float64), torch.tensor([True]), n_bins)
    assert bins.count.argmax().item() == expected


def test_hand_case_all_empty_but_one():
    conf = torch.tensor([0.6, 0.62, 0.65], dtype=torch.float64)
    hit = torch.tensor([True, False, True])
    bins = reliability_bins(conf, hit, n_bins=10)
    assert bins.count.tolist() == [0] * 6 + [3] + [0] * 3
    assert torch.isnan(bins.confidence[torch.arange(10) != 6]).all()
    assert torch.isnan(bins.accuracy[torch.arange(10) != 6]).all()
    gap = 2 / 3 - (0.6 + 0.62 + 0.65) / 3
    assert ece(conf, hit, 10).item() == pytest.approx(gap, abs=1e-15)
    assert mce(conf, hit, 10).item() == pytest.approx(gap, abs=1e-15)


@pytest.mark.parametrize("hit, expected", [(False, 0.3), (True, 0.7)])
def test_hand_case_single_example(hit, expected):
    conf, k = torch.tensor([0.3], dtype=torch.float64), torch.tensor([hit])
    for metric in (ece, mce, adaptive_ece):
        assert metric(conf, k, 15).item() == pytest.approx(expected, abs=1e-15)


def test_hand_case_one_bin_is_overall_gap():
    conf = torch.tensor([0.0, 1.0, 0.4], dtype=torch.float64)
    hit = torch.tensor([False, True, True])
    assert ece(conf, hit, 1).item() == pytest.approx(abs(2 / 3 - 1.4 / 3), abs=1e-15)


def test_hand_case_adaptive_groups_and_ties():
    conf = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3])
    hit = torch.tensor([True, False, True, True, False])
    # sorted .1 .2 .3 | .4 .5, correct F T F | T T: (3 |1/3 - .2| + 2 |1 - .45|) / 5 = 0.3
    assert adaptive_ece(conf, hit, 2).item() == pytest.approx(0.3, abs=1e-7)
    # ties are cut by input position: [T, T] | [F, F] at confidence .5
    tied = torch.full((4,), 0.5)
    assert adaptive_ece(tied, torch.tensor([True, True, False, False]), 2).item() == 0.5
    assert adaptive_ece(tied, torch.tensor([True, False, True, False]), 2).item() == 0.0


def test_hand_case_classwise():
    probs = torch.tensor([[0.8, 0.2], [0.8, 0.2]], dtype=torch.float64)
    # class 0: p .8 twice, flags 1, 0 -> |.5 - .8|; class 1: p .2 twice, flags 0, 1 -> |.5 - .2|
    assert classwise_ece(probs, torch.tensor([0, 1]), 10).item() == pytest.approx(0.3, abs=1e-15)


# --- streaming ----------------------------------------------------------------------------------------

@FAST
@given(any_cases(), st.lists(st.integers(0, 200), max_size=6), st.integers(0, 6))
def test_streaming_over_random_splits_equals_one_pass(case, cuts, merge_at):
    conf, hit, n_bins = case
    c, k = t(conf, hit)
    bounds = sorted({0, len(conf), *(x % (len(conf) + 1) for x in cuts)})
    parts = [(c[a:b], k[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    first, second = BinnedCalibration(n_bins), BinnedCalibration(n_bins)
    for i, part in enumerate(parts):
        (first if i < merge_at else second).update(*part)
    first.merge(second)
    out = first.compute()
    assert out["ece"].item() == pytest.approx(ece(c, k, n_bins).item(), abs=1e-12)
    assert out["mce"].item() == pytest.approx(mce(c, k, n_bins).item(), abs=1e-12)
    one = reliability_bins(c, k, n_bins)
    assert torch.equal(out["bins"].count, one.count)
    torch.testing.assert_close(out["bins"].confidence, one.confidence, equal_nan=True, atol=1e-12, rtol=0)
    torch.testing.assert_close(out["bins"].accuracy, one.accuracy, equal_nan=True, atol=1e-12, rtol=0)


def test_streaming_errors():
    m = BinnedCalibration(10)
    with pytest.raises(AuditError, match="at least one update"):
        m.compute()
    with pytest.raises(AuditError, match="n_bins=10"):
        m.merge(BinnedCalibration(5))
    m.merge(BinnedCalibration(10))  # merging an empty accumulator adds nothing
    with pytest.raises(AuditError, match="at least one update"):
        m.compute()


# --- input errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "conf, hit, n_bins, match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([True, False]), 10, r"in \[0, 1\]"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([True, False]), 10, "NaN"),
        (torch.tensor([0.5, 0.6]), torch.tensor([1, 0]), 10, "bool"),
        (torch.tensor([0.5, 0.6]), torch.tensor([True]), 10, "shape"),
        (torch.tensor([[0.5, 0.6]]), torch.tensor([[True, False]]), 10, "1-D"),
        (torch.tensor([], dtype=torch.float32), torch.tensor([], dtype=torch.bool), 10, "at least one"),
        (torch.tensor([0.5]), torch.tensor([True]), 0, "n_bins"),
        (torch.tensor([0.5]), torch.tensor([True]), 2.0, "n_bins"),
    ],
)
def test_input_errors(conf, hit, n_bins, match):
    for metric in (ece, mce, adaptive_ece, reliability_bins):
        with pytest.raises(AuditError, match=match):
            metric(conf, hit, n_bins)


def test_classwise_input_errors():
    with pytest.raises(AuditError, match="labels in"):
        classwise_ece(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(AuditError, match=r"in \[0, 1\]"):
        classwise_ece(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


def test_docstring_examples():
    assert doctest.testmod(calibration, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), n_bins=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_calibration_errors_equals_the_separate_functions(n, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    conf, hit = torch.rand(n, generator=g), torch.rand(n, generator=g) < 0.5
    errors = calibration_errors(conf, hit, n_bins)
    assert torch.equal(errors["ece"], ece(conf, hit, n_bins))
    assert torch.equal(errors["mce"], mce(conf, hit, n_bins))
    assert torch.equal(errors["ece_adaptive"], adaptive_ece(conf, hit, n_bins))
    assert torch.equal(errors["bins"].count, reliability_bins(conf, hit, n_bins).count)
