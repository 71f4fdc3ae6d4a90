"""Every per-model number of a report, and a seeded percentile bootstrap CI for each of them and for the
paired teacher-minus-student differences of calibration error.

The resampling is :func:`audit.stats.bootstrap_ci`'s: ``torch.randint(0, N, (B, N))`` from a generator
on the logits' device seeded with ``seed``, drawn in chunks of at most ``MAX_CHUNK_ELEMENTS`` indices
(the generator's stream does not depend on the chunking), and the interval is the ``(1 -+ level) / 2``
quantiles with linear interpolation. Each resample's numbers are exactly what :func:`model_metrics`
gives on the resampled examples: the per-example quantities (confidence, correctness, prediction, NLL,
Brier, entropy) are computed once, and each resample gathers its rows of them, so memory stays at a
chunk of indices plus one resample's rows whatever the number of resamples. The cost is one pass of the
estimators per resample (one sort and one smooth-ECE bisection): about n_resamples times
:func:`model_metrics` on N examples.
"""

from __future__ import annotations

import torch

from audit.errors import AuditError
from audit.stats.calibration import (
    _check_confidences,
    _check_n_bins,
    _ece,
    _edges,
    _equal_mass_sums,
    _equal_width_sums,
    _mce,
    _reliability_from_sums,
)
from audit.stats.confidence import _check_labels, _check_rows
from audit.stats.estimators import _extras
from audit.stats.smooth import _SmoothECE
from audit.stats.stats import MAX_CHUNK_ELEMENTS

METRICS = ("accuracy", "nll", "brier", "entropy", "ece", "mce", "ece_adaptive", "smece", "ece_debiased",
           "ece_sweep", "ece_toplabel", "ks")
PAIRED_METRICS = ("ece", "smece")
_MEANS = ("accuracy", "nll", "brier", "entropy")


def _per_example(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N,) per-example quantities of (N, K) logits; probabilities in float32 at least."""
    _check_rows(logits, "logits")
    _check_labels(labels, logits)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logp = torch.log_softmax(z, -1)
    probs = torch.softmax(z, -1)  # not logp.exp(): the same probabilities as the rest of the report
    confidence, predicted = probs.max(-1)
    labels = labels.long()
    correct = predicted == labels
    _check_confidences(confidence, correct)
    one_hot = torch.nn.functional.one_hot(labels, z.shape[1]).to(probs.dtype)
    return {
        "confidence": confidence,
        "correct": correct,
        "predicted": predicted,
        "accuracy": correct,
        "nll": -logp.gather(1, labels[:, None]).squeeze(1),
        "brier": (probs - one_hot).square().sum(-1),  # the K-column convention of audit.stats.brier
        "entropy": 0.0 - torch.special.xlogy(probs, probs).sum(-1),
    }


def _metrics(ex: dict[str, torch.Tensor], k: int, n_bins: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named numbers (0-dim float64) of one set of per-example quantities."""
    conf, correct = ex["confidence"], ex["correct"]
    out = {name: ex[name].to(torch.float64).mean() for name in _MEANS if name in names}
    if {"ece", "mce"} & set(names):
        edges = _edges(n_bins, conf.device)
        bins = _reliability_from_sums(edges, *_equal_width_sums(conf, correct, edges))
        out.update(ece=_ece(bins), mce=_mce(bins))
    if "ece_adaptive" in names:
        edges = _edges(n_bins, conf.device)
        out["ece_adaptive"] = _ece(_reliability_from_sums(edges, *_equal_mass_sums(conf, correct, n_bins)))
    if {"ece_debiased", "ece_sweep", "ece_toplabel", "ks"} & set(names):
        out.update(_extras(conf, correct, ex["predicted"], k, n_bins))
    elif "smece" in names:
        smooth = _SmoothECE(conf, correct)
        out["smece"] = smooth(smooth.fixed_point())
    return {name: out[name] for name in names}


