"""Calibration estimators beyond binned ECE: debiased L2 (Kumar et al. 2019), ECE-sweep (Roelofs et al.
2022), top-label ECE (Gupta & Ramdas 2022) and the KS calibration error (Gupta et al. 2021).

All take top-label confidences and correctness flags, except :func:`ece_toplabel`, which needs the
predicted class as well. Sums are accumulated in float64 and results are 0-dim float64 tensors. The
sort-based estimators sort the N confidences once (float64, stable); :func:`calibration_extras` computes
all of them (and the smooth ECE) from one sort and one input check, as a report needs.

Binning conventions, pinned by tests at 0, 1 and every edge:

- :func:`ece_toplabel`: the equal-width bins of :mod:`audit.stats.calibration` (``[i/n, (i+1)/n)``, the
  last closed), one set per predicted class.
- :func:`ece_debiased`: uncertainty-calibration 0.1.4's equal-mass bins: the sorted confidences are cut
  into ``min(n_bins, N)`` runs as ``np.array_split`` does, each cut becomes the edge ``(s[c-1] + s[c]) / 2``,
  duplicate edges merge, 1.0 is the last edge, and bin ``b`` is ``(edge_{b-1}, edge_b]`` (0 lies in the
  first). Equal confidences therefore always share a bin, and a run of ties cut in two goes to the lower.
- :func:`ece_sweep`: the equal-mass groups of :func:`audit.stats.adaptive_ece` (positions in the stable
  sort order, ``torch.tensor_split`` sizes), for every candidate bin count.
- :func:`ks_error`: no bins; ties are summed as one step of the cumulative curves, so the result does not
  depend on the order of equal confidences.
"""

from __future__ import annotations

import torch

from audit.stats.calibration import (
    _check_confidences,
    _check_n_bins,
    _edges,
    _row_chunks,
    _scaled_bin_index,
    _scaled_bin_sums,
)
from audit.stats.confidence import _check_labels, _check_rows
from audit.stats.smooth import _SmoothECE

# candidate bin counts of the sweep checked per vectorised step (one host sync each)
_SWEEP_BLOCK = 64


class _Sorted:
    """Confidences in stable ascending order with prefix sums, shared by the sort-based estimators."""

    def __init__(self, confidences: torch.Tensor, correct: torch.Tensor) -> None:
        # the bits of a float >= 0 read as an integer order like the values, and integer keys take torch's
        # radix sort on CPU: 3-10x faster than sorting the floats, with the same stable order (+ 0.0 turns
        # -0.0 into 0.0); float32 keys are half the width of float64 ones
        narrow = confidences.dtype in (torch.float16, torch.bfloat16, torch.float32)
        values = confidences.to(torch.float32 if narrow else torch.float64) + 0.0
        order = torch.argsort(values.view(torch.int32 if narrow else torch.int64), stable=True)
        self.values = values[order].to(torch.float64)
        self.hits = correct[order].to(torch.float64)
        zero = torch.zeros(1, dtype=torch.float64, device=self.values.device)
        self.conf_cum = torch.cat([zero, self.values.cumsum(0)])  # (N + 1,) sums of the first i
        self.hit_cum = torch.cat([zero, self.hits.cumsum(0)])
        self.n = self.values.numel()


