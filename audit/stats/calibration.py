"""Calibration errors of top-label (or per-class) confidences: ECE, MCE, adaptive ECE, classwise ECE.

Binning convention (all equal-width metrics here and :class:`BinnedCalibration`):

- ``n_bins`` equal-width bins with edges ``i / n_bins`` (the float64 value nearest to it); bin ``b`` is
  ``[edge_b, edge_{b+1})`` and the last bin is closed, ``[edge_{n-1}, 1]``. A confidence exactly 0 falls
  in the first bin, exactly 1 in the last.
- A confidence is compared with the edges by its exact value (inputs are widened to float64 first). So
  ``torch.tensor(0.7, dtype=torch.float32)``, which is 0.699999988..., falls in bin 6 of 10, while the
  float64 0.7 falls in bin 7.
- Empty bins contribute nothing; their mean confidence and accuracy are NaN in :class:`ReliabilityBins`.
- Per-bin sums are accumulated in float64 and results are float64.

netcal 1.4 uses the same ``[a, b)`` bins, but builds its edges with ``np.linspace``, i.e. ``i * (1/n)``,
which can be one float64 ulp above ``i / n``: a float64 confidence equal to such an edge (0.7 with 10
bins) lands one bin lower in netcal. It also clips confidences to ``[eps, 1 - eps]`` of their dtype,
which moves exact 0s and 1s by ``eps`` in the bin means. Off the edges the two agree to rounding.

With per-bin sums ``n_b`` (count), ``C_b`` (sum of confidences) and ``A_b`` (number correct) over N
examples:

    ECE = sum_b (n_b / N) |A_b / n_b - C_b / n_b| = sum_b |A_b - C_b| / N
    MCE = max over non-empty b of |A_b / n_b - C_b / n_b|

Each public function reads one value back to the host to check the inputs (confidences in [0, 1]);
the binning itself runs without a sync except the one ``nonzero`` of :func:`adaptive_ece`. On CPU the
examples are processed in chunks of 65536 so that temporaries stay in cache.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from audit.errors import AuditError
from audit.stats.confidence import _check_labels, _check_rows


class ReliabilityBins(NamedTuple):
    """Per-bin summary of a reliability diagram; all float64 except ``count`` (int64).

    Attributes:
        edges: (n_bins + 1,) bin edges, 0 to 1.
        count: (n_bins,) examples per bin.
        confidence: (n_bins,) mean confidence per bin, NaN where empty.
        accuracy: (n_bins,) fraction correct per bin, NaN where empty.
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor


# examples per pass on CPU: the temporaries of a chunk stay in cache and are reused by the allocator,
# where a fresh 1M-entry tensor per step costs more in page faults than the pass that fills it
_CPU_CHUNK = 1 << 16


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise AuditError(f"expected n_bins as an int >= 1, got {n_bins!r}; pass e.g. n_bins=15")


def _check_confidences(confidences: torch.Tensor, correct: torch.Tensor) -> None:
    if not isinstance(confidences, torch.Tensor) or confidences.ndim != 1 or not confidences.is_floating_point():
        desc = f"{tuple(confidences.shape)} {confidences.dtype}" if isinstance(confidences, torch.Tensor) else type(confidences).__name__
        raise AuditError(f"expected confidences as a 1-D floating tensor, got {desc}; pass max_probability(probs)")
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.shape != confidences.shape:
        desc = f"{tuple(correct.shape)} {correct.dtype}" if isinstance(correct, torch.Tensor) else type(correct).__name__
        raise AuditError(
            f"expected correct as a bool tensor of shape {tuple(confidences.shape)}, got {desc}; "
            "pass correct(probs, labels) or predictions == labels"
        )
    if correct.device != confidences.device:
        raise AuditError(f"expected correct on {confidences.device}, got {correct.device}; move it with .to()")
    if confidences.numel() == 0:
        raise AuditError("expected at least one example, got 0; calibration of an empty set is undefined")
    # one host sync: NaN or out-of-range confidences would otherwise be binned silently (NaN fails both tests)
    low, high = confidences.aminmax()
    if not bool((low >= 0) & (high <= 1)):
        raise AuditError("expected confidences in [0, 1], got values outside it or NaN; pass probabilities, not logits")


