"""Per-model numbers and their bootstrap CIs: each number equals its public metric function, and each CI
equals a bootstrap built by hand from the same seeded index stream as :func:`audit.stats.bootstrap_ci`."""

from __future__ import annotations

import doctest

import pytest
import torch

from audit.errors import AuditError
from audit.stats import (
    adaptive_ece,
    bootstrap_ci,
    brier,
    calibration_extras,
    ece,
    entropy,
    mce,
    model_ci,
    nll,
    smooth_ece,
)
from audit.stats.model_ci import METRICS, model_cis, model_metrics, paired_difference_cis


def logits_and_labels(n: int, k: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    return scale * (torch.nn.functional.one_hot(labels, k) + torch.randn(n, k, generator=g)), labels


def reference_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    probs = logits.softmax(-1)
    conf, pred = probs.max(-1)
    hit = pred == labels
    extras = calibration_extras(probs, labels, n_bins)
    return {
        "accuracy": hit.double().mean().item(), "nll": nll(logits, labels).double().mean().item(),
        "brier": brier(probs, labels).double().mean().item(), "entropy": entropy(probs).double().mean().item(),
        "ece": ece(conf, hit, n_bins).item(), "mce": mce(conf, hit, n_bins).item(),
        "ece_adaptive": adaptive_ece(conf, hit, n_bins).item(),
        **{key: extras[key].item() for key in ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks")},
    }


@pytest.mark.parametrize("n, k, n_bins", [(1, 3, 15), (50, 2, 5), (2000, 10, 15)])
def test_model_metrics_equal_the_public_functions(n, k, n_bins):
    logits, labels = logits_and_labels(n, k, seed=n)
    got = model_metrics(logits, labels, n_bins=n_bins)
    assert list(got) == list(METRICS)
    expected = reference_metrics(logits, labels, n_bins)
    for key in METRICS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_cis_use_the_bootstrap_ci_index_stream():
    logits, labels = logits_and_labels(400, 4, seed=1)
    probs = logits.softmax(-1)
    conf, pred = probs.max(-1)
    hit = pred == labels
    cis = model_cis(logits, labels, n_resamples=60, level=0.9, seed=3)
    assert cis["accuracy"] == pytest.approx(
        bootstrap_ci(lambda c: c.mean(-1), hit.double(), n_resamples=60, level=0.9, seed=3), abs=1e-12)
    assert cis["nll"] == pytest.approx(
        bootstrap_ci(lambda x: x.mean(-1), nll(logits, labels).double(), n_resamples=60, level=0.9, seed=3), abs=1e-9)

    def per_row(metric):
        return lambda c, h: torch.stack([metric(ci, hi) for ci, hi in zip(c, h)])

    assert cis["ece"] == pytest.approx(bootstrap_ci(per_row(ece), conf, hit, n_resamples=60, level=0.9, seed=3), abs=1e-12)
    assert cis["smece"] == pytest.approx(
        bootstrap_ci(per_row(smooth_ece), conf, hit, n_resamples=60, level=0.9, seed=3), abs=1e-12)


def test_cis_do_not_depend_on_the_chunking(monkeypatch):
    logits, labels = logits_and_labels(300, 3, seed=2)
    whole = model_cis(logits, labels, n_resamples=25, seed=4)
    monkeypatch.setattr(model_ci, "MAX_CHUNK_ELEMENTS", 700)  # two resamples per chunk
    assert model_cis(logits, labels, n_resamples=25, seed=4) == whole


def test_cis_bracket_the_estimate_and_shrink_with_n():
    small, large = logits_and_labels(200, 5, seed=5), logits_and_labels(5000, 5, seed=5)
    width = {}
    for name, (z, y) in (("small", small), ("large", large)):
        point, cis = model_metrics(z, y), model_cis(z, y, n_resamples=100)
        assert all(cis[key][0] <= cis[key][1] for key in METRICS)
        assert cis["accuracy"][0] <= point["accuracy"] <= cis["accuracy"][1]
        width[name] = cis["ece"][1] - cis["ece"][0]
    assert width["large"] < width["small"] / 2


def test_paired_differences_match_a_manual_paired_bootstrap():
    teacher, labels = logits_and_labels(300, 4, seed=6, scale=1.0)
    student = 4 * teacher  # over-confident: a worse ECE than its teacher
    out = paired_difference_cis(teacher, student, labels, n_resamples=40, level=0.8, seed=9)
    conf_t, pred = teacher.softmax(-1).max(-1)
    conf_s = student.softmax(-1).amax(-1)
    hit = pred == labels
    assert out["ece"]["difference"] == pytest.approx((ece(conf_t, hit) - ece(conf_s, hit)).item(), abs=1e-12)
    assert out["ece"]["difference"] < 0

    def diff(metric):
        return lambda a, b, h: torch.stack([metric(x, hh) - metric(y, hh) for x, y, hh in zip(a, b, h)])

    for key, metric in (("ece", ece), ("smece", smooth_ece)):
        expected = bootstrap_ci(diff(metric), conf_t, conf_s, hit, n_resamples=40, level=0.8, seed=9)
        assert out[key]["ci"] == pytest.approx(expected, abs=1e-12)


def test_paired_identical_models_differ_by_zero():
    z, y = logits_and_labels(100, 3, seed=7)
    out = paired_difference_cis(z, z, y, n_resamples=10)
    assert out == {"ece": {"difference": 0.0, "ci": [0.0, 0.0]}, "smece": {"difference": 0.0, "ci": [0.0, 0.0]}}


def test_input_errors():
    z, y = logits_and_labels(10, 3, seed=8)
    with pytest.raises(AuditError, match="n_resamples"):
        model_cis(z, y, n_resamples=0)
    with pytest.raises(AuditError, match="level"):
        model_cis(z, y, level=1.5)
    with pytest.raises(AuditError, match="labels of shape"):
        paired_difference_cis(z, z[:5], y)
    with pytest.raises(AuditError, match="labels in"):
        model_metrics(z, torch.full((10,), 3))


def test_docstring_examples():
    assert doctest.testmod(model_ci, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
