"""Issue 13's estimators on 1M examples x 10 classes on one CPU thread: smooth ECE against relplot 1.0.3 in
the same run, all the new estimators together, and temperature scaling.

Run: ``python -m pytest bench/bench_calibration.py`` (add ``--benchmark-json=out.json`` to keep the numbers).
One set-up (:func:`inputs`) serves every provider: logits ``2 * randn`` (float32), labels drawn from the
model's own softmax (near calibrated, so the smooth ECE is small and its bandwidth search visits several
grid sizes: the slow case for both providers). Values are asserted always (smooth ECE equal to relplot's
to 1e-6 in every round, debiased L2 to uncertainty-calibration's, T* to scikit-learn's temperature
calibrator). Timing is by :func:`fair.alternate` at one thread (numpy's BLAS pool too): ours and relplot
alternated round by round after the same warm-up, the speed-up taken per round. Targets (``targets``
fixture): smooth ECE at least :data:`SMECE_SPEEDUP` x relplot's speed (median of the per-round ratios; the
estimator is three passes at the scatter floor), every new estimator together < 1 s, ``fit_temperature``
< 1 s (medians).
"""

from __future__ import annotations

import numpy as np
import pytest
import relplot
import torch
from calibration import utils as uc
from fair import alternate
from kd_targets import Target
from sklearn.calibration import _TemperatureScaling

from audit.stats import calibration_extras, smooth_ece
from audit.stats.temperature import fit_temperature

N, K, N_BINS, SEED = 1_000_000, 10, 15, 0
SMECE_ROUNDS, ROUNDS, WARMUP = 5, 10, 1  # relplot takes seconds a round
SMECE_SPEEDUP = 15.0  # ours over relplot (issue 25; measured ratios in bench/RESULTS.md)


@pytest.fixture(scope="module")
def inputs() -> dict[str, object]:
    gen = torch.Generator().manual_seed(SEED)
    logits = 2 * torch.randn(N, K, generator=gen)  # float32 (N, K)
    probs = logits.softmax(-1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # drawn from the model: near calibrated
    conf, pred = probs.max(-1)
    hit = pred == labels
    return {"logits": logits, "probs": probs, "labels": labels, "conf": conf, "hit": hit,
            "conf_np": conf.double().numpy(), "hit_np": hit.double().numpy()}


def test_smece_against_relplot(benchmark, inputs, targets):
    def agree(results: dict) -> None:
        assert abs(results["ours"] - results["relplot"]) <= 1e-6, results

    measured = alternate(benchmark, {
        "ours": lambda: smooth_ece(inputs["conf"], inputs["hit"]).item(),
        "relplot": lambda: relplot.smECE(inputs["conf_np"], inputs["hit_np"])},
        rounds=SMECE_ROUNDS, warmup=WARMUP, check=agree, ratios={"relplot / ours": ("relplot", "ours")})
    benchmark.extra_info.update(n=N, k=K, smece=measured.results["ours"], relplot=measured.results["relplot"])
    targets(benchmark, Target(f"smECE speed-up over relplot 1.0.3 (1M, one thread, median of {SMECE_ROUNDS} "
                              "alternated rounds)", measured.ratios["relplot / ours"].median, SMECE_SPEEDUP, "x",
                              at_most=False))


def test_all_new_estimators(benchmark, inputs, targets):
    measured = alternate(benchmark, {"ours": lambda: {k: float(v) for k, v in calibration_extras(
        inputs["probs"], inputs["labels"], N_BINS).items()}}, rounds=ROUNDS, warmup=WARMUP)
    out = measured.results["ours"]
    assert out["smece"] == smooth_ece(inputs["conf"], inputs["hit"]).item()
    expected = uc.lower_bound_scaling_ce(inputs["conf_np"], inputs["hit_np"].astype(np.int64), p=2, debias=True,
                                         num_bins=N_BINS, binning_scheme=uc.get_equal_bins)
    assert abs(out["ece_debiased"] - expected) <= 1e-9
    benchmark.extra_info.update(n=N, k=K, n_bins=N_BINS, **out)
    targets(benchmark, Target("smECE + debiased + sweep + top-label + KS (1M, one thread)", measured.median("ours"),
                              1.0, "s"))


def test_fit_temperature(benchmark, inputs, targets):
    logits = 3 * inputs["logits"]  # over-confident: T* > 1
    measured = alternate(benchmark, {"ours": lambda: fit_temperature(logits, inputs["labels"])}, rounds=ROUNDS,
                         warmup=WARMUP)
    value = measured.results["ours"]
    expected = 1.0 / float(_TemperatureScaling().fit(logits.double().numpy(), inputs["labels"].numpy()).beta_)
    assert value == pytest.approx(expected, rel=1e-5)
    benchmark.extra_info.update(n=N, k=K, temperature=value, sklearn=expected)
    targets(benchmark, Target("fit_temperature (1M x 10, one thread)", measured.median("ours"), 1.0, "s"))
