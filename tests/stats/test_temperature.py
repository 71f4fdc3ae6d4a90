"""Temperature scaling against scikit-learn's ``CalibratedClassifierCV(method="temperature")`` (1.8+), a
float64 brute-force grid and a closed-form case; the calibrated report and the teacher/student ratio."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import _TemperatureScaling

from audit.errors import AuditError
from audit.stats import model_metrics
from audit.stats import temperature as calibrate
from audit.stats.temperature import (
    T_MAX,
    T_MIN,
    TemperatureError,
    calibrated_metrics,
    fit_temperature,
    temperature_ratio,
)

FAST = settings(max_examples=15, deadline=None)


def sklearn_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """1 / beta_ of the calibrator that ``CalibratedClassifierCV(method="temperature")`` fits (scikit-learn
    1.8+): scipy's bounded Brent search of the mean multinomial log loss over log beta in [-10, 10]."""
    return 1.0 / float(_TemperatureScaling().fit(logits.double().numpy(), labels.numpy()).beta_)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    z = logits.double() / temperature
    return float(torch.nn.functional.cross_entropy(z, labels))


def grid_temperature(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float | None, float]:
    """(argmin, spacing in log T) of the float64 NLL over 1001 temperatures log-spaced in [0.05, 20];
    argmin None when it is an end of the grid (the minimum may lie outside)."""
    log_t = torch.linspace(math.log(0.05), math.log(20.0), 1001, dtype=torch.float64)
    z = logits.double()
    nll = torch.stack([torch.nn.functional.cross_entropy(z / math.exp(u), labels) for u in log_t.tolist()])
    best = int(nll.argmin())
    return (None if best in (0, len(log_t) - 1) else math.exp(float(log_t[best]))), float(log_t[1] - log_t[0])


@st.composite
def split(draw, max_n: int = 400):
    """(logits, labels) of an imperfect classifier: over- or under-confident, 2-10 classes."""
    n, k = draw(st.integers(20, max_n)), draw(st.integers(2, 10))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    labels = torch.randint(0, k, (n,), generator=g)
    signal = torch.nn.functional.one_hot(labels, k) * draw(st.sampled_from([1.0, 2.0, 4.0]))
    logits = (signal + torch.randn(n, k, generator=g)) * draw(st.sampled_from([0.3, 1.0, 5.0]))
    labels[0], labels[1] = 0, 1  # both classes present, and not every example right
    logits[0] = logits[0] - 20 * torch.nn.functional.one_hot(torch.tensor(0), k)
    return logits, labels


@FAST
@given(split())
def test_matches_sklearn_temperature(case):
    logits, labels = case
    expected = sklearn_temperature(logits, labels)  # searched over T in [e^-10, e^10]
    if T_MIN < expected < T_MAX and not T_MIN * 1.01 < expected < T_MAX / 1.01:
        # within 1% of a bound the fit may call the logits degenerate (its guard band); if it fits, it agrees
        try:
            assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-5)
        except TemperatureError:
            pass
    elif T_MIN < expected < T_MAX:
        # scipy's Brent search on the loss value stops within ~1e-7 relative on flat losses; ours solves
        # dL/dlogT = 0 and is never worse
        got = fit_temperature(logits, labels)
        assert got == pytest.approx(expected, rel=1e-5)
        assert mean_nll(logits, labels, got) <= mean_nll(logits, labels, expected) + 1e-13
    else:
        with pytest.raises(TemperatureError, match="degenerate"):
            fit_temperature(logits, labels)


@settings(max_examples=10, deadline=None)
@given(split(max_n=150))
def test_matches_brute_force_grid(case):
    logits, labels = case
    expected, spacing = grid_temperature(logits, labels)
    if expected is None:  # at the grid's own edge: the grid says nothing
        return
    got = fit_temperature(logits, labels)
    assert abs(math.log(got) - math.log(expected)) <= spacing
    assert mean_nll(logits, labels, got) <= mean_nll(logits, labels, expected) + 1e-12


