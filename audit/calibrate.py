"""Post-hoc temperature scaling (Guo et al. 2017): fit one T > 0 on held-out logits, report a model after
it, and compare the temperatures a teacher and its student need.

``fit_temperature`` minimises the mean NLL ``L(T) = mean_i [logsumexp(z_i / T) - z_{i,y_i} / T]`` over
``u = log T`` in float64, from the logits themselves (never through probabilities, which saturate at 1.0
in float32 for the over-confident models this is for). With ``beta = 1 / T``, L is convex in beta, so
``dL/du = -beta L'(beta)`` changes sign once: the search checks the sign at both ends of
``[log T_MIN, log T_MAX]`` (a minimum at an end means the logits are degenerate: constant rows, or a
calibration split the model gets entirely right, where NLL falls as T -> 0) and then runs Newton steps on
``dL/du`` inside the shrinking bracket, bisecting whenever a step would leave it. Each step is one
chunked pass over the logits computing L', L'' (the mean variance of z under softmax(beta z)).
"""

from __future__ import annotations

import math

import torch

from audit.errors import AuditError
from audit.metrics.confidence import _check_labels, _check_rows

T_MIN, T_MAX = 1e-2, 1e2
# Newton stops when a step in log T is below this (T then has about 12 correct digits)
_TOLERANCE = 1e-12
_MAX_STEPS = 100
# logits elements per chunk of the derivative pass: the float64 temporaries stay in cache
_CHUNK_ELEMENTS = 1 << 16


class TemperatureError(AuditError):
    """Temperature scaling is undefined for these logits: the fitted T would sit at ``bound`` (T_MIN or T_MAX)."""

    def __init__(self, message: str, bound: float) -> None:
        super().__init__(message)
        self.bound = bound


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    _check_rows(logits, "logits")
    _check_labels(labels, logits)
    if logits.shape[0] == 0:
        raise AuditError("expected at least one example, got 0; pass the calibration split's logits")
    # host syncs: a NaN would silently poison every sum, and one class makes T meaningless
    if not bool(torch.isfinite(logits).all()):
        raise AuditError("expected finite logits, got NaN or inf; check the model's outputs")
    if labels.unique().numel() < 2:
        raise AuditError("expected at least 2 classes present in the labels, got 1; use a calibration split "
                         "with several classes")


