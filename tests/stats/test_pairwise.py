"""KL divergence against scipy.special.rel_entr, and top-1 agreement."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audit.errors import AuditError
from audit.stats.pairwise import agreement, kl_divergence


@st.composite
def distribution_pairs(draw):
    """(p, q) float64 rows; p has exact zeros where q may too, q > 0 wherever p > 0."""
    n = draw(st.integers(1, 20))
    k = draw(st.integers(1, 8))
    zp = draw(arrays(np.float64, (n, k), elements=st.floats(-20, 20)))
    zq = draw(arrays(np.float64, (n, k), elements=st.floats(-20, 20)))
    drop = draw(arrays(np.bool_, (n, k)))
    drop[:, 0] = False
    p = scipy.special.softmax(np.where(drop, -np.inf, zp), axis=1)
    q_drop = drop & draw(arrays(np.bool_, (n, k)))
    q = scipy.special.softmax(np.where(q_drop, -np.inf, zq), axis=1)
    return p, q


@settings(max_examples=50, deadline=None)
@given(distribution_pairs())
def test_kl_matches_rel_entr(pair):
    p, q = pair
    with np.errstate(divide="ignore"):
        log_p, log_q = torch.from_numpy(np.log(p)), torch.from_numpy(np.log(q))
    expected = scipy.special.rel_entr(p, q).sum(1)
    np.testing.assert_allclose(kl_divergence(log_p, log_q).numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(agreement(torch.from_numpy(p), torch.from_numpy(q)).numpy(),
                                  p.argmax(1) == q.argmax(1))


def test_kl_zero_conventions():
    inf = float("inf")
    log_p = torch.tensor([[0.0, -inf], [np.log(0.5), np.log(0.5)], [0.0, -inf]])
    log_q = torch.tensor([[0.0, -inf], [0.0, -inf], [np.log(0.5), np.log(0.5)]])
    # p = 0 where q = 0: 0; p > 0 where q = 0: inf; one-hot p against uniform: log 2
    out = kl_divergence(log_p, log_q)
    assert out[0].item() == 0.0
    assert out[1].item() == inf
    assert out[2].item() == pytest.approx(np.log(2))


def test_kl_of_identical_is_zero_and_low_precision_upcasts():
    log_p = torch.log_softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)
    assert kl_divergence(log_p, log_p).abs().max().item() == 0.0
    assert kl_divergence(log_p.half(), log_p.bfloat16()).dtype == torch.float32


def test_agreement_on_logits_and_ties():
    s = torch.tensor([[2.0, 1.0], [0.0, 0.0], [-1.0, 3.0]])
    t = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    assert agreement(s, t).tolist() == [True, False, True]  # the tie [0, 0] picks class 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4)), r"shape \(2, 3\)"),
        (lambda: kl_divergence(torch.zeros(3), torch.zeros(3)), r"shape \(N, K\)"),
        (lambda: agreement(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "floating"),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(AuditError, match=match):
        call()


def test_docstring_examples():
    # the package re-exports the function agreement under the submodule's name: fetch the module itself
    assert doctest.testmod(importlib.import_module("audit.stats.pairwise")).failed == 0