def test_closed_form_case():
    # three right at margin 4, one wrong at margin 4: dL/dbeta = 0 at sigmoid(4 beta) = 3/4, T = 4 / log 3
    z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    assert fit_temperature(z, torch.tensor([0, 0, 1, 1])) == pytest.approx(4 / math.log(3), rel=1e-10)


def test_saturated_float32_logits_are_fitted_from_the_logits():
    # margins of 40: softmax in float32 is exactly 1.0 for the right examples (a clipped-probability fit
    # sees no signal there); the fit on the logits still finds the float64 optimum
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=g)
    logits = torch.nn.functional.one_hot(labels, 10).float() * 40 + torch.randn(2000, 10, generator=g)
    wrong = torch.arange(2000) % 50 == 0
    logits[wrong] = logits[wrong].roll(1, dims=1)  # 2% confidently wrong
    assert bool((torch.softmax(logits, -1).amax(-1)[~wrong] == 1.0).all())
    expected, spacing = grid_temperature(logits, labels)
    assert abs(math.log(fit_temperature(logits, labels)) - math.log(expected)) <= spacing


def test_degenerate_logits_raise_at_the_bound():
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    with pytest.raises(TemperatureError, match="degenerate") as error:
        fit_temperature(z, torch.tensor([0, 1, 0]))  # every example right: NLL falls as T -> 0
    assert error.value.bound == T_MIN
    with pytest.raises(TemperatureError, match="degenerate") as error:
        fit_temperature(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))  # constant rows: NLL flat
    assert error.value.bound == T_MIN
    with pytest.raises(TemperatureError, match="degenerate") as error:
        fit_temperature(z, torch.tensor([1, 0, 1]))  # every example wrong: NLL falls as T grows
    assert error.value.bound == T_MAX
    assert issubclass(TemperatureError, AuditError)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), "finite"),
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), "finite"),
        (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), "2 classes"),
        (torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]), "2 classes"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "at least one"),
        (torch.tensor([[1.0, 0.0]]), torch.tensor([2]), "labels in"),
        (torch.tensor([1.0, 0.0]), torch.tensor([0]), "shape"),
    ],
)
def test_input_errors(logits, labels, match):
    with pytest.raises(AuditError, match=match):
        fit_temperature(logits, labels)


# --- the calibrated report -----------------------------------------------------------------------------

def test_calibrated_metrics_scale_the_test_split_by_the_fitted_temperature():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (3000,), generator=g)
    logits = 3 * (torch.nn.functional.one_hot(labels, 5) + torch.randn(3000, 5, generator=g))  # over-confident
    cal, test = slice(0, 1000), slice(1000, None)
    out = calibrated_metrics(logits[cal], labels[cal], logits[test], labels[test])
    assert out["temperature"] == fit_temperature(logits[cal], labels[cal])
    assert out["temperature"] > 1
    expected = model_metrics(logits[test].double() / out["temperature"], labels[test])
    assert out["calibrated"] == expected
    before = model_metrics(logits[test], labels[test])
    assert out["calibrated"]["accuracy"] == before["accuracy"]
    assert out["calibrated"]["nll"] < before["nll"] and out["calibrated"]["ece"] < before["ece"]


def test_calibrated_metrics_refuse_other_classes_and_check_accuracy(monkeypatch):
    z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(AuditError, match="2 classes like the test"):
        calibrated_metrics(torch.zeros(4, 3), y, z, y)
    monkeypatch.setattr(calibrate, "scale_logits", lambda logits, t: -logits.double())
    with pytest.raises(RuntimeError, match="changed the number correct"):
        calibrated_metrics(z, y, z, y)


# --- teacher/student ratio -------------------------------------------------------------------------------

def test_ratio_of_a_scaled_student_is_exact():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (500,), generator=g)
    teacher = torch.nn.functional.one_hot(labels, 4) * 2 + torch.randn(500, 4, generator=g, dtype=torch.float64)
    out = temperature_ratio(teacher, 3 * teacher, labels, n_resamples=30)  # float64: 3 z is exact to 1e-16
    assert out["ratio"] == pytest.approx(3.0, rel=1e-9)
    assert out["ci"] == pytest.approx([3.0, 3.0], rel=1e-9)
    assert out["teacher"] == fit_temperature(teacher, labels) and out["degenerate_resamples"] == 0