def _derivatives(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                 beta: float) -> tuple[float, float]:
    """(L'(beta), L''(beta)) of the (weighted) mean NLL, accumulated in float64 over row chunks."""
    first = torch.zeros((), dtype=torch.float64, device=logits.device)
    second = torch.zeros_like(first)
    step = max(1, _CHUNK_ELEMENTS // logits.shape[1])
    for start in range(0, logits.shape[0], step):
        z = logits[start:start + step].to(torch.float64)  # (rows, K)
        p = torch.softmax(z * beta, -1)
        mean = (p * z).sum(-1)  # (rows,) E_p[z]
        var = (p * (z - mean[:, None]).square()).sum(-1)  # Var_p[z]
        gap = mean - z.gather(1, labels[start:start + step, None].long()).squeeze(1)
        if weights is None:
            first += gap.sum()
            second += var.sum()
        else:
            w = weights[start:start + step]
            first += (w * gap).sum()
            second += (w * var).sum()
    total = logits.shape[0] if weights is None else float(weights.sum())
    return float(first) / total, float(second) / total


def _fit_log_temperature(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """log T* on checked inputs; raises TemperatureError when the minimum is at a bound."""
    def slope(u: float) -> tuple[float, float]:
        """(dL/du, d2L/du2) at u = log T."""
        beta = math.exp(-u)
        d1, d2 = _derivatives(logits, labels, weights, beta)
        return -beta * d1, beta * d1 + beta * beta * d2

    low, high = math.log(T_MIN), math.log(T_MAX)
    if slope(low)[0] >= 0:
        raise TemperatureError(
            f"expected a temperature above {T_MIN}, got the search bound: the NLL still falls as T shrinks to "
            f"{T_MIN}; the logits are degenerate (constant rows, or every calibration example right with a "
            "margin); use a larger calibration split or skip --calibrate", T_MIN)
    if slope(high)[0] <= 0:
        raise TemperatureError(
            f"expected a temperature below {T_MAX}, got the search bound: the NLL still falls at T = {T_MAX}; "
            "the logits are degenerate (they carry no information about the labels); check the model and labels", T_MAX)
    u = 0.0
    for _ in range(_MAX_STEPS):
        g, h = slope(u)
        if g > 0:
            high = u
        else:
            low = u
        if g == 0:
            return u
        proposal = u - g / h if h > 0 else math.nan
        if not low < proposal < high:  # also catches NaN
            proposal = (low + high) / 2
        if abs(proposal - u) < _TOLERANCE or high - low < _TOLERANCE:
            return proposal
        u = proposal
    return u


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimising the mean NLL of ``softmax(logits / T)`` (module docstring).

    Args:
        logits: (N, K) floating logits of a held-out calibration split, finite.
        labels: (N,) integer class indices in [0, K), at least 2 distinct.

    Returns:
        T* as a Python float in (T_MIN, T_MAX); ``logits / T*`` are the calibrated logits.

    Raises:
        TemperatureError: (an AuditError) when the minimum lies at a search bound (degenerate logits).
        AuditError: on a bad shape or dtype, N = 0, NaN or inf logits, a label outside [0, K), or fewer
            than 2 classes present.

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
        >>> round(fit_temperature(z, torch.tensor([0, 0, 1, 1])), 4)
        3.641
    """
    _check_logits(logits, labels)
    return math.exp(_fit_log_temperature(logits, labels))


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T`` in float64 (a float32 input keeps a strict order between classes: no new ties)."""
    return logits.to(torch.float64) / temperature


def calibrated_metrics(cal_logits: torch.Tensor, cal_labels: torch.Tensor, test_logits: torch.Tensor,
                       test_labels: torch.Tensor, *, n_bins: int = 15) -> dict:
    """Fit T* on a calibration split and measure the test split after scaling by it.

    Args:
        cal_logits: (M, K) calibration logits. cal_labels: (M,) class indices, at least 2 classes present.
        test_logits: (N, K) test logits with the same K. test_labels: (N,) class indices.
        n_bins: bins of the binned estimators.

    Returns:
        ``{"temperature": float, "calibrated": dict}``, ``calibrated`` being
        :func:`audit.metrics.model_metrics` of ``test_logits / T*`` (accuracy, nll, brier, entropy, ece, mce,
        ece_adaptive, smece, ece_debiased, ece_sweep, ece_toplabel, ks; Python floats).

    Raises:
        TemperatureError, AuditError: as :func:`fit_temperature`, or when the two splits have different K.
        RuntimeError: if scaling changed the test accuracy (a bug: T > 0 keeps every argmax).

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
        >>> out = calibrated_metrics(z, torch.tensor([0, 0, 1, 1]), z, torch.tensor([0, 0, 1, 1]))
        >>> round(out["temperature"], 4), out["calibrated"]["accuracy"]
        (3.641, 0.75)
    """
    from audit.metrics.model_ci import model_metrics

    _check_rows(test_logits, "test_logits")
    _check_labels(test_labels, test_logits)
    if test_logits.shape[1] != getattr(cal_logits, "shape", (None, None))[-1]:
        got = tuple(cal_logits.shape) if isinstance(cal_logits, torch.Tensor) else type(cal_logits).__name__
        raise AuditError(f"expected calibration logits with {test_logits.shape[1]} classes like the test logits, "
                         f"got {got}; calibrate on data with the test data's labels")
    temperature = fit_temperature(cal_logits, cal_labels)
    scaled = scale_logits(test_logits, temperature)
    before = (test_logits.argmax(-1) == test_labels).sum()
    after = (scaled.argmax(-1) == test_labels).sum()
    if not bool(before == after):
        raise RuntimeError(f"temperature scaling by {temperature} changed the number correct from {int(before)} "
                           f"to {int(after)}; T > 0 must keep every argmax")
    return {"temperature": temperature, "calibrated": model_metrics(scaled, test_labels, n_bins=n_bins)}


def temperature_ratio(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, *,
                      n_resamples: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """``T*_student / T*_teacher`` on one calibration split, with a paired percentile bootstrap CI that
    refits both temperatures on each resample.

    Resample b draws N example indices with replacement (``torch.randint`` from a generator on the
    logits' device seeded with ``seed``, as :func:`audit.metrics.bootstrap_ci`); both models are refitted
    on the same indices, as example weights (the counts of each index), so no resampled copy of the logits
    is made. A resample whose fit lands on a bound (e.g. every drawn example right) keeps the bound as its
    temperature and is counted in ``degenerate_resamples``.

    Args:
        teacher_logits, student_logits: (N, K) floating logits of the same examples (K may differ).
        labels: (N,) class indices.
        n_resamples: bootstrap resamples >= 1.
        level: coverage in (0, 1).
        seed: generator seed.

    Returns:
        ``{"teacher": T_t, "student": T_s, "ratio": T_s / T_t, "ci": [low, high], "level": level,
        "n_resamples": n_resamples, "degenerate_resamples": int}`` with Python numbers.

    Raises:
        TemperatureError, AuditError: as :func:`fit_temperature` on the full split, mismatched N or
            devices, n_resamples < 1 or level outside (0, 1).

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
        >>> y = torch.tensor([0, 0, 1, 1, 1, 0])
        >>> out = temperature_ratio(z, 2 * z, y, n_resamples=20)
        >>> round(out["ratio"], 6)
        2.0
    """
    for name, z in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        _check_rows(z, name)
    if teacher_logits.shape[0] != student_logits.shape[0] or teacher_logits.device != student_logits.device:
        raise AuditError(f"expected teacher and student logits of the same examples, got {tuple(teacher_logits.shape)} "
                         f"on {teacher_logits.device} and {tuple(student_logits.shape)} on {student_logits.device}; "
                         "predict both on one calibration split")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise AuditError(f"expected n_resamples as an int >= 1, got {n_resamples!r}; pass e.g. 200")
    if not 0.0 < level < 1.0:
        raise AuditError(f"expected level in (0, 1), got {level!r}; pass e.g. 0.95")
    teacher = fit_temperature(teacher_logits, labels)
    student = fit_temperature(student_logits, labels)
    n, device = labels.shape[0], labels.device
    generator = torch.Generator(device=device).manual_seed(seed)
    ratios, degenerate = [], 0
    for _ in range(n_resamples):
        index = torch.randint(0, n, (n,), generator=generator, device=device)
        weights = torch.bincount(index, minlength=n).to(torch.float64)
        fitted = []
        for z in (teacher_logits, student_logits):
            try:
                fitted.append(math.exp(_fit_log_temperature(z, labels, weights)))
            except TemperatureError as error:
                degenerate += 1
                fitted.append(error.bound)
        ratios.append(fitted[1] / fitted[0])
    alpha = (1.0 - level) / 2
    low, high = torch.quantile(torch.tensor(ratios, dtype=torch.float64),
                               torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return {"teacher": teacher, "student": student, "ratio": student / teacher, "ci": [low, high], "level": level,
            "n_resamples": n_resamples, "degenerate_resamples": degenerate}