def _split_points(n: int, groups: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Start of group k (0..groups) when n positions are cut into ``groups`` parts as torch.tensor_split
    does (the first ``n % groups`` parts one longer); broadcasts ``groups`` against ``k``."""
    q, r = n // groups, n % groups
    return k * q + torch.minimum(k, r)


def _debiased(s: _Sorted, n_bins: int) -> torch.Tensor:
    n = s.n
    groups = min(n_bins, n)
    k = torch.arange(1, groups, device=s.values.device)
    cuts = _split_points(n, torch.tensor(groups, device=k.device), k)  # (groups - 1,) first index of each next run
    edges = (s.values[cuts - 1] + s.values[cuts]) / 2.0
    edges = torch.unique(torch.cat([edges, torch.ones(1, dtype=torch.float64, device=k.device)]))  # sorted
    # bin b holds the values in (edge_{b-1}, edge_b]: in sorted order, the positions before the count <= edge_b
    ends = torch.searchsorted(s.values, edges, right=True)
    ends[-1] = n  # every confidence is <= 1
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    count = (ends - starts).double()
    conf = (s.conf_cum[ends] - s.conf_cum[starts]) / count
    acc = (s.hit_cum[ends] - s.hit_cum[starts]) / count
    # per bin: (conf - acc)^2 minus the variance of the accuracy estimate; bins of fewer than 2 add nothing
    error = (conf - acc).square() - acc * (1 - acc) / (count - 1)
    error = torch.where(count >= 2, error, torch.zeros_like(error))
    return ((count / n) * error).sum().clamp(min=0).sqrt()


def _sweep(s: _Sorted) -> tuple[torch.Tensor, int]:
    """(ECE, b*): b* the largest bin count such that every count 1..b* has strictly increasing accuracies."""
    n, device = s.n, s.values.device
    best = 1
    start = 2
    while start <= n:
        b = torch.arange(start, min(start + _SWEEP_BLOCK, n + 1), device=device)[:, None]  # (B, 1) candidates
        width = int(b[-1])
        k = torch.arange(width + 1, device=device).minimum(b)  # (B, width + 1); past b repeats the end
        points = _split_points(n, b, k)
        size = (points[:, 1:] - points[:, :-1]).double()
        acc = (s.hit_cum[points[:, 1:]] - s.hit_cum[points[:, :-1]]) / size  # (B, width), NaN past b
        pair = k[:, 1:-1] < b  # (B, width - 1): neighbours k - 1, k both inside group count b
        rises = (acc[:, 1:] > acc[:, :-1]) | ~pair
        monotone = rises.all(1)
        failed = (~monotone).nonzero()
        if failed.numel():  # one host sync per block
            best = start + int(failed[0, 0]) - 1
            break
        best = int(b[-1])
        start = best + 1
    groups = torch.tensor(best, device=device)
    points = _split_points(n, groups, torch.arange(best + 1, device=device))
    gap = (s.hit_cum[points[1:]] - s.hit_cum[points[:-1]]) - (s.conf_cum[points[1:]] - s.conf_cum[points[:-1]])
    return gap.abs().sum() / n, best


def _ks(s: _Sorted) -> torch.Tensor:
    # the cumulative curves are compared at the end of each run of equal confidences
    last = torch.ones_like(s.values, dtype=torch.bool)
    last[:-1] = s.values[1:] != s.values[:-1]
    gap = (s.conf_cum[1:] - s.hit_cum[1:])[last]
    return gap.abs().max() / s.n


def _toplabel(confidences: torch.Tensor, correct: torch.Tensor, predicted: torch.Tensor, k: int,
              n_bins: int) -> torch.Tensor:
    edges = _edges(n_bins, confidences.device)
    total = None
    for rows in _row_chunks(confidences):
        scaled, index = _scaled_bin_index(confidences[rows], edges)
        index += predicted[rows] * n_bins  # slot of (class, bin)
        sums = _scaled_bin_sums(index, scaled, n_bins, correct[rows], k * n_bins)
        total = sums if total is None else tuple(a + b for a, b in zip(total, sums, strict=True))
    _, conf_sum, correct_sum = total
    return (correct_sum - conf_sum).abs().sum() / confidences.numel()


def ece_debiased(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Debiased L2 calibration error (Kumar, Liang & Ma 2019, "Verified uncertainty calibration").

    With equal-mass bins (module docstring), ``n_b`` examples, mean confidence ``c_b`` and accuracy ``a_b``:

        CE^2 = sum_b (n_b / N) [(c_b - a_b)^2 - a_b (1 - a_b) / (n_b - 1)]   (bins with n_b < 2 add 0)
        ece_debiased = sqrt(max(CE^2, 0))

    This is uncertainty-calibration 0.1.4's ``lower_bound_scaling_ce(conf, correct, p=2, debias=True,
    num_bins=n_bins, binning_scheme=get_equal_bins)``.

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.
        n_bins: number of equal-mass bins (fewer when N < n_bins or edges coincide).

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: on bad shapes or dtypes, N = 0, confidences outside [0, 1] or NaN, or n_bins < 1.

    Example:
        >>> conf = torch.tensor([0.6, 0.6, 0.6, 0.9, 0.9, 0.9], dtype=torch.float64)
        >>> ece_debiased(conf, torch.tensor([False, False, False, True, True, False]), n_bins=2)
        tensor(0.3894, dtype=torch.float64)
    """
    _check_n_bins(n_bins)
    _check_confidences(confidences, correct)
    return _debiased(_Sorted(confidences, correct), n_bins)


def ece_sweep(confidences: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """ECE-sweep (Roelofs, Cain, Shlens & Mozer 2022, "Mitigating bias in calibration error estimation").

    Equal-mass ECE (:func:`audit.stats.adaptive_ece`'s groups) with ``b*`` groups, where ``b*`` is found
    by sweeping b = 1, 2, ... and stopping before the first b whose group accuracies are not strictly
    increasing in confidence (so every count up to ``b*`` is monotone); at most N. Strict, as EleutherAI's
    implementation of the sweep: with non-decreasing, a model right on every example would sweep to N
    singleton bins, and the count is bounded by about sqrt(2N) when the accuracies must all differ.

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.

    Returns:
        0-dim float64 tensor in [0, 1]; equal to ``adaptive_ece(confidences, correct, ece_sweep_bins(...))``.

    Raises:
        AuditError: as :func:`ece_debiased`.

    Example:
        >>> conf = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
        >>> ece_sweep(conf, torch.tensor([False, False, True, False, True, True])), \
ece_sweep_bins(conf, torch.tensor([False, False, True, False, True, True]))
        (tensor(0.2500, dtype=torch.float64), 3)
    """
    _check_confidences(confidences, correct)
    return _sweep(_Sorted(confidences, correct))[0]


def ece_sweep_bins(confidences: torch.Tensor, correct: torch.Tensor) -> int:
    """The bin count ``b*`` chosen by :func:`ece_sweep`, as a Python int in [1, N]; raises as it."""
    _check_confidences(confidences, correct)
    return _sweep(_Sorted(confidences, correct))[1]


def ks_error(confidences: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Kolmogorov-Smirnov calibration error (Gupta, Rahimi, Ajanthan, Mensink, Sminchisescu & Hartley
    2021, "Calibration of neural networks using splines").

    With the examples sorted by confidence, ``KS = max_i |sum_{j<=i} (c_j - 1[correct_j])| / N``, the largest
    gap between the cumulative confidence and the cumulative accuracy; the maximum is taken at the ends of
    runs of equal confidences (module docstring), and includes the empty prefix (so KS >= 0).

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: as :func:`ece_debiased`.

    Example:
        >>> ks_error(torch.tensor([0.9, 0.8, 0.6]), torch.tensor([True, False, True]))
        tensor(0.1333, dtype=torch.float64)
    """
    _check_confidences(confidences, correct)
    return _ks(_Sorted(confidences, correct))


def _check_probs_labels(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_rows(probs, "probs")
    _check_labels(labels, probs)
    confidences, predicted = probs.max(-1)  # ties go to the lowest index, as torch.argmax
    correct = predicted == labels
    _check_confidences(confidences, correct)
    return confidences, correct, predicted


def ece_toplabel(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Top-label ECE (Gupta & Ramdas 2022, "Top-label calibration and multiclass-to-binary reductions"):
    the confidence is binned separately for each predicted class.

        ECE_TL = sum_c (N_c / N) ECE(confidences of the N_c examples predicted c)
               = sum over (class c, bin b) |A_cb - C_cb| / N

    with ``A_cb`` the number correct and ``C_cb`` the sum of confidences of the examples predicted c in
    equal-width bin b (module docstring). Always >= the pooled :func:`audit.stats.ece`.

    Args:
        probs: (N, K) floating probabilities in [0, 1]; the prediction is the argmax (lowest index on ties).
        labels: (N,) integer class indices in [0, K).
        n_bins: equal-width bins per class.

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: on bad shapes or dtypes, N = 0, probabilities outside [0, 1] or NaN, a label outside
            [0, K), or n_bins < 1.

    Example:
        >>> ece_toplabel(torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.8, 0.2]]), torch.tensor([0, 0, 0]), n_bins=10)
        tensor(0.4000, dtype=torch.float64)
    """
    _check_n_bins(n_bins)
    confidences, correct, predicted = _check_probs_labels(probs, labels)
    return _toplabel(confidences, correct, predicted, probs.shape[1], n_bins)


def calibration_extras(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """All the estimators of this module and the smooth ECE on top-label confidences, from one input
    check and one sort (what a report needs per model).

    Args:
        probs: (N, K) floating probabilities in [0, 1].
        labels: (N,) integer class indices in [0, K).
        n_bins: bins of the debiased and top-label estimators.

    Returns:
        ``{"smece", "smece_sigma", "ece_debiased", "ece_sweep", "ece_sweep_bins", "ece_toplabel", "ks"}``:
        0-dim float64 tensors equal to :func:`audit.stats.smooth_ece`, :func:`ece_debiased`,
        :func:`ece_sweep`, :func:`ece_toplabel` and :func:`ks_error`; ``smece_sigma`` (float64) and
        ``ece_sweep_bins`` (int64) are the chosen bandwidth and bin count.

    Raises:
        AuditError: as :func:`ece_toplabel`.

    Example:
        >>> out = calibration_extras(torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
        >>> sorted(out)
        ['ece_debiased', 'ece_sweep', 'ece_sweep_bins', 'ece_toplabel', 'ks', 'smece', 'smece_sigma']
    """
    _check_n_bins(n_bins)
    confidences, correct, predicted = _check_probs_labels(probs, labels)
    return _extras(confidences, correct, predicted, probs.shape[1], n_bins)


def top_label_extras(confidences: torch.Tensor, correct: torch.Tensor, predicted: torch.Tensor, k: int,
                     n_bins: int = 15) -> dict[str, torch.Tensor]:
    """:func:`calibration_extras` from per-example top-label columns instead of (N, K) probabilities: the
    form a token audit has (K is a vocabulary, only each position's top-1 is kept).

    Args:
        confidences: (N,) top-1 probabilities in [0, 1]. correct: (N,) bool, top-1 == target.
        predicted: (N,) integer top-1 class. k: number of classes. n_bins: as :func:`calibration_extras`.

    Raises:
        AuditError: shapes that differ, confidences outside [0, 1] or NaN, n_bins < 1.
    """
    _check_n_bins(n_bins)
    _check_confidences(confidences, correct)
    return _extras(confidences, correct, predicted, k, n_bins)


def _extras(confidences: torch.Tensor, correct: torch.Tensor, predicted: torch.Tensor, k: int,
            n_bins: int) -> dict[str, torch.Tensor]:
    """:func:`calibration_extras` on checked top-label inputs."""
    s = _Sorted(confidences, correct)
    smooth = _SmoothECE(confidences, correct)
    sigma = smooth.fixed_point()
    sweep, sweep_bins = _sweep(s)
    device = confidences.device
    return {
        "smece": smooth(sigma),
        "smece_sigma": torch.tensor(sigma, dtype=torch.float64, device=device),
        "ece_debiased": _debiased(s, n_bins),
        "ece_sweep": sweep,
        "ece_sweep_bins": torch.tensor(sweep_bins, device=device),
        "ece_toplabel": _toplabel(confidences, correct, predicted, k, n_bins),
        "ks": _ks(s),
    }

