"""Post-hoc temperature scaling (Guo et al. 2017): fit one T > 0 on held-out logits, report a model after
it, and compare the temperatures a teacher and its student need.

``fit_temperature`` minimises the mean NLL ``L(T) = mean_i [logsumexp(z_i / T) - z_{i,y_i} / T]`` over
``u = log T`` in float64, from the logits themselves (never through probabilities, which saturate at 1.0
in float32 for the over-confident models this is for). With ``beta = 1 / T``, L is convex in beta, so
``dL/du = -beta L'(beta)`` changes sign at most once in ``[log T_MIN, log T_MAX]``: safeguarded Newton
steps on ``dL/du`` run inside a bracket that shrinks to the side of the minimum, bisecting whenever a step
would leave it; large inputs start from the fit of a strided subsample. A search that ends at a bound
with the slope pointing outside, or a flat NLL, means the logits are degenerate (constant rows, a
calibration split the model gets entirely right, where NLL falls as T -> 0, or logits unrelated to the
labels) and raises :class:`TemperatureError`. Each step is one chunked float64 pass over the logits
(shifted by their row maximum) computing L' and L'' (the mean variance of z under softmax(beta z)).
"""

from __future__ import annotations

import math

import torch

from audit.errors import AuditError
from audit.stats.cluster import resample_counts
from audit.stats.confidence import _check_labels, _check_rows
from audit.stats.model_ci import model_metrics

T_MIN, T_MAX = 1e-2, 1e2
# Newton stops when a step in log T is below this (T then has about 10 correct digits)
_TOLERANCE = 1e-10
_MAX_STEPS = 100
# logits elements per chunk of the derivative pass: the float64 temporaries stay in cache
_CHUNK_ELEMENTS = 1 << 16
# centred float64 logits kept between passes up to this many elements (128 MiB)
_CACHE_ELEMENTS = 1 << 24
# rows of the subsample that gives the full-data Newton its starting point
_SUBSAMPLE_ROWS = 1 << 14
# relative step in beta beyond which a cluster resample's T* is refitted instead of expanded (error ~ step^3)
FAR_STEP = 0.02


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


