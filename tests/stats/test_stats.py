"""Correlations against scipy.stats, and the percentile bootstrap's determinism, coverage and scaling."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audit.errors import AuditError
from audit.stats import stats
from audit.stats.confidence import entropy
from audit.stats.stats import bootstrap_ci, pearson, spearman

FAST = settings(max_examples=50, deadline=None)


@st.composite
def paired_batches(draw):
    """(B, N) float64 pairs, often with ties (small integer grids), never constant rows."""
    b = draw(st.integers(1, 4))
    n = draw(st.integers(3, 40))
    grid = draw(st.booleans())
    elements = st.integers(-3, 3).map(float) if grid else st.floats(-1e3, 1e3)
    x = draw(arrays(np.float64, (b, n), elements=elements))
    y = draw(arrays(np.float64, (b, n), elements=elements))
    x[:, :2], y[:, :2] = [[0.0, 1.0]], [[1.0, 0.0]]  # no constant row
    return x, y


@FAST
@given(paired_batches())
def test_correlations_match_scipy_batched_and_single(pair):
    x, y = pair
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    expected_p = [scipy.stats.pearsonr(a, b).statistic for a, b in zip(x, y, strict=True)]
    expected_s = [scipy.stats.spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(pearson(tx, ty).numpy(), expected_p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spearman(tx, ty).numpy(), expected_s, rtol=1e-9, atol=1e-12)
    assert pearson(tx[0], ty[0]).shape == ()
    assert spearman(tx[0], ty[0]).item() == pytest.approx(expected_s[0], abs=1e-12)


def test_hand_cases():
    x = torch.tensor([1.0, 2.0, 2.0, 5.0])
    # average ranks 1, 2.5, 2.5, 4
    assert stats._average_ranks(x).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman(x, x**3).item() == pytest.approx(1.0)
    assert pearson(x, -2 * x + 1).item() == pytest.approx(-1.0)
    assert torch.isnan(pearson(torch.ones(5), torch.arange(5.0)))
    assert torch.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_float32_large_offset_is_accurate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen, dtype=torch.float64)
    y = x + torch.randn(100_000, generator=gen, dtype=torch.float64)
    expected = scipy.stats.pearsonr(x.numpy(), y.numpy()).statistic
    # a large common offset ruins the one-pass formula in float32; the centred form keeps ~1e-5
    assert pearson((x + 1e3).float(), (y + 1e3).float()).item() == pytest.approx(expected, abs=1e-4)


def _correlated(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, x + torch.randn(n, generator=gen, dtype=torch.float64)


def test_bootstrap_is_deterministic_for_a_seed():
    x, y = _correlated(500, 0)
    first = bootstrap_ci(spearman, x, y, n_resamples=300, seed=7)
    assert bootstrap_ci(spearman, x, y, n_resamples=300, seed=7) == first
    assert bootstrap_ci(spearman, x, y, n_resamples=300, seed=8) != first


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    x, y = _correlated(400, 1)
    whole = bootstrap_ci(pearson, x, y, n_resamples=100)
    monkeypatch.setattr(stats, "MAX_CHUNK_ELEMENTS", 3 * 400 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(pearson, x, y, n_resamples=100) == whole


@pytest.mark.parametrize("statistic", [pearson, spearman])
def test_bootstrap_contains_point_estimate_and_shrinks_with_n(statistic):
    widths = []
    for n in (200, 20_000):
        x, y = _correlated(n, 2)
        low, high = bootstrap_ci(statistic, x, y, n_resamples=200)
        assert low < statistic(x, y).item() < high
        widths.append(high - low)
    # the width scales like 1 / sqrt(N): 100x the data, about a tenth of the width
    assert 0.05 < widths[1] / widths[0] < 0.2


def test_bootstrap_matches_scipy_percentile_interval():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, generator=gen, dtype=torch.float64)
    low, high = bootstrap_ci(lambda b: b.mean(-1), x, n_resamples=4000, level=0.9)
    ref = scipy.stats.bootstrap((x.numpy(),), np.mean, n_resamples=4000, confidence_level=0.9,
                                method="percentile", random_state=0).confidence_interval
    # two Monte Carlo estimates of the same quantiles, each within ~0.1 standard errors of the truth
    se = x.std().item() / 20
    assert low == pytest.approx(ref.low, abs=0.5 * se)
    assert high == pytest.approx(ref.high, abs=0.5 * se)


def test_bootstrap_resamples_rows_of_2d_samples_jointly():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    flags = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def gap(p, f):  # p: (B, N, K), f: (B, N); 0 for every resample iff rows stay paired with flags
        return (entropy(p.reshape(-1, 2)).view(f.shape) - f * np.log(2)).abs().sum(-1)

    assert bootstrap_ci(gap, probs, flags, n_resamples=50) == (0.0, 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bootstrap_ci(pearson), "at least one sample"),
        (lambda: bootstrap_ci(pearson, torch.zeros(3), torch.zeros(4)), r"shape \(3,\)"),
        (lambda: bootstrap_ci(pearson, torch.zeros(3, 2, 2)), r"shape \(3,\)"),
        (lambda: bootstrap_ci(lambda b: b.mean(-1), torch.zeros(3), n_resamples=0), "n_resamples"),
        (lambda: bootstrap_ci(lambda b: b.mean(-1), torch.zeros(3), level=1.0), "level"),
        (lambda: bootstrap_ci(lambda b: b.mean(), torch.zeros(3)), "statistic to return shape"),
        (lambda: pearson(torch.zeros(3), torch.zeros(4)), "one shape"),
        (lambda: spearman(torch.zeros(1), torch.zeros(1)), "at least 2"),
        (lambda: pearson(torch.zeros(3, dtype=torch.long), torch.zeros(3)), "floating"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(AuditError, match=match):
        call()


def test_docstring_examples():
    assert doctest.testmod(stats).failed == 0


@FAST
@given(st.integers(1, 6), st.integers(2, 60), st.booleans(), st.sampled_from([torch.float32, torch.float64]),
       st.integers(0, 2**31 - 1))
def test_counted_resample_ranks_equal_sorted_ranks(b, n, grid, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if grid:  # heavy ties, signed zeros and infinities (equal as the sort compares them)
        pool = torch.tensor([-float("inf"), -1.5, -0.0, 0.0, 2.0, float("inf")], dtype=dtype)
        x = pool[torch.randint(0, len(pool), (n,), generator=gen)]
    else:
        x = torch.randn(n, generator=gen, dtype=dtype)
    index = torch.randint(0, n, (b, n), generator=gen)
    codes, n_codes = stats._rank_codes(x)
    ranks = stats._resampled_ranks(codes, n_codes, index, dtype)
    assert ranks.dtype == dtype and torch.equal(ranks, stats._average_ranks(x[index]))


def _sorted_spearman(x, y):  # not `spearman` itself: bootstrap_ci sorts each resample, as before counted ranks
    return spearman(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_chunk", [None, 3 * 300 * 7])
def test_bootstrap_spearman_by_counting_equals_sorting(monkeypatch, dtype, max_chunk):
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 12, (300,), generator=gen).to(dtype)  # ties
    y = (x + torch.randint(0, 6, (300,), generator=gen)).to(dtype)
    if max_chunk is not None:
        monkeypatch.setattr(stats, "MAX_CHUNK_ELEMENTS", max_chunk)
    expected = bootstrap_ci(_sorted_spearman, x, y, n_resamples=150, seed=3)
    assert bootstrap_ci(spearman, x, y, n_resamples=150, seed=3) == expected


def test_bootstrap_spearman_with_nan_sorts_as_before():
    x, y = _correlated(50, 5)
    x[3] = float("nan")  # NaN != NaN: copies of one NaN example get distinct ranks, which counting cannot give
    assert stats._rank_codes(x) is None
    expected = bootstrap_ci(_sorted_spearman, x, y, n_resamples=40)
    assert bootstrap_ci(spearman, x, y, n_resamples=40) == expected


@pytest.mark.parametrize("max_chunk", [None, 2 * 200 * 3 + 1])
def test_bootstrap_cis_equal_one_bootstrap_ci_each(monkeypatch, max_chunk):
    x, y = _correlated(200, 6)
    z = torch.stack([x, y], 1)
    if max_chunk is not None:  # chunks of 3 resamples for the means, 2 for the pairs and the (N, 2) sample
        monkeypatch.setattr(stats, "MAX_CHUNK_ELEMENTS", max_chunk)
    requests = {"mean": (lambda b: b.mean(-1), (x,)), "pearson": (pearson, (x, y)), "spearman": (spearman, (x, y)),
                "rows": (lambda b: b.sum(-1).mean(-1), (z,)), "other n": (lambda b: b.mean(-1), (x[:50],))}
    cis = stats.bootstrap_cis(requests, n_resamples=90, level=0.8, seed=4)
    assert list(cis) == list(requests)
    for key, (fn, samples) in requests.items():
        assert cis[key] == bootstrap_ci(fn, *samples, n_resamples=90, level=0.8, seed=4), key


@pytest.mark.parametrize(
    "requests, match",
    [
        ({"a": (pearson, ())}, "at least one sample"),
        ({"a": (pearson, (torch.zeros(3), torch.zeros(3))), "b": (pearson, (torch.zeros(3), torch.zeros(4)))},
         r"shape \(3,\)"),
        ({"a": (spearman, (torch.zeros(3, dtype=torch.long), torch.zeros(3)))}, "floating"),
        ({"a": (lambda b: b.mean(), (torch.zeros(3),))}, "statistic to return shape"),
    ],
)
def test_bootstrap_cis_input_errors(requests, match):
    with pytest.raises(AuditError, match=match):
        stats.bootstrap_cis(requests, n_resamples=10)