def _edges(n_bins: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n_bins + 1, dtype=torch.float64, device=device) / n_bins


def _scaled_bin_index(confidences: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scaled, index)``: the float64 ``c * n_bins`` and the equal-width bin in [0, n_bins) of each
    confidence in [0, 1], any shape; the index equals ``bucketize(c, edges, right=True) - 1`` with 1.0
    clamped into the last bin.
    """
    n_bins = edges.numel() - 1
    scaled = confidences.to(torch.float64, copy=True).mul_(n_bins)
    index = scaled.long().clamp_(max=n_bins - 1)
    if confidences.dtype != torch.float64:
        # a significand of at most 24 bits times n_bins < 2**29 is exact in float64, so the floor is the
        # bin of c against the real edges i / n; no float32 value lies between i / n and its rounding
        return scaled, index
    # in float64, c * n is rounded and the floor can be one bin off next to an edge: compare with the edges
    index -= (confidences < edges[index]).long()
    index += ((confidences >= edges[index + 1]) & (index < n_bins - 1)).long()
    return scaled, index


def _scaled_bin_sums(
    slot: torch.Tensor, scaled: torch.Tensor, scale: int, correct: torch.Tensor, n_slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-slot (count int64, confidence sum float64, number correct float64), each (n_slots,), from
    slot indices in [0, n_slots), the float64 confidences times ``scale`` and the correctness flags, all
    of one shape. ``scaled`` is overwritten.

    No temporary is made here: the flags are widened into ``scaled``'s buffer once it has been summed.
    scatter_add_ rather than torch.bincount: as fast on CPU, while bincount reads max(slot) back to the
    host on CUDA.
    """
    slot, scaled = slot.reshape(-1), scaled.reshape(-1)
    ones = torch.ones(1, dtype=torch.long, device=slot.device).expand_as(slot)
    count = torch.zeros(n_slots, dtype=torch.long, device=slot.device).scatter_add_(0, slot, ones)
    conf_sum = torch.zeros(n_slots, dtype=torch.float64, device=slot.device).scatter_add_(0, slot, scaled)
    flags = scaled.copy_(correct.reshape(-1))
    correct_sum = torch.zeros_like(conf_sum).scatter_add_(0, slot, flags)
    # the sum of c * scale over scale: one more rounding, none when scale is a power of two
    return count, conf_sum / scale, correct_sum