def test_ratio_ci_refits_on_each_resample():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (300,), generator=g)
    teacher = torch.nn.functional.one_hot(labels, 3) * 2 + torch.randn(300, 3, generator=g)
    student = 4 * torch.nn.functional.one_hot(labels, 3) + 3 * torch.randn(300, 3, generator=g)
    out = temperature_ratio(teacher, student, labels, n_resamples=40, level=0.8, seed=5)
    draw = torch.Generator().manual_seed(5)
    ratios = []
    for _ in range(40):  # materialised resamples, refitted with the public function
        index = torch.randint(0, 300, (300,), generator=draw)
        ratios.append(fit_temperature(student[index], labels[index]) / fit_temperature(teacher[index], labels[index]))
    expected = torch.quantile(torch.tensor(ratios, dtype=torch.float64), torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert out["ci"] == pytest.approx(expected.tolist(), rel=1e-8)
    assert out["ci"][0] < out["ratio"] < out["ci"][1]


def test_ratio_counts_degenerate_resamples():
    # 6 examples, one of them wrong: resamples without it are all right and hit the lower bound
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    out = temperature_ratio(z, z, y, n_resamples=50)
    assert 0 < out["degenerate_resamples"] < 100
    assert out["ci"] == pytest.approx([1.0, 1.0])


def test_ratio_input_errors():
    z, y = torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    with pytest.raises(AuditError, match="same examples"):
        temperature_ratio(z, z[:1], y)
    with pytest.raises(AuditError, match="n_resamples"):
        temperature_ratio(z, z, torch.tensor([0, 1]), n_resamples=0)


def test_docstring_examples():
    assert doctest.testmod(calibrate, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_one_step_cluster_temperatures_follow_the_full_refits():
    """Each resample's T* (a second-order step from the fit, or a refit when the step is far) against a full refit
    on the same draws (whole groups, their positions weighted by how often the group was drawn): equal to 1e-4
    relative, while the resamples spread T* by far more than that."""
    from audit.stats.cluster import resample_counts
    from audit.stats.temperature import _fit_log_temperature, one_step_temperatures

    g = torch.Generator().manual_seed(3)
    n_groups, length, k = 100, 16, 30
    groups = torch.arange(n_groups).repeat_interleave(length)
    labels = torch.randint(0, k, (n_groups * length,), generator=g)
    logits = [torch.randn(n_groups * length, k, generator=g) + scale * torch.nn.functional.one_hot(labels, k)
              for scale in (2.0, 4.0)]
    fitted = [fit_temperature(z, labels) for z in logits]
    fast = one_step_temperatures(logits, labels, groups, fitted, n_resamples=40, seed=5)
    counts = next(resample_counts(n_groups, 40, 5, torch.device("cpu")))
    for b in range(40):
        weights = counts[b][groups]
        for m, z in enumerate(logits):
            assert float(fast[b, m]) == pytest.approx(math.exp(_fit_log_temperature(z, labels, weights)), rel=1e-4)
    assert float(fast[:, 1].max() - fast[:, 1].min()) > 0.05 * fitted[1]  # the resamples do move T*


def test_a_ratio_by_groups_is_the_ratio_of_the_fits_inside_its_interval():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 5, (600,), generator=g)
    teacher = torch.randn(600, 5, generator=g) + 3 * torch.nn.functional.one_hot(labels, 5)
    out = temperature_ratio(teacher, 2 * teacher, labels, groups=torch.arange(600) // 20, n_resamples=100)
    assert out["ratio"] == pytest.approx(2.0, rel=1e-6)  # doubled logits need twice the temperature
    assert out["ci"][0] <= out["ratio"] <= out["ci"][1] and out["ci"][1] - out["ci"][0] < 1e-6
