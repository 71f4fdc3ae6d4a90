"""Pair statistics and the verdict rule."""

import pytest
import torch

from audit.stats.inheritance import (
    PAIR_STATISTICS,
    VerdictRule,
    inheritance_verdict,
    pair_statistics,
    student_differences,
)


def _logits(n=400, k=3, seed=0):
    return 3 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_identical_models():
    z = _logits()
    stats = pair_statistics(z, z.clone(), n_bootstrap=200)
    assert set(stats) == set(PAIR_STATISTICS)
    assert stats["agreement"]["value"] == 1.0
    assert stats["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert stats["entropy_shift"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert stats["corr_entropy_spearman"]["value"] == pytest.approx(1.0)
    label, reason = inheritance_verdict(stats, teacher_entropy_mean=0.5)
    assert label == "inherits" and "Spearman" in reason


def test_student_that_ignores_the_teacher_moves_away():
    stats = pair_statistics(_logits(seed=0), _logits(seed=1), n_bootstrap=200)
    assert abs(stats["corr_entropy_spearman"]["value"]) < 0.2
    assert inheritance_verdict(stats, teacher_entropy_mean=0.5)[0] == "moves_away"


def test_uniformly_sharper_student_moves_away_overall():
    z = _logits()
    stats = pair_statistics(z, 4 * z, n_bootstrap=200)  # same ranking of confidence, much more confident
    assert stats["corr_entropy_spearman"]["value"] > 0.9
    assert stats["entropy_shift"]["ci"][1] < 0
    label, reason = inheritance_verdict(stats, teacher_entropy_mean=float(torch.distributions.Categorical(logits=z).entropy().mean()))
    assert label == "moves_away" and "more confident" in reason


def test_inconclusive_when_ci_crosses_threshold():
    stats = {"corr_entropy_spearman": {"value": 0.55, "ci": [0.45, 0.65]},
             "entropy_shift": {"value": 0.0, "ci": [-0.01, 0.01]}}
    assert inheritance_verdict(stats, 0.5, VerdictRule(min_correlation=0.5))[0] == "inconclusive"


def test_student_differences_are_paired_and_signed():
    z = _logits()
    diffs = student_differences({"sharp": 4 * z, "flat": z / 4}, n_bootstrap=100)
    assert [(d["a"], d["b"]) for d in diffs] == [("sharp", "flat")]
    assert diffs[0]["entropy_difference"]["ci"][0] > 0  # flat minus sharp: higher entropy
