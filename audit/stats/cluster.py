"""Cluster bootstrap: confidence intervals when observations come in correlated groups.

The tokens of one sequence are not independent (a sequence the model finds hard makes all its tokens
hard), so resampling tokens, as :func:`audit.stats.stats.bootstrap_ci` does with rows, gives intervals
that are too narrow. :func:`cluster_bootstrap_ci` resamples whole groups (sequences) with replacement
(Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007), keeping every token of a drawn group.

It runs in memory and time that do not grow with positions x resamples: each statistic here is a
function of a few sums, so the positions are reduced once to per-group sums ``S`` (G, m), and a chunk of
B resamples is the (B, G) matrix of how often each group was drawn, times ``S``. 10M positions in 100k
groups with 1000 resamples take seconds.

Statistics (``values`` in order):

- ``"mean"`` (x): ``sum x / n`` over the resampled positions;
- ``"pearson"`` (x, y): from the sums of 1, x, y, x^2, y^2, xy (x and y centred on their overall means
  first, in float64, so the one-pass formula does not cancel);
- ``"spearman"`` (x, y): Pearson of the average ranks of x and y, ranked **once over all positions**; a
  resample reuses those ranks instead of re-ranking its own positions. The point estimate is the exact
  Spearman correlation; resamples differ from a re-ranked Spearman by the rank shifts that duplicated
  and dropped groups cause (O(1/G) for G groups), negligible next to the interval's width;
- ``"ece"`` (confidence, correct): top-label ECE ``sum_b |A_b - C_b| / n`` with the equal-width bins of
  :mod:`audit.stats.calibration` (the same bin of each confidence as :func:`audit.stats.ece`).

The interval is the percentile interval of the resampled statistics, as in :func:`bootstrap_ci`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from audit.errors import AuditError
from audit.stats.calibration import _edges, _scaled_bin_index

STATISTICS = ("mean", "pearson", "spearman", "ece")
_N_VALUES = {"mean": 1, "pearson": 2, "spearman": 2, "ece": 2}
# elements of the (B, G) draw matrix materialised at once: bounds memory for any G
MAX_CHUNK_ELEMENTS = 4_000_000
# positions folded into the group sums at once (bounds the float64 temporaries)
_POSITION_CHUNK = 1 << 20


def _check(values: tuple[torch.Tensor, ...], groups: torch.Tensor, statistic: str, n_resamples: int,
           level: float, n_bins: int) -> None:
    if statistic not in STATISTICS:
        raise AuditError(f"expected statistic in {STATISTICS}, got {statistic!r}; pick one of those")
    want = _N_VALUES[statistic]
    if len(values) != want:
        raise AuditError(f"expected {want} value tensor(s) for statistic {statistic!r}, got {len(values)}; "
                         "pass x for 'mean', (x, y) for correlations, (confidence, correct) for 'ece'")
    if not isinstance(groups, torch.Tensor) or groups.ndim != 1 or groups.is_floating_point() \
            or groups.dtype == torch.bool or groups.numel() == 0:
        got = f"{tuple(groups.shape)} {groups.dtype}" if isinstance(groups, torch.Tensor) else type(groups).__name__
        raise AuditError(f"expected groups as a non-empty 1-D integer tensor (one sequence id per position), "
                         f"got {got}; pass the sequence id of each position")
    for i, v in enumerate(values):
        if not isinstance(v, torch.Tensor) or v.shape != groups.shape or v.device != groups.device:
            got = f"{tuple(v.shape)} on {v.device}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise AuditError(f"expected values[{i}] of shape {tuple(groups.shape)} on {groups.device}, got {got}; "
                             "give one value per position")
        # one host sync per column: a NaN would silently turn every resample into NaN
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise AuditError(f"expected finite values[{i}], got NaN or inf; drop unscored positions first")
    if statistic == "ece" and not bool(((values[0] >= 0) & (values[0] <= 1)).all()
                                       & ((values[1] == 0) | (values[1] == 1)).all()):
        raise AuditError("expected confidences in [0, 1] and correct flags in {0, 1} for statistic 'ece', got "
                         "values outside them; pass maxprob and correct columns")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise AuditError(f"expected n_resamples as an int >= 1, got {n_resamples!r}; pass e.g. 1000")
    if not 0.0 < level < 1.0:
        raise AuditError(f"expected level in (0, 1), got {level!r}; pass e.g. 0.95")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise AuditError(f"expected n_bins as an int >= 1, got {n_bins!r}; pass e.g. n_bins=15")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based float64 ranks of a 1-D tensor, ties given the mean of their ranks (scipy's "average").

    Lean in memory for 10M values: one sort and run lengths, no (N,) scans beyond them.

    >>> average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0]))
    tensor([3.5000, 1.0000, 3.5000, 2.0000], dtype=torch.float64)
    """
    values, order = torch.sort(x)
    _, counts = torch.unique_consecutive(values, return_counts=True)
    del values
    ends = counts.cumsum(0).double()
    run_rank = ends - (counts.double() - 1) / 2  # mean of the ranks end - count + 1 .. end
    return torch.empty(x.shape, dtype=torch.float64, device=x.device).scatter_(
        0, order, run_rank.repeat_interleave(counts))


