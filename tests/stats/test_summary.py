"""One per-model summary for every model kind: the token report's calibration family against oracles
(relplot's smECE, numpy references of KS and top-label ECE), the classifier's equal to it on the same columns,
and per-model CIs of tokens resampling whole sequences."""

from __future__ import annotations

import numpy as np
import pytest
import relplot
import torch

from audit.settings import CompareSettings
from audit.stats import column_cis
from audit.stats.summary import confidence_summary, summarize_model, summarize_tokens


def ref_ks(conf: np.ndarray, hit: np.ndarray) -> float:
    """Gupta et al. 2021: the largest |cumulative confidence - cumulative accuracy| / N over thresholds."""
    return max(abs(np.sum((conf - hit)[conf <= s])) for s in np.unique(conf)) / len(conf)


def ref_toplabel(conf: np.ndarray, hit: np.ndarray, predicted: np.ndarray, n_bins: int) -> float:
    """sum over predicted class c and equal-width bin b of |correct - confidence| / N, bins (i/n, (i+1)/n]."""
    total = 0.0
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    for c in np.unique(predicted):
        for b in range(n_bins):
            rows = (predicted == c) & (bins == b)
            total += abs(hit[rows].sum() - conf[rows].sum())
    return total / len(conf)


def token_columns(n_sequences: int = 30, length: int = 40, vocab: int = 50, seed: int = 0) -> dict:
    """Columns of a teacher and a student as the token reduction gives them (float32), over-confident student."""
    g = torch.Generator().manual_seed(seed)
    n = n_sequences * length
    columns = {"sequence": torch.arange(n_sequences).repeat_interleave(length)}
    for m in range(2):
        maxprob = torch.rand(n, generator=g) ** (0.5 if m else 1.0)
        top1 = torch.randint(0, vocab, (n,), generator=g)
        correct = torch.rand(n, generator=g) < torch.rand(n, generator=g)
        columns.update({f"{m}.entropy": 3 * torch.rand(n, generator=g), f"{m}.maxprob": maxprob,
                        f"{m}.top1": top1.float(), f"{m}.correct": correct.float(),
                        f"{m}.target_logprob": -torch.rand(n, generator=g) * 5})
    for key in ("kl", "kl_reverse", "topk_overlap"):
        columns[f"pair0.{key}"] = torch.rand(n, generator=g)
    return columns


def test_the_token_report_has_the_calibration_family_of_the_oracles():
    columns = token_columns()
    models, _, _ = summarize_tokens(columns, ["t", "s"], 50, settings=CompareSettings(n_bootstrap=50))
    for m, name in enumerate(("t", "s")):
        conf, hit = columns[f"{m}.maxprob"].double().numpy(), columns[f"{m}.correct"].double().numpy()
        predicted = columns[f"{m}.top1"].long().numpy()
        assert models[name]["smece"] == pytest.approx(relplot.smECE(conf, hit), abs=1e-6)
        assert models[name]["ks"] == pytest.approx(ref_ks(conf, hit), abs=1e-6)
        assert models[name]["ece_toplabel"] == pytest.approx(ref_toplabel(conf, hit, predicted, 15), abs=1e-6)
        assert {"ece_debiased", "ece_sweep", "mce", "ece_adaptive"} <= set(models[name])
        assert "smece" not in models[name]["ci"]  # recomputed per resample only with --model-cis


def test_a_classifier_and_its_columns_give_the_same_summary():
    g = torch.Generator().manual_seed(1)
    logits, labels = 2 * torch.randn(300, 4, generator=g), torch.randint(0, 4, (300,), generator=g)
    probs = torch.softmax(logits, -1)
    maxprob, predicted = probs.max(-1)
    from_columns = confidence_summary(-(probs * probs.log()).sum(-1), maxprob, 4, correct=predicted == labels,
                                      predicted=predicted, nll=torch.nn.functional.cross_entropy(
                                          logits, labels, reduction="none"))
    classifier = summarize_model(logits, labels)
    for key, value in from_columns.items():
        if isinstance(value, float):
            assert classifier[key] == pytest.approx(value, abs=1e-6), key
    assert {"brier", "margin_mean", "ece_classwise"} <= set(classifier) - set(from_columns)


def test_token_model_cis_resample_whole_sequences():
    """Correctness constant within each of 20 sequences: resampling sequences sees 20 draws, resampling tokens
    800, so the cluster interval of accuracy is several times wider (as wide as a bootstrap of the 20 sequence
    means, computed here with numpy)."""
    n_groups, length = 20, 40
    hit = torch.arange(n_groups) % 2 == 0
    columns = {"confidence": torch.full((n_groups * length,), 0.5), "correct": hit.repeat_interleave(length),
               "predicted": torch.zeros(n_groups * length, dtype=torch.long)}
    columns["accuracy"] = columns["correct"]
    groups = torch.arange(n_groups).repeat_interleave(length)
    cluster = column_cis(columns, 10, names=("accuracy",), groups=groups, n_resamples=2000)["accuracy"]
    rows = column_cis(columns, 10, names=("accuracy",), n_resamples=2000)["accuracy"]
    rng = np.random.default_rng(0)
    means = hit.double().numpy()[rng.integers(0, n_groups, (2000, n_groups))].mean(1)
    reference = np.quantile(means, [0.025, 0.975])
    assert cluster[1] - cluster[0] > 3 * (rows[1] - rows[0])
    assert cluster[1] - cluster[0] == pytest.approx(reference[1] - reference[0], rel=0.25)


def test_with_model_cis_the_token_report_has_calibration_cis():
    columns = token_columns(n_sequences=12, length=20)
    settings = CompareSettings(n_bootstrap=40, model_cis=True)
    models, _, _ = summarize_tokens(columns, ["t", "s"], 50, settings=settings)
    for key in ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks", "mce", "ece_adaptive"):
        low, high = models["s"]["ci"][key]
        assert low <= high and high > 0
