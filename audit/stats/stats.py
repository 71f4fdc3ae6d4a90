"""Correlations and a vectorised percentile bootstrap, for claims such as "student and teacher
confidences are positively correlated" (C2b) with a confidence interval.

``pearson`` and ``spearman`` take (N,) or a batch (B, N) and reduce over the last dim, so the bootstrap
can evaluate a whole chunk of resamples in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from audit.errors import AuditError

# resampled elements (over all samples) materialised at once by bootstrap_ci: bounds its memory for N ~ 1M
MAX_CHUNK_ELEMENTS = 4_000_000


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim not in (1, 2) or not t.is_floating_point():
            desc = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise AuditError(f"expected {name} as a floating (N,) or (B, N) tensor, got {desc}; cast with .float()")
    if x.shape != y.shape or x.device != y.device:
        raise AuditError(f"expected x and y of one shape and device, got {tuple(x.shape)} on {x.device} and "
                         f"{tuple(y.shape)} on {y.device}; pair them up")
    if x.shape[-1] < 2:
        raise AuditError(f"expected at least 2 observations, got {x.shape[-1]}; a correlation needs pairs")


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    # centred two-pass form: accurate in float32, unlike sum(xy) - n mean(x) mean(y)
    return (x * y).sum(-1) / (x.square().sum(-1) * y.square().sum(-1)).sqrt()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim, ties given the mean of their ranks (scipy's "average")."""
    values, order = torch.sort(x, dim=-1)
    n = x.shape[-1]
    position = torch.arange(n, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    # first and last sorted position of each run of equal values, spread over the run
    first = torch.where(starts, position, 0).cummax(-1).values
    last = torch.where(ends, position, n).flip(-1).cummin(-1).values.flip(-1)
    rank = (first + last).to(x.dtype) / 2 + 1
    return torch.empty_like(rank).scatter_(-1, order, rank)


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last dim, in the inputs' dtype (float64 for reference precision).

    Args:
        x: (N,) or (B, N) floating.
        y: same shape and device as ``x``.

    Returns:
        0-dim for (N,) inputs, (B,) for (B, N); NaN where ``x`` or ``y`` is constant, as scipy.

    Raises:
        AuditError: on a non-floating or mismatched input, or N < 2.

    Example:
        >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
        tensor(0.9934)
    """
    _check_xy(x, y)
    return _pearson(x, y)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation: Pearson of the average ranks (ties share the mean of their ranks).

    Args:
        x: (N,) or (B, N) floating, finite.
        y: same shape and device as ``x``.

    Returns:
        0-dim for (N,) inputs, (B,) for (B, N); NaN where ``x`` or ``y`` is constant.

    Raises:
        AuditError: on a non-floating or mismatched input, or N < 2.

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 2.0, 5.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        tensor(0.9487)
    """
    _check_xy(x, y)
    return _pearson(_average_ranks(x), _average_ranks(y))


def bootstrap_ci(
    statistic: Callable[..., torch.Tensor],
    *samples: torch.Tensor,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(*samples)`` (Efron & Tibshirani 1993).

    Example indices are resampled with replacement jointly for all samples (pairs stay pairs), from a
    ``torch.Generator`` on the samples' device seeded with ``seed``: the result is deterministic for a
    seed, device and set of shapes (CPU and CUDA generators give different streams). Resamples are
    evaluated in chunks of at most ``MAX_CHUNK_ELEMENTS`` materialised elements (at least one resample).
    The interval is the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles (linear interpolation) of the
    resampled statistics; a NaN statistic makes the interval NaN.

    Args:
        statistic: vectorised function of the resampled samples, each with a leading resample dim
            ``(B, N[, K])``, returning ``(B,)``; e.g. :func:`pearson`, or ``lambda x: x.mean(-1)``.
        samples: one or more tensors ``(N,)`` or ``(N, K)`` with the same N >= 1 and device.
        n_resamples: number of bootstrap resamples.
        level: coverage of the interval, in (0, 1).
        seed: seed of the generator.

    Returns:
        ``(low, high)`` as Python floats.

    Raises:
        AuditError: on no samples, mismatched N or devices, a sample that is not 1-D or 2-D, n_resamples < 1,
            level outside (0, 1), or a statistic that does not return shape (B,).

    Example:
        >>> x = torch.arange(100.0)
        >>> low, high = bootstrap_ci(lambda b: b.mean(-1), x, n_resamples=200)
        >>> low < 49.5 < high
        True
    """
    if not samples:
        raise AuditError("expected at least one sample, got none; pass e.g. bootstrap_ci(pearson, x, y)")
    n, device = samples[0].shape[0] if samples[0].ndim else 0, samples[0].device
    for s in samples:
        if not isinstance(s, torch.Tensor) or s.ndim not in (1, 2) or s.shape[0] != n or n < 1 or s.device != device:
            desc = f"{tuple(s.shape)} on {s.device}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise AuditError(f"expected samples of shape ({n},) or ({n}, K) on {device} with N >= 1, got {desc}; "
                             "index all samples by the same examples")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise AuditError(f"expected n_resamples as an int >= 1, got {n_resamples!r}; pass e.g. 1000")
    if not 0.0 < level < 1.0:
        raise AuditError(f"expected level in (0, 1), got {level!r}; pass e.g. 0.95")

    row_elements = 1 + sum(s[0].numel() for s in samples)  # the index plus every sample's row
    chunk = max(1, MAX_CHUNK_ELEMENTS // (n * row_elements))
    generator = torch.Generator(device=device).manual_seed(seed)
    stats = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        index = torch.randint(0, n, (b, n), generator=generator, device=device)  # (B, N)
        value = statistic(*(s[index] for s in samples))  # each s[index]: (B, N[, K])
        if not isinstance(value, torch.Tensor) or value.shape != (b,):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise AuditError(f"expected statistic to return shape ({b},), got {got}; reduce over dim -1 only")
        stats.append(value.double())
    alpha = (1.0 - level) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=device)
    low, high = torch.quantile(torch.cat(stats), q).tolist()
    return low, high