def _group_sums(values: tuple[torch.Tensor, ...], dense: torch.Tensor, n_groups: int, statistic: str,
                n_bins: int) -> torch.Tensor:
    """(G, m) float64 per-group sums of the statistic's per-position terms (column 0: the count), from the
    dense group index (N,). One 1-D index_add_ per term and chunk of positions: no (N, m) matrix."""
    if statistic == "spearman":
        values = (average_ranks(values[0]), average_ranks(values[1]))
    device = dense.device
    # index_add_ of ones, not bincount: bincount reads its max back to the host on CUDA
    ones = torch.ones(1, dtype=torch.float64, device=device).expand(dense.shape[0])
    count = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, dense, ones)
    if statistic == "ece":
        edges = _edges(n_bins, device)
        slots = n_groups * n_bins  # slot g * n_bins + b: bin b of group g
        sums = [torch.zeros(slots, dtype=torch.float64, device=device) for _ in range(2)]
    else:
        # correlations from centred terms: the one-pass formula of statistic_from_sums does not cancel
        centre = [v.double().mean() for v in values] if statistic != "mean" else None
        width = 1 if statistic == "mean" else 5
        sums = [torch.zeros(n_groups, dtype=torch.float64, device=device) for _ in range(width)]
    for start in range(0, dense.shape[0], _POSITION_CHUNK):
        rows = slice(start, start + _POSITION_CHUNK)
        index = dense[rows]
        if statistic == "ece":
            conf = values[0][rows]
            _, bins = _scaled_bin_index(conf, edges)  # (rows,) bin of each confidence
            slot = index * n_bins + bins
            terms = (conf.double(), values[1][rows].double())  # C_b, A_b
            index = slot
        elif statistic == "mean":
            terms = (values[0][rows].double(),)
        else:
            x, y = values[0][rows].double() - centre[0], values[1][rows].double() - centre[1]
            terms = (x, y, x * x, y * y, x * y)
        for total, term in zip(sums, terms):
            total.index_add_(0, index, term)
    if statistic == "ece":
        sums = [total.view(n_groups, n_bins) for total in sums]
        return torch.cat([count[:, None], *sums], 1)
    return torch.stack([count, *sums], 1)


def statistic_from_sums(statistic: str, sums: torch.Tensor, n_bins: int) -> torch.Tensor:
    """The statistic from sums of (B, m) resamples of the per-group sums of :func:`group_sums`: (B,) float64."""
    n = sums[:, 0]
    if statistic == "mean":
        return sums[:, 1] / n
    if statistic in ("pearson", "spearman"):
        sx, sy, sxx, syy, sxy = sums[:, 1:].unbind(1)
        return (n * sxy - sx * sy) / ((n * sxx - sx * sx) * (n * syy - sy * sy)).sqrt()
    conf, hit = sums[:, 1:1 + n_bins], sums[:, 1 + n_bins:]
    return (hit - conf).abs().sum(1) / n


