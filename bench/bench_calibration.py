"""Issue 13's estimators on 1M examples x 10 classes on one CPU thread: smooth ECE against relplot 1.0.3 in
the same run, all the new estimators together, and temperature scaling.

Run: ``python -m pytest bench/bench_calibration.py`` (add ``--benchmark-json=out.json`` to keep the numbers).
One set-up (:func:`inputs`) serves every provider: logits ``2 * randn`` (float32), labels drawn from the
model's own softmax (near calibrated, so the smooth ECE is small and its bandwidth search visits several
grid sizes: the slow case for both providers). Values are asserted always (smooth ECE equal to relplot's
to 1e-6, debiased L2 to uncertainty-calibration's, T* to scikit-learn's temperature calibrator); the
targets of issue 13 go through the ``targets`` fixture: smooth ECE >= 20x relplot's speed, every new
estimator together < 1 s, ``fit_temperature`` < 1 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import relplot
import torch
from calibration import utils as uc
from kd_targets import Target
from sklearn.calibration import _TemperatureScaling

from audit.stats import calibration_extras, smooth_ece
from audit.stats.temperature import fit_temperature

N, K, N_BINS, SEED = 1_000_000, 10, 15, 0
ROUNDS = {"ours": 10, "relplot": 2}
_medians: dict[str, float] = {}
_values: dict[str, float] = {}

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_smece_relplot(benchmark, inputs):
    value = benchmark.pedantic(relplot.smECE, (inputs["conf_np"], inputs["hit_np"]), rounds=ROUNDS["relplot"],
                               warmup_rounds=0)
    _values["relplot"] = value
    if benchmark.stats:  # None under --benchmark-disable
        _medians["relplot"] = benchmark.stats.stats.median


def test_smece_ours(benchmark, inputs, targets):
    value = benchmark.pedantic(lambda: smooth_ece(inputs["conf"], inputs["hit"]).item(), rounds=ROUNDS["ours"],
                               warmup_rounds=1)
    expected = _values.get("relplot", relplot.smECE(inputs["conf_np"], inputs["hit_np"]))
    assert abs(value - expected) <= 1e-6
    benchmark.extra_info.update(n=N, k=K, smece=value, relplot=expected)
    if "relplot" in _medians and benchmark.stats:
        speedup = _medians["relplot"] / benchmark.stats.stats.median
        benchmark.extra_info["speedup_vs_relplot"] = speedup
        targets(benchmark, Target("smECE speed-up over relplot 1.0.3 (1M, one thread)", speedup, 20.0, "x",
                                  at_most=False))


def test_all_new_estimators(benchmark, inputs, targets):
    out = benchmark.pedantic(lambda: {k: float(v) for k, v in calibration_extras(inputs["probs"], inputs["labels"],
                                                                                  N_BINS).items()},
                             rounds=ROUNDS["ours"], warmup_rounds=1)
    assert out["smece"] == smooth_ece(inputs["conf"], inputs["hit"]).item()
    expected = uc.lower_bound_scaling_ce(inputs["conf_np"], inputs["hit_np"].astype(np.int64), p=2, debias=True,
                                         num_bins=N_BINS, binning_scheme=uc.get_equal_bins)
    assert abs(out["ece_debiased"] - expected) <= 1e-9
    benchmark.extra_info.update(n=N, k=K, n_bins=N_BINS, **out)
    if benchmark.stats:
        targets(benchmark, Target("smECE + debiased + sweep + top-label + KS (1M, one thread)",
                                  benchmark.stats.stats.median, 1.0, "s"))


def test_fit_temperature(benchmark, inputs, targets):
    logits = 3 * inputs["logits"]  # over-confident: T* > 1
    value = benchmark.pedantic(fit_temperature, (logits, inputs["labels"]), rounds=ROUNDS["ours"], warmup_rounds=1)
    expected = 1.0 / float(_TemperatureScaling().fit(logits.double().numpy(), inputs["labels"].numpy()).beta_)
    assert value == pytest.approx(expected, rel=1e-5)
    benchmark.extra_info.update(n=N, k=K, temperature=value, sklearn=expected)
    if benchmark.stats:
        targets(benchmark, Target("fit_temperature (1M x 10, one thread)", benchmark.stats.stats.median, 1.0, "s"))