def model_metrics(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Every per-model number of the report, from logits.

    Args:
        logits: (N, K) floating logits (probabilities are their softmax, in float32 for half inputs).
        labels: (N,) integer class indices in [0, K).
        n_bins: bins of the binned estimators.

    Returns:
        ``{name: float}`` for the names of ``METRICS``: means of ``accuracy``, ``nll``, ``brier`` (K-column),
        ``entropy`` (nats); ``ece``, ``mce``, ``ece_adaptive`` (:func:`audit.stats.calibration_errors`);
        ``smece``, ``ece_debiased``, ``ece_sweep``, ``ece_toplabel``, ``ks``
        (:func:`audit.stats.calibration_extras`).

    Raises:
        AuditError: on a bad shape or dtype, N = 0, NaN probabilities, a label outside [0, K), n_bins < 1.

    Example:
        >>> out = model_metrics(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
        >>> round(out["accuracy"], 4), round(out["ece"], 4)
        (0.6667, 0.1938)
    """
    _check_n_bins(n_bins)
    ex = _per_example(logits, labels)
    return {name: float(v) for name, v in _metrics(ex, logits.shape[1], n_bins, METRICS).items()}


def _check_resampling(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise AuditError(f"expected n_resamples as an int >= 1, got {n_resamples!r}; pass e.g. 1000")
    if not 0.0 < level < 1.0:
        raise AuditError(f"expected level in (0, 1), got {level!r}; pass e.g. 0.95")


def _resample_indices(n: int, n_resamples: int, seed: int, device: torch.device):
    """Yield the (N,) index rows of the bootstrap, drawn in chunks of at most MAX_CHUNK_ELEMENTS."""
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        yield from torch.randint(0, n, (min(chunk, n_resamples - start), n), generator=generator, device=device)


def _interval(values: torch.Tensor, level: float) -> list[float]:
    alpha = (1.0 - level) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=values.device)
    return torch.quantile(values, q).tolist()


def model_cis(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15, n_resamples: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap CI of every number of :func:`model_metrics` (module docstring: resampling).

    Args:
        logits: (N, K) floating logits. labels: (N,) class indices.
        n_bins: bins of the binned estimators.
        n_resamples: bootstrap resamples >= 1.
        level: coverage in (0, 1).
        seed: generator seed; with the same seed, device and N the indices are those of
            :func:`audit.stats.bootstrap_ci`.

    Returns:
        ``{name: [low, high]}`` for the names of ``METRICS``, Python floats.

    Raises:
        AuditError: as :func:`model_metrics`, or n_resamples < 1, level outside (0, 1).

    Example:
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
        >>> ci = model_cis(z, torch.tensor([0, 1, 1, 1]), n_resamples=50)
        >>> ci["accuracy"][0] <= 0.75 <= ci["accuracy"][1]
        True
    """
    _check_n_bins(n_bins)
    return column_cis(_per_example(logits, labels), logits.shape[1], n_bins=n_bins, n_resamples=n_resamples,
                      level=level, seed=seed)


def column_cis(columns: dict[str, torch.Tensor], num_classes: int, *, names: tuple[str, ...] = METRICS,
               groups: torch.Tensor | None = None, n_bins: int = 15, n_resamples: int = 1000, level: float = 0.95,
               seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap CI of the named numbers of :func:`model_metrics`, from per-example columns.

    Every estimator is recomputed on each resample. Without ``groups`` rows are resampled (the indices of
    :func:`model_cis`); with ``groups`` whole groups are (a cluster bootstrap: a token audit's sequences, whose
    tokens are not independent), each resample drawing G of the G groups with replacement and keeping every
    position of a drawn group.

    Args:
        columns: (N,) ``confidence`` (top-1 probability), ``correct`` (bool), ``predicted`` (top-1 class) and
            the per-example values of the means asked for (``accuracy``, ``nll``, ``brier``, ``entropy``).
        num_classes: K (a vocabulary for tokens). names: a subset of :data:`METRICS`.
        groups: (N,) integer group of each position, or None.

    Returns:
        ``{name: [low, high]}``, Python floats.

    Raises:
        AuditError: n_resamples < 1, level outside (0, 1), n_bins < 1.
    """
    _check_n_bins(n_bins)
    _check_resampling(n_resamples, level)
    n = columns["confidence"].shape[0]
    device = columns["confidence"].device
    draws = (_resample_indices(n, n_resamples, seed, device) if groups is None
             else _cluster_resample_indices(groups, n_resamples, seed))
    rows = [_metrics({key: v[index] for key, v in columns.items()}, num_classes, n_bins, names) for index in draws]
    return {name: _interval(torch.stack([r[name] for r in rows]), level) for name in names}


def _cluster_resample_indices(groups: torch.Tensor, n_resamples: int, seed: int):
    """Yield the position indices of each cluster resample: G group draws with replacement, every position of
    a drawn group kept (in group order)."""
    _, dense, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.argsort(dense, stable=True)  # positions grouped by group
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    generator = torch.Generator(device=groups.device).manual_seed(seed)
    for _ in range(n_resamples):
        drawn = torch.randint(0, counts.numel(), (counts.numel(),), generator=generator, device=groups.device)
        lengths = counts[drawn]
        ends = lengths.cumsum(0)
        within = torch.arange(int(ends[-1]), device=groups.device) - (ends - lengths).repeat_interleave(lengths)
        yield order[starts[drawn].repeat_interleave(lengths) + within]


def paired_difference_cis(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, *,
                          n_bins: int = 15, n_resamples: int = 1000, level: float = 0.95,
                          seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """Teacher-minus-student differences of ECE and smECE with paired percentile bootstrap CIs.

    Both models are evaluated on the same resampled examples (module docstring), so the CI accounts for
    their correlation. A positive difference means the student is better calibrated than its teacher; a
    CI that excludes 0 says so at the given level.

    Args:
        teacher_logits: (N, K) floating logits. student_logits: (N, K') logits of the same examples.
        labels: (N,) class indices in [0, min(K, K')).
        n_bins: bins of the ECE.
        n_resamples, level, seed: as :func:`model_cis`.

    Returns:
        ``{"ece": {"difference": float, "ci": [low, high]}, "smece": {...}}`` (``PAIRED_METRICS``).

    Raises:
        AuditError: as :func:`model_cis`, or logits of different N.

    Example:
        >>> t = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 1.0]])
        >>> out = paired_difference_cis(t, t, torch.tensor([0, 1, 1, 1]), n_resamples=20)
        >>> out["ece"]
        {'difference': 0.0, 'ci': [0.0, 0.0]}
    """
    _check_n_bins(n_bins)
    _check_resampling(n_resamples, level)
    teacher = _per_example(teacher_logits, labels)
    student = _per_example(student_logits, labels)
    kt, ks = teacher_logits.shape[1], student_logits.shape[1]

    def difference(index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        pick = (lambda v: v) if index is None else (lambda v: v[index])
        a = _metrics({key: pick(v) for key, v in teacher.items()}, kt, n_bins, PAIRED_METRICS)
        b = _metrics({key: pick(v) for key, v in student.items()}, ks, n_bins, PAIRED_METRICS)
        return {name: a[name] - b[name] for name in PAIRED_METRICS}

    point = difference(None)
    rows = [difference(index) for index in _resample_indices(labels.shape[0], n_resamples, seed, labels.device)]
    return {name: {"difference": float(point[name]), "ci": _interval(torch.stack([r[name] for r in rows]), level)}
            for name in PAIRED_METRICS}