def _dense(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct group ids (increasing) and each position's index among them; without a sort when the
    ids are already non-decreasing (positions of a sequence together, as windows give them)."""
    if bool((groups[1:] >= groups[:-1]).all()):
        ids, dense = torch.unique_consecutive(groups, return_inverse=True)
        return ids, dense
    return torch.unique(groups, return_inverse=True)


def group_sums(
    *values: torch.Tensor, groups: torch.Tensor, statistic: str = "mean", n_bins: int = 15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sufficient statistics of ``statistic`` (see the module docstring).

    Args:
        values: the statistic's (N,) value tensors; groups: (N,) integer group ids (any values).

    Returns:
        ``(sums, ids)``: (G, m) float64 sums, row g for the group ``ids[g]``; ``ids`` (G,) are the distinct
        group ids in increasing order.

    Raises:
        AuditError: as :func:`cluster_bootstrap_ci`.
    """
    _check(values, groups, statistic, 1, 0.5, n_bins)
    ids, dense = _dense(groups)
    return _group_sums(values, dense, ids.numel(), statistic, n_bins), ids


def resample_counts(n_groups: int, n_resamples: int, seed: int, device: torch.device | str = "cpu"
                    ) -> Iterator[torch.Tensor]:
    """The draws of :func:`cluster_bootstrap_ci`: chunks of (B, G) float64 counts of how often each group
    was drawn, each row from ``torch.randint(0, G, (B, G))`` of a generator seeded with ``seed`` on
    ``device``, B = ``max(1, MAX_CHUNK_ELEMENTS // G)`` (the last chunk smaller)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, MAX_CHUNK_ELEMENTS // n_groups)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        index = torch.randint(0, n_groups, (b, n_groups), generator=generator, device=device)  # (B, G)
        index += torch.arange(b, device=device)[:, None] * n_groups  # row r counts into [r G, (r + 1) G)
        index = index.view(-1)
        ones = torch.ones(1, dtype=torch.float64, device=device).expand_as(index)
        # scatter_add_, not bincount: bincount reads its max back to the host on CUDA
        yield torch.zeros(b * n_groups, dtype=torch.float64, device=device).scatter_add_(0, index, ones).view(
            b, n_groups)


def cluster_bootstrap_cis(
    statistics: Mapping[str, tuple[str, Sequence[torch.Tensor]]], *, groups: torch.Tensor,
    n_resamples: int = 1000, seed: int = 0, level: float = 0.95, n_bins: int = 15,
) -> dict[str, tuple[float, float]]:
    """Intervals of several statistics from **one** set of group draws (see :func:`cluster_bootstrap_ci`).

    Every statistic is evaluated on the same resamples, so the draws, the ranking of the groups and the
    (B, G) count matrices are made once for all: an audit's dozen intervals cost about one. Each
    interval equals what :func:`cluster_bootstrap_ci` gives for that statistic with the same seed.

    Args:
        statistics: name -> (statistic, values), e.g. ``{"nll": ("mean", (nll,)),
            "corr_entropy_spearman": ("spearman", (h_t, h_s))}``.
        groups, n_resamples, seed, level, n_bins: as :func:`cluster_bootstrap_ci`.

    Returns:
        name -> ``(low, high)``.

    Raises:
        AuditError: as :func:`cluster_bootstrap_ci`, for any of the statistics; no statistics.

    >>> x = torch.arange(1000.0) % 7
    >>> cis = cluster_bootstrap_cis({"x": ("mean", (x,)), "2x": ("mean", (2 * x,))}, groups=torch.arange(1000) // 10)
    >>> cis["2x"] == (2 * cis["x"][0], 2 * cis["x"][1])
    True
    """
    if not statistics:
        raise AuditError("expected at least one statistic, got none; pass e.g. {'nll': ('mean', (nll,))}")
    prepared = []
    for name, (statistic, values) in statistics.items():
        values = tuple(values)
        _check(values, groups, statistic, n_resamples, level, n_bins)
        prepared.append((name, statistic, values))
    ids, dense = _dense(groups)
    sums = [_group_sums(values, dense, ids.numel(), statistic, n_bins) for _, statistic, values in prepared]
    widths = [s.shape[1] for s in sums]
    stacked = torch.cat(sums, 1)  # (G, sum of m): one matrix product per chunk of draws for all statistics
    del sums
    resampled: list[list[torch.Tensor]] = [[] for _ in prepared]
    for counts in resample_counts(ids.numel(), n_resamples, seed, groups.device):
        for i, part in enumerate((counts @ stacked).split(widths, 1)):
            resampled[i].append(statistic_from_sums(prepared[i][1], part, n_bins))
    alpha = (1.0 - level) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=groups.device)
    out = {}
    for (name, _, _), parts in zip(prepared, resampled):
        low, high = torch.quantile(torch.cat(parts), q).tolist()
        out[name] = (low, high)
    return out


def cluster_bootstrap_ci(
    *values: torch.Tensor, groups: torch.Tensor, statistic: str = "mean", n_resamples: int = 1000,
    seed: int = 0, level: float = 0.95, n_bins: int = 15,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(*values)`` from a bootstrap that resamples whole groups.

    Each resample draws G groups with replacement out of the G distinct ``groups`` (see
    :func:`resample_counts` for the exact draws: deterministic for a seed, device and G) and keeps every
    position of each drawn group; the statistic is evaluated from per-group sums (:func:`group_sums`).
    For several statistics of one audit, :func:`cluster_bootstrap_cis` shares the draws.

    Args:
        values: (N,) tensors: ``x`` for "mean"; ``x, y`` for "pearson" and "spearman"; ``confidence``
            (in [0, 1]) and ``correct`` (0/1, bool or float) for "ece". Finite.
        groups: (N,) integer id of the group (sequence) of each position, same device.
        statistic: one of :data:`STATISTICS`.
        n_resamples: number of resamples; seed: generator seed; level: coverage in (0, 1).
        n_bins: equal-width bins of "ece".

    Returns:
        ``(low, high)`` as Python floats; NaN if a resampled statistic is NaN (e.g. a correlation of a
        resample whose x is constant).

    Raises:
        AuditError: unknown statistic or wrong number of values; shapes or devices that differ; non-finite
            values; empty or non-integer groups; n_resamples < 1; level outside (0, 1); n_bins < 1.

    Example:
        >>> x = torch.arange(1000.0) % 7
        >>> low, high = cluster_bootstrap_ci(x, groups=torch.arange(1000) // 10, n_resamples=200)
        >>> low < float(x.mean()) < high
        True
    """
    return cluster_bootstrap_cis({statistic: (statistic, values)}, groups=groups, n_resamples=n_resamples,
                                 seed=seed, level=level, n_bins=n_bins)[statistic]