class _Centred:
    """The logits in float64 chunks of rows, each shifted by its row maximum (``z - max z``: NLL and its
    derivatives are shift-invariant, and ``exp(beta (z - max z))`` cannot overflow), with the shifted logit
    of the label. Kept in memory when they fit in ``_CACHE_ELEMENTS``, recomputed per pass otherwise."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> None:
        self.logits, self.labels, self.weights = logits, labels.long(), weights
        self.step = max(1, _CHUNK_ELEMENTS // logits.shape[1])
        self.total = logits.shape[0] if weights is None else float(weights.sum())
        self.cache = list(self._chunks()) if logits.numel() <= _CACHE_ELEMENTS else None
        # the two ends of the search, exactly: L'(beta) -> mean(max z - z_y) >= 0 as beta -> inf, which is 0
        # (no minimum at any T > 0) iff every label logit is its row's maximum; L'(0) = mean(mean z - z_y)
        below = torch.zeros((), dtype=torch.float64, device=logits.device)
        slope_at_zero = torch.zeros_like(below)
        for z, label, weight in self.cache if self.cache is not None else self._chunks():
            gap = z.mean(-1) - label
            below += (label < 0).sum() if weight is None else ((label < 0) & (weight > 0)).sum()
            slope_at_zero += gap.sum() if weight is None else (gap * weight).sum()
        self.all_at_max = bool(below == 0)
        self.slope_at_zero = float(slope_at_zero) / self.total

    def _chunks(self):
        for start in range(0, self.logits.shape[0], self.step):
            z = self.logits[start:start + self.step].to(torch.float64)  # (rows, K)
            z = z - z.amax(-1, keepdim=True)
            label = z.gather(1, self.labels[start:start + self.step, None]).squeeze(1)  # (rows,)
            weight = None if self.weights is None else self.weights[start:start + self.step]
            yield z, label, weight

    def derivatives(self, beta: float) -> tuple[float, float]:
        """(L'(beta), L''(beta)) of the (weighted) mean NLL, accumulated in float64."""
        first = torch.zeros((), dtype=torch.float64, device=self.logits.device)
        second = torch.zeros_like(first)
        # row sums as matrix-vector products: 4x faster than sum(-1) over a short last dim on CPU
        ones = torch.ones(self.logits.shape[1], dtype=torch.float64, device=self.logits.device)
        for z, label, weight in self.cache if self.cache is not None else self._chunks():
            e = (z * beta).exp_()  # (rows, K) unnormalised softmax, max 1
            norm = e @ ones
            ez = e.mul_(z)
            mean = (ez @ ones) / norm  # E_p[z]
            var = ((ez.mul_(z) @ ones) / norm - mean.square()).clamp_(min=0)  # Var_p[z]
            gap = mean - label
            if weight is not None:
                gap, var = gap * weight, var * weight
            first += gap.sum()
            second += var.sum()
        return float(first) / self.total, float(second) / self.total


def _newton(centred: _Centred, u: float, tolerance: float) -> float:
    """Safeguarded Newton on dL/du from u inside [log T_MIN, log T_MAX]: the bracket shrinks to the side of
    the minimum after each step, and a step that would leave it bisects instead. Returns the last u."""
    low, high = math.log(T_MIN), math.log(T_MAX)
    for _ in range(_MAX_STEPS):
        beta = math.exp(-u)
        d1, d2 = centred.derivatives(beta)
        g, h = -beta * d1, beta * d1 + beta * beta * d2  # dL/du, d2L/du2
        if g > 0:
            high = u
        elif g < 0:
            low = u
        else:
            return u
        proposal = u - g / h if h > 0 else math.nan
        if abs(proposal - u) < tolerance:  # converged (before the bracket test: u may be its end)
            return proposal
        if not low < proposal < high:  # also catches NaN
            proposal = (low + high) / 2
        if high - low < tolerance:
            return proposal
        u = proposal
    return u


def _fit_log_temperature(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """log T* on checked inputs; raises TemperatureError when the minimum is at a bound (module docstring).

    Large inputs are first fitted on a strided subsample of about _SUBSAMPLE_ROWS rows (to 1e-6), so that
    the passes over all rows start next to the solution: two or three Newton steps.
    """
    u = 0.0
    stride = logits.shape[0] // _SUBSAMPLE_ROWS
    if stride > 1:
        sub_weights = None if weights is None else weights[::stride]
        u = _newton(_Centred(logits[::stride], labels[::stride], sub_weights), u, 1e-6)
        if not math.log(T_MIN) + 1e-3 < u < math.log(T_MAX) - 1e-3:
            u = 0.0  # a degenerate subsample says nothing about all rows
    centred = _Centred(logits, labels, weights)
    if centred.all_at_max:  # NLL falls all the way to T -> 0 (or is flat: constant rows)
        raise _at_bound(T_MIN)
    if centred.slope_at_zero >= 0:  # NLL falls all the way to T -> inf
        raise _at_bound(T_MAX)
    u = _newton(centred, u, _TOLERANCE)
    # next to a bound: no inner minimum if dL/du >= 0 at T_MIN (resp. <= 0 at T_MAX)
    for bound, sign in ((T_MIN, 1.0), (T_MAX, -1.0)):
        if abs(u - math.log(bound)) < 1e-6:
            beta = 1.0 / bound
            if sign * -beta * centred.derivatives(beta)[0] >= 0:
                raise _at_bound(bound)
    return u


def _at_bound(bound: float) -> TemperatureError:
    if bound == T_MIN:
        return TemperatureError(
            f"expected a temperature above {T_MIN}, got the search bound: the NLL still falls as T shrinks to "
            f"{T_MIN}; the logits are degenerate (constant rows, or every calibration example right with a "
            "margin); use a larger calibration split or skip --calibrate", T_MIN)
    return TemperatureError(
        f"expected a temperature below {T_MAX}, got the search bound: the NLL still falls at T = {T_MAX}; "
        "the logits are degenerate (they carry no information about the labels); check the model and labels", T_MAX)


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
        :func:`audit.stats.model_metrics` of ``test_logits / T*`` (accuracy, nll, brier, entropy, ece, mce,
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
                      groups: torch.Tensor | None = None, n_resamples: int = 200, level: float = 0.95,
                      seed: int = 0) -> dict:
    """``T*_student / T*_teacher`` on one calibration split, with a paired percentile bootstrap CI that
    refits both temperatures on each resample.

    Both models are refitted on the same resamples (:func:`bootstrap_temperatures`); fits at a bound are
    counted in ``degenerate_resamples``. With ``groups`` (positions that come in groups: the tokens of a
    sequence) whole groups are resampled and each resample's temperatures come from
    :func:`one_step_temperatures`.

    Args:
        teacher_logits, student_logits: (N, K) floating logits of the same examples (K may differ).
        labels: (N,) class indices.
        groups: (N,) integer group of each row, or None (rows resampled).
        n_resamples: bootstrap resamples >= 1.
        level: coverage in (0, 1).
        seed: generator seed.

    Returns:
        ``{"teacher": T_t, "student": T_s, "ratio": T_s / T_t, "ci": [low, high], "level": level,
        "n_resamples": n_resamples, "degenerate_resamples": int, "method": str}`` with Python numbers.

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
    if groups is None:
        resampled, degenerate = bootstrap_temperatures([teacher_logits, student_logits], labels,
                                                       n_resamples=n_resamples, seed=seed)
        method = "bootstrap of examples; each resample's T* refitted"
    else:
        resampled = one_step_temperatures([teacher_logits, student_logits], labels, groups, [teacher, student],
                                          n_resamples=n_resamples, seed=seed)
        degenerate = int((resampled == T_MAX).sum())
        method = "cluster bootstrap by sequence; each resample's T* one second-order step in 1/T from the fit"
    alpha = (1.0 - level) / 2
    low, high = torch.quantile(resampled[:, 1] / resampled[:, 0],
                               torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return {"teacher": teacher, "student": student, "ratio": student / teacher, "ci": [low, high], "level": level,
            "n_resamples": n_resamples, "degenerate_resamples": degenerate, "method": method}


def bootstrap_temperatures(logits: list[torch.Tensor], labels: torch.Tensor, *, n_resamples: int,
                           seed: int = 0) -> tuple[torch.Tensor, int]:
    """T* of every model refitted on the same bootstrap resamples of the examples.

    Resample b draws N example indices with replacement (``torch.randint`` from a generator on the labels'
    device seeded with ``seed``, as :func:`audit.stats.bootstrap_ci`); every model is refitted on them as
    example weights (the counts of each index), so no resampled copy of the logits is made. A fit that lands
    on a bound (e.g. every drawn example right) keeps the bound as its temperature and is counted.

    Args:
        logits: M tensors (N, K_m) of the same N examples, checked by the caller (finite, N > 0).
        labels: (N,) class indices.
        n_resamples: bootstrap resamples B >= 1.

    Returns:
        ``(temperatures, degenerate)``: a (B, M) float64 CPU tensor, and the number of fits at a bound.
    """
    n, device = labels.shape[0], labels.device
    generator = torch.Generator(device=device).manual_seed(seed)
    temperatures, degenerate = torch.empty(n_resamples, len(logits), dtype=torch.float64), 0
    for b in range(n_resamples):
        index = torch.randint(0, n, (n,), generator=generator, device=device)
        weights = torch.bincount(index, minlength=n).to(torch.float64)
        for m, z in enumerate(logits):
            try:
                temperatures[b, m] = math.exp(_fit_log_temperature(z, labels, weights))
            except TemperatureError as error:
                degenerate += 1
                temperatures[b, m] = error.bound
    return temperatures, degenerate


def _row_derivatives(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """(P, 3) float64: each row's first three derivatives of its NLL ``f_i(beta) = logsumexp(beta z_i) -
    beta z_{i,y_i}``: ``E[z] - z_y``, ``Var[z]`` and the third central moment of z under ``softmax(beta z_i)``."""
    centred = _Centred(logits, labels, None)
    rows = []
    for z, label, _ in centred.cache if centred.cache is not None else centred._chunks():
        p = (z * beta).softmax(-1)
        mean = (p * z).sum(-1)
        d = z - mean[:, None]
        rows.append(torch.stack([mean - label, (p * d.square()).sum(-1), (p * d.pow(3)).sum(-1)], 1))
    return torch.cat(rows)


def one_step_temperatures(logits: list[torch.Tensor], labels: torch.Tensor, groups: torch.Tensor,
                          temperatures: list[float], *, n_resamples: int, seed: int = 0) -> torch.Tensor:
    """T* of every model on each cluster-bootstrap resample (whole groups drawn with replacement, the draws of
    :func:`audit.stats.cluster.resample_counts`), by one step in ``beta = 1/T`` from the full-data fit.

    Each position's first three NLL derivatives at the fitted beta are computed once; a resample's
    count-weighted sums ``G1, G2, G3`` then give its step as the root of the second-order expansion of its
    slope, ``G1 + G2 d + G3 d^2 / 2 = 0`` (Newton's step ``-G1 / G2`` where that has no root). B resamples cost
    one pass over the logits instead of B refits; the error is third order in the resample's shift of beta, and a
    resample whose step exceeds :data:`FAR_STEP` of beta is refitted in full.

    Returns:
        (B, M) float64 CPU temperatures (T_MAX where a step leaves beta > 0).
    """
    ids, dense = torch.unique(groups, return_inverse=True)
    sums = []
    for z, temperature in zip(logits, temperatures):
        derivatives = _row_derivatives(z, labels, 1.0 / temperature).cpu()
        sums.append(torch.zeros(ids.numel(), 3, dtype=torch.float64).index_add_(0, dense.cpu(), derivatives))
    out = []
    for counts in resample_counts(ids.numel(), n_resamples, seed, torch.device("cpu")):
        columns = []
        for z, s, temperature in zip(logits, sums, temperatures):
            g1, g2, g3 = (counts @ s).unbind(1)
            root = g2.square() - 2 * g1 * g3
            step = torch.where(root > 0, -2 * g1 / (g2 + root.clamp(min=0).sqrt()), -g1 / g2)
            beta = 1.0 / temperature + step
            resampled = torch.where(beta > 0, 1.0 / beta, torch.full_like(beta, T_MAX))
            # a resample far from the fit (few groups, a sharp NLL) is refitted: the expansion is only local
            for b in (step.abs() * temperature > FAR_STEP).nonzero().flatten().tolist():
                weights = counts[b].to(z.device)[dense]
                try:
                    resampled[b] = math.exp(_fit_log_temperature(z, labels, weights))
                except TemperatureError as error:
                    resampled[b] = error.bound
            columns.append(resampled)
        out.append(torch.stack(columns, 1))
    return torch.cat(out)
