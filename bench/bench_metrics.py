"""Top-label ECE + MCE + adaptive ECE on 1M examples x 10 classes on CPU: audit.stats against netcal.

Run: ``python -m pytest bench/bench_metrics.py`` (add ``--benchmark-json=out.json`` to keep the numbers).
Both providers get the same precomputed top-1 confidences and correctness flags, so only the calibration
metrics are timed (one shared set-up, :func:`inputs`). ``N_BINS`` divides ``N`` so that netcal's quantile-edged equal-mass bins coincide with
our tensor_split groups (see ``audit.stats.adaptive_ece``), and the three values are asserted equal.
Both run single-threaded, as numpy does: torch's intra-op threads only add noise on a shared small CPU.
The netcal-over-ours ratio of medians is recorded as ``speedup_vs_netcal`` in ours' extra_info and checked
against the target of issue 2 (:data:`TARGET_SPEEDUP`: at least 20x netcal, a CPU speed target; see
``bench/conftest.py`` for ``--kd-targets``). It needs ``test_netcal`` in the same run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kd_targets import Target
from netcal.metrics import ECE, MCE

from audit.stats import calibration_errors, correct, max_probability

N, K, N_BINS, SEED = 1_000_000, 10, 10, 0
ROUNDS = {"ours": 20, "netcal": 3}
TARGET_SPEEDUP = 20.0
# the equal-mass (adaptive) ECE differs from netcal's in the 10th digit (about 7e-10 of 1e-3): float32
# confidences summed in another order; the equal-width ECE and MCE agree to 1e-15
VALUE_ATOL = 1e-9
_medians: dict[str, float] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs() -> dict[str, object]:
    gen = torch.Generator().manual_seed(SEED)
    probs = (2 * torch.randn(N, K, generator=gen)).softmax(-1)  # float32 (N, K)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # labels drawn from the model: near calibrated
    conf, hit = max_probability(probs), correct(probs, labels)
    return {"conf": conf, "hit": hit, "conf_np": conf.numpy(), "hit_np": hit.numpy().astype(np.int64)}


def ours(conf: torch.Tensor, hit: torch.Tensor) -> tuple[float, float, float]:
    errors = calibration_errors(conf, hit, N_BINS)  # one input check and one equal-width binning for ECE and MCE
    return errors["ece"].item(), errors["mce"].item(), errors["ece_adaptive"].item()


def netcal(conf: np.ndarray, hit: np.ndarray) -> tuple[float, float, float]:
    return (
        ECE(bins=N_BINS).measure(conf, hit),
        MCE(bins=N_BINS).measure(conf, hit),
        ECE(bins=N_BINS, equal_intervals=False).measure(conf, hit),
    )


def test_netcal(benchmark, inputs):
    values = benchmark.pedantic(netcal, (inputs["conf_np"], inputs["hit_np"]), rounds=ROUNDS["netcal"],
                                warmup_rounds=0)
    np.testing.assert_allclose(values, ours(inputs["conf"], inputs["hit"]), rtol=0, atol=VALUE_ATOL)
    if benchmark.stats:  # None under --benchmark-disable
        _medians["netcal"] = benchmark.stats.stats.median


def test_ours(benchmark, inputs, targets):
    values = benchmark.pedantic(ours, (inputs["conf"], inputs["hit"]), rounds=ROUNDS["ours"], warmup_rounds=2)
    np.testing.assert_allclose(values, netcal(inputs["conf_np"], inputs["hit_np"]), rtol=0, atol=VALUE_ATOL)
    benchmark.extra_info.update(n=N, k=K, n_bins=N_BINS)
    if "netcal" in _medians and benchmark.stats:
        speedup = _medians["netcal"] / benchmark.stats.stats.median
        benchmark.extra_info["speedup_vs_netcal"] = speedup
        targets(benchmark, Target("speed-up over netcal", speedup, TARGET_SPEEDUP, "x", at_most=False))