def _row_chunks(x: torch.Tensor) -> list[slice]:
    """Row slices of about _CPU_CHUNK elements on CPU, one slice for all rows on CUDA."""
    if x.is_cuda:
        return [slice(0, x.shape[0])]
    step = max(1, _CPU_CHUNK // (x[0].numel() if x.ndim > 1 else 1))
    return [slice(start, start + step) for start in range(0, x.shape[0], step)]


def _add_sums(total: tuple[torch.Tensor, ...] | None, sums: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return sums if total is None else tuple(a + b for a, b in zip(total, sums, strict=True))


def _equal_width_sums(
    confidences: torch.Tensor, correct: torch.Tensor, edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bin sums of (N,) confidences, each (n_bins,); or of the K columns of (N, K) confidences, each
    (K * n_bins,) with column c's bin b in slot c * n_bins + b."""
    n_bins = edges.numel() - 1
    n_slots = n_bins * (confidences.shape[1] if confidences.ndim == 2 else 1)
    total = None
    for rows in _row_chunks(confidences):
        scaled, index = _scaled_bin_index(confidences[rows], edges)
        if confidences.ndim == 2:
            index += torch.arange(confidences.shape[1], device=index.device) * n_bins  # (rows, K)
        total = _add_sums(total, _scaled_bin_sums(index, scaled, n_bins, correct[rows], n_slots))
    return total


def _equal_mass_sums(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int, n_buckets: int = 1 << 14
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums per group, each (n_bins,), when the stable sort order of N confidences is cut into n_bins
    consecutive groups as ``torch.tensor_split`` does, without sorting all N.

    A coarse key ``floor(c * n_buckets)``, non-decreasing in c, is histogrammed with per-bucket sums. A
    bucket that holds none of the n_bins - 1 cuts lies in one group and adds its sums there; only the
    examples of the (at most n_bins - 1) buckets that hold a cut are sorted, stably, to find their
    exact rank. Equal values share a bucket, so ties keep their input order as in a full stable sort.
    """
    n = confidences.numel()
    device = confidences.device
    q, r = divmod(n, n_bins)
    b = torch.arange(1, n_bins, device=device)
    cuts = b * q + b.clamp(max=r)  # (n_bins - 1,) examples in the groups before group b

    def bucket_of(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = conf.to(torch.float64, copy=True).mul_(n_buckets)  # exact: a power of two
        return scaled, scaled.long()  # bucket in [0, n_buckets]; c = 1 has one of its own

    n_slots = n_buckets + 1
    total = None
    chunks = _row_chunks(confidences)
    buckets = []  # kept for the second pass below: 8 bytes an example, cheaper than recomputing
    for rows in chunks:
        scaled, bucket = bucket_of(confidences[rows])
        buckets.append(bucket)
        total = _add_sums(total, _scaled_bin_sums(bucket, scaled, n_buckets, correct[rows], n_slots))
    count, conf_sum, correct_sum = total
    cum = count.cumsum(0)
    below = cum - count  # (n_slots,) examples in lower buckets
    # bucket holding the example of rank cut; a cut == N (empty trailing groups) clamps to the top one
    cut_bucket = torch.searchsorted(cum, cuts, right=True).clamp_(max=n_buckets)
    cuts_in = torch.zeros_like(count).scatter_add_(0, cut_bucket, torch.ones_like(cut_bucket))
    whole = cuts_in == 0  # buckets that lie in one group: the group of index cuts_below
    cuts_below = cuts_in.cumsum(0) - cuts_in
    keep = whole.long()
    group_count = torch.zeros(n_bins, dtype=torch.long, device=device).scatter_add_(0, cuts_below, count * keep)
    group_conf = torch.zeros(n_bins, dtype=torch.float64, device=device).scatter_add_(0, cuts_below, conf_sum * keep)
    group_correct = torch.zeros_like(group_conf).scatter_add_(0, cuts_below, correct_sum * keep)

    # one host sync per chunk (nonzero): the examples of the buckets that hold a cut, in input order
    split = ~whole
    tied = torch.cat([split.index_select(0, bucket).nonzero().squeeze(1) + rows.start
                      for rows, bucket in zip(chunks, buckets, strict=True)])
    values, order = torch.sort(confidences[tied].double(), stable=True)
    tied = tied[order]
    tied_bucket = bucket_of(values)[1]
    first_in_bucket = torch.searchsorted(tied_bucket, tied_bucket)
    rank = below[tied_bucket] + torch.arange(tied.numel(), device=device) - first_in_bucket
    group = torch.searchsorted(cuts, rank, right=True)
    exact = _scaled_bin_sums(group, values, 1, correct[tied], n_bins)
    return group_count + exact[0], group_conf + exact[1], group_correct + exact[2]


def _means(count: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    # 0/0 = NaN marks an empty bin
    return total / count.double()


def _ece(bins: ReliabilityBins) -> torch.Tensor:
    """sum_b (n_b / N) |acc_b - conf_b| over the last dim, empty bins skipped."""
    weight = bins.count.double() / bins.count.sum(-1, keepdim=True)
    gap = (bins.accuracy - bins.confidence).abs().nan_to_num(0.0)
    return (weight * gap).sum(-1)


def _mce(bins: ReliabilityBins) -> torch.Tensor:
    gap = (bins.accuracy - bins.confidence).abs()
    # gaps are >= 0, so an empty bin set to 0 never wins over a non-empty one
    return torch.where(bins.count > 0, gap, torch.zeros_like(gap)).amax(-1)


def _reliability_from_sums(
    edges: torch.Tensor, count: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor
) -> ReliabilityBins:
    return ReliabilityBins(edges, count, _means(count, conf_sum), _means(count, correct_sum))


def reliability_bins(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Count, mean confidence and accuracy per equal-width bin (module docstring: binning convention).

    Args:
        confidences: (N,) floating confidences in [0, 1], e.g. :func:`audit.stats.max_probability`.
        correct: (N,) bool, whether each prediction was right.
        n_bins: number of equal-width bins.

    Returns:
        :class:`ReliabilityBins` on the confidences' device.

    Raises:
        AuditError: on bad shapes or dtypes, N = 0, confidences outside [0, 1] or NaN, or n_bins < 1.

    Example:
        >>> b = reliability_bins(torch.tensor([0.1, 0.3, 0.35]), torch.tensor([True, False, True]), n_bins=2)
        >>> b.count, b.accuracy
        (tensor([3, 0]), tensor([0.6667,    nan], dtype=torch.float64))
    """
    _check_n_bins(n_bins)
    _check_confidences(confidences, correct)
    edges = _edges(n_bins, confidences.device)
    return _reliability_from_sums(edges, *_equal_width_sums(confidences, correct, edges))


def ece(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) with equal-width bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|``; pass top-1 confidences and top-1 correctness for the usual
    top-label ECE (binary or multiclass alike).

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.
        n_bins: number of equal-width bins (module docstring: binning convention).

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: as :func:`reliability_bins`.

    Example:
        >>> ece(torch.tensor([0.9, 0.9, 0.6, 0.6]), torch.tensor([True, False, True, False]), n_bins=10)
        tensor(0.2500, dtype=torch.float64)
    """
    return _ece(reliability_bins(confidences, correct, n_bins))


def mce(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over non-empty equal-width bins.

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.
        n_bins: number of equal-width bins (module docstring: binning convention).

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: as :func:`reliability_bins`.

    Example:
        >>> mce(torch.tensor([0.9, 0.9, 0.6, 0.6]), torch.tensor([True, False, True, False]), n_bins=10)
        tensor(0.4000, dtype=torch.float64)
    """
    return _mce(reliability_bins(confidences, correct, n_bins))


def adaptive_ece(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE with equal-mass bins (Nixon et al. 2019, "adaptive calibration error" with top-label binning).

    The examples are sorted by confidence and the sorted order is cut into ``n_bins`` consecutive groups
    as equal as possible, as ``torch.tensor_split`` does: the first ``N % n_bins`` groups hold one example
    more. ``ECE = sum_g (n_g / N) |acc_g - conf_g|``; with N < n_bins the extra groups are empty and add
    nothing.

    Ties: the sort is stable, so equal confidences keep their input order and a run of ties may be cut
    between two groups by position. The result is deterministic for a given input order, but permuting
    tied examples that straddle a cut can change it.

    netcal's ``ECE(equal_intervals=False)`` cuts at ``np.quantile`` edges instead; the two agree when the
    confidences are distinct and N is a multiple of ``n_bins``, and differ slightly otherwise.

    Args:
        confidences: (N,) floating confidences in [0, 1].
        correct: (N,) bool.
        n_bins: number of equal-mass groups.

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: as :func:`reliability_bins`.

    Example:
        >>> adaptive_ece(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]),
        ...              torch.tensor([False, True, False, True, True]), n_bins=2)
        tensor(0.3000, dtype=torch.float64)
    """
    _check_n_bins(n_bins)
    _check_confidences(confidences, correct)
    sums = _equal_mass_sums(confidences, correct, n_bins)
    # the groups' edges depend on the data and are not part of the result; the slot is left at equal width
    return _ece(_reliability_from_sums(_edges(n_bins, confidences.device), *sums))


def calibration_errors(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> dict:
    """ECE, MCE and adaptive ECE together, checking the inputs and binning once (what a report needs).

    Returns:
        ``{"bins": ReliabilityBins, "ece": ..., "mce": ..., "ece_adaptive": ...}``, each value equal to
        :func:`reliability_bins`, :func:`ece`, :func:`mce` and :func:`adaptive_ece` of the same inputs.

    Example:
        >>> errors = calibration_errors(torch.tensor([0.9, 0.9, 0.6, 0.6]), torch.tensor([True, False, True, False]),
        ...                             n_bins=10)
        >>> round(float(errors["ece"]), 6), round(float(errors["mce"]), 6)
        (0.25, 0.4)
    """
    _check_n_bins(n_bins)
    _check_confidences(confidences, correct)
    edges = _edges(n_bins, confidences.device)
    bins = _reliability_from_sums(edges, *_equal_width_sums(confidences, correct, edges))
    equal_mass = _reliability_from_sums(edges, *_equal_mass_sums(confidences, correct, n_bins))
    return {"bins": bins, "ece": _ece(bins), "mce": _mce(bins), "ece_adaptive": _ece(equal_mass)}


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """Classwise ECE (Kull et al. 2019; Nixon et al. 2019's static calibration error): the mean over
    classes k of the equal-width ECE of ``p_k`` against ``1[y = k]``, over all N examples.

    Args:
        probs: (N, K) floating probabilities in [0, 1].
        labels: (N,) integer class indices in [0, K).
        n_bins: number of equal-width bins per class (module docstring: binning convention).

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: on bad shapes or dtypes, N = 0, probabilities outside [0, 1], a label outside [0, K),
            or n_bins < 1.

    Example:
        >>> classwise_ece(torch.tensor([[0.8, 0.2], [0.8, 0.2]]), torch.tensor([0, 1]), n_bins=10)
        tensor(0.3000, dtype=torch.float64)
    """
    _check_n_bins(n_bins)
    _check_rows(probs, "probs")
    _check_labels(labels, probs)
    n, k = probs.shape
    is_class = labels[:, None] == torch.arange(k, device=labels.device)  # (N, K)
    _check_confidences(probs.reshape(-1), is_class.reshape(-1))
    edges = _edges(n_bins, probs.device)
    count, conf_sum, correct_sum = _equal_width_sums(probs, is_class, edges)  # each (K * n_bins,)
    bins = _reliability_from_sums(edges, count.view(k, n_bins), conf_sum.view(k, n_bins), correct_sum.view(k, n_bins))
    return _ece(bins).mean()


class BinnedCalibration:
    """Streaming ECE/MCE: per-bin sums accumulated over batches, with the binning of :func:`ece`.

    The state is three (n_bins,) tensors (count, confidence sum, correct sum), created on the device of
    the first batch; ``compute`` builds the same :class:`ReliabilityBins` as :func:`reliability_bins`
    on the concatenated batches, so the results equal :func:`ece` and :func:`mce` up to float64
    summation order.

    Example:
        >>> m = BinnedCalibration(n_bins=10)
        >>> m.update(torch.tensor([0.9, 0.9]), torch.tensor([True, False]))
        >>> m.update(torch.tensor([0.6, 0.6]), torch.tensor([True, False]))
        >>> m.compute()["ece"]
        tensor(0.2500, dtype=torch.float64)
    """

    def __init__(self, n_bins: int = 15) -> None:
        _check_n_bins(n_bins)
        self.n_bins = n_bins
        self.count: torch.Tensor | None = None
        self.conf_sum: torch.Tensor | None = None
        self.correct_sum: torch.Tensor | None = None

    def update(self, confidences: torch.Tensor, correct: torch.Tensor) -> None:
        """Add a batch: (N,) floating confidences in [0, 1] and (N,) bool; raises as :func:`ece`."""
        _check_confidences(confidences, correct)
        self._add(*_equal_width_sums(confidences, correct, _edges(self.n_bins, confidences.device)))

    def merge(self, other: BinnedCalibration) -> None:
        """Add another accumulator's state (e.g. from another process); raises on a different n_bins."""
        if not isinstance(other, BinnedCalibration) or other.n_bins != self.n_bins:
            got = other.n_bins if isinstance(other, BinnedCalibration) else type(other).__name__
            raise AuditError(f"expected a BinnedCalibration with n_bins={self.n_bins}, got {got}; merge like with like")
        if other.count is not None:
            self._add(other.count, other.conf_sum, other.correct_sum)

    def compute(self) -> dict[str, torch.Tensor | ReliabilityBins]:
        """``{"ece": 0-dim, "mce": 0-dim, "bins": ReliabilityBins}``; raises if nothing was added."""
        if self.count is None:
            raise AuditError("expected at least one update before compute, got none; call update(confidences, correct)")
        bins = _reliability_from_sums(_edges(self.n_bins, self.count.device), self.count, self.conf_sum, self.correct_sum)
        return {"ece": _ece(bins), "mce": _mce(bins), "bins": bins}

    def _add(self, count: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor) -> None:
        if self.count is None:
            self.count, self.conf_sum, self.correct_sum = count.clone(), conf_sum.clone(), correct_sum.clone()
            return
        if count.device != self.count.device:
            raise AuditError(f"expected inputs on {self.count.device}, got {count.device}; keep one device per accumulator")
        self.count += count
        self.conf_sum += conf_sum
        self.correct_sum += correct_sum
