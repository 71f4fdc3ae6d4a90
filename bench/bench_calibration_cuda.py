"""Issue 13's estimators on a GPU: every new estimator together on 1M examples x 10 classes under 50 ms
(an H100/H200 target), and ``fit_temperature`` on the same logits.

Run: ``python -m pytest bench/bench_calibration_cuda.py`` (skips without CUDA; ``bench/gpu.sh`` runs it).
Apart from ``bench/bench_calibration.py`` because that file's oracles (relplot, uncertainty-calibration,
scikit-learn) are not on the lent GPU machine; here the providers are the same estimators on the CPU,
whose values that file and ``tests/stats`` check against the oracles, and the GPU values must equal them.
"""

from __future__ import annotations

import pytest
import torch
from kd_targets import Target

from audit.stats import calibration_extras
from audit.stats.temperature import fit_temperature

N, K, N_BINS, SEED, ROUNDS = 1_000_000, 10, 15, 0, 20

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    logits = 2 * torch.randn(N, K, generator=gen)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
    return {"logits": logits, "labels": labels}


def _synchronized(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def test_all_new_estimators_cuda(benchmark, inputs, targets):
    probs, labels = inputs["logits"].softmax(-1), inputs["labels"]
    expected = {k: float(v) for k, v in calibration_extras(probs, labels, N_BINS).items()}
    probs_gpu, labels_gpu = probs.cuda(), labels.cuda()
    out = benchmark.pedantic(_synchronized(lambda: calibration_extras(probs_gpu, labels_gpu, N_BINS)),
                             rounds=ROUNDS, warmup_rounds=2)
    got = {k: float(v) for k, v in out.items()}
    assert got.keys() == expected.keys()
    for name, value in got.items():  # float32 sums in another order: agree to 1e-5
        assert value == pytest.approx(expected[name], abs=1e-5), name
    benchmark.extra_info.update(n=N, k=K, n_bins=N_BINS, **got)
    if benchmark.stats:
        targets(benchmark, Target("smECE + debiased + sweep + top-label + KS (1M, GPU)",
                                  benchmark.stats.stats.median * 1e3, 50.0, " ms", machine="h100/h200"))


def test_fit_temperature_cuda(benchmark, inputs, targets):
    logits = 3 * inputs["logits"]
    expected = fit_temperature(logits, inputs["labels"])
    logits_gpu, labels_gpu = logits.cuda(), inputs["labels"].cuda()
    value = benchmark.pedantic(fit_temperature, (logits_gpu, labels_gpu), rounds=ROUNDS, warmup_rounds=2)
    assert value == pytest.approx(expected, rel=1e-6)
    benchmark.extra_info.update(n=N, k=K, temperature=value, cpu=expected)
