"""Per-example confidence measures against scipy / numpy float64 references."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audit.errors import AuditError
from audit.stats import confidence
from audit.stats.confidence import brier, correct, entropy, margin, max_probability, nll

FAST = settings(max_examples=40, deadline=None)


@st.composite
def logits_and_labels(draw):
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, 8))
    z = draw(arrays(np.float64, (n, k), elements=st.floats(-30, 30)))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    return z, y


@st.composite
def probs_with_zeros(draw):
    """Softmax rows with some classes masked to exactly 0 (at least one class kept per row)."""
    z, y = draw(logits_and_labels())
    mask = draw(arrays(np.bool_, z.shape))
    mask[np.arange(len(z)), y] = False
    return scipy.special.softmax(np.where(mask, -np.inf, z), axis=1), y


@FAST
@given(probs_with_zeros())
def test_entropy_matches_scipy(case):
    p, _ = case
    got = entropy(torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(got, scipy.stats.entropy(p, axis=1), rtol=1e-10, atol=1e-12)


@FAST
@given(logits_and_labels())
def test_nll_matches_scipy_log_softmax(case):
    z, y = case
    expected = -scipy.special.log_softmax(z, axis=1)[np.arange(len(y)), y]
    got = nll(torch.from_numpy(z), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@FAST
@given(probs_with_zeros())
def test_brier_max_margin_correct_match_numpy(case):
    p, y = case
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    one_hot = np.eye(p.shape[1])[y]
    np.testing.assert_allclose(brier(pt, yt).numpy(), ((p - one_hot) ** 2).sum(1), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(max_probability(pt).numpy(), p.max(1))
    top = np.sort(p, axis=1)[:, ::-1]
    expected_margin = top[:, 0] - top[:, 1] if p.shape[1] > 1 else np.ones(len(p))
    np.testing.assert_allclose(margin(pt).numpy(), expected_margin, atol=1e-15)
    np.testing.assert_array_equal(correct(pt, yt).numpy(), p.argmax(1) == y)


def test_hand_cases():
    p = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 2, 0])
    torch.testing.assert_close(entropy(p), torch.tensor([0.0, np.log(3), np.log(2)], dtype=torch.float64))
    assert not torch.signbit(entropy(p)[0])  # 0 log 0 = 0 gives +0, not -0
    torch.testing.assert_close(brier(p, y), torch.tensor([0.0, 2 / 3, 1.5], dtype=torch.float64))
    torch.testing.assert_close(margin(p), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert correct(p, y).tolist() == [True, False, False]  # ties go to the lowest index
    # binary one-column Brier (p_1 - y)^2 is half the two-column score
    two = torch.tensor([[0.3, 0.7]])
    assert brier(two, torch.tensor([0])).item() == pytest.approx(2 * 0.7**2)
    assert margin(torch.ones(4, 1)).tolist() == [1.0] * 4


def test_extreme_logits_stay_finite():
    z = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]])
    assert nll(z, torch.tensor([0, 0])).tolist() == [0.0, 2000.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(dtype):
    p = torch.tensor([[0.25, 0.75]], dtype=dtype)
    assert entropy(p).dtype == torch.float32
    assert nll(p, torch.tensor([1])).dtype == torch.float32
    assert entropy(p).item() == pytest.approx(scipy.stats.entropy([0.25, 0.75]), rel=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: entropy(torch.ones(3)), r"shape \(N, K\)"),
        (lambda: entropy(torch.ones(2, 3, dtype=torch.long)), "floating"),
        (lambda: entropy([[0.5, 0.5]]), "torch.Tensor"),
        (lambda: nll(torch.zeros(2, 3), torch.tensor([0, 3])), r"labels in \[0, 3\)"),
        (lambda: nll(torch.zeros(2, 3), torch.tensor([0, -1])), r"labels in \[0, 3\)"),
        (lambda: brier(torch.zeros(2, 3), torch.tensor([0])), "labels of shape"),
        (lambda: correct(torch.zeros(2, 3), torch.tensor([0.0, 1.0])), "integer labels"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(AuditError, match=match):
        call()


def test_docstring_examples():
    assert doctest.testmod(confidence).failed == 0
