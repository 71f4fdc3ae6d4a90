"""Where a student diverges from its teacher: the distribution of per-token (per-example) KL(teacher || student)
and entropy shift, and their means by teacher confidence, by position in the window and by target token.

Pure functions on (P,) columns, so a token audit's breakdown costs a few sorts and scatter-adds of its columns,
never its logits. The rows with the largest KL come back as indices; the caller turns them into text.
"""

from __future__ import annotations

import math

import torch

from audit import stats

QUANTILES = (0.5, 0.9, 0.99)
SHIFT_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)  # the shift is signed: both tails
TOP_SHARE = 0.01  # kl_top1pct_share: the share of the total KL carried by this fraction of the positions
ENTROPY_BUCKETS = 10  # by_teacher_entropy: deciles of the teacher's entropy
POSITION_BUCKETS = 8  # by_position: equal-width ranges of the position in the window
TOP_TOKENS = 20
TOP_CONTEXTS = 10


def quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> dict[str, float]:
    """``{"q50": ..., ...}``: numpy's default ("linear") quantiles of a 1-D tensor, in float64, at any size
    (``torch.quantile`` refuses inputs above 2^24 elements).

    >>> quantiles(torch.tensor([4.0, 1.0, 3.0, 2.0]), (0.5, 0.75))
    {'q50': 2.5, 'q75': 3.25}
    """
    values = torch.sort(x.double().flatten()).values
    n = values.numel()
    out = {}
    for q in qs:
        position = q * (n - 1)
        lo = math.floor(position)
        hi = min(lo + 1, n - 1)
        out[f"q{round(q * 100):02d}"] = float(values[lo] + (values[hi] - values[lo]) * (position - lo))
    return out


def top_share(x: torch.Tensor, fraction: float = TOP_SHARE) -> float:
    """The share of ``x.sum()`` carried by its largest ``ceil(fraction * n)`` values (x >= 0)."""
    k = max(1, math.ceil(fraction * x.numel()))
    total = float(x.double().sum())
    return float(torch.topk(x.double(), k).values.sum()) / total if total > 0 else 0.0


def _by_bucket(bucket: torch.Tensor, n_buckets: int, kl: torch.Tensor, shift: torch.Tensor) -> tuple[list, list, list]:
    """Per bucket: count, mean KL and mean entropy shift (None for an empty bucket)."""
    count = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket, torch.ones_like(kl, dtype=torch.float64))
    kl_sum = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket, kl.double())
    shift_sum = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket, shift.double())
    counts = [int(c) for c in count.tolist()]
    return (counts, [None if c == 0 else s / c for s, c in zip(kl_sum.tolist(), counts)],
            [None if c == 0 else s / c for s, c in zip(shift_sum.tolist(), counts)])


def divergence_breakdown(kl: torch.Tensor, entropy_shift: torch.Tensor, teacher_entropy: torch.Tensor, *,
                         position: torch.Tensor | None = None, window_length: int | None = None,
                         token: torch.Tensor | None = None) -> dict:
    """The breakdown of one teacher -> student pair over its P positions (tokens, or examples).

    Args:
        kl: (P,) KL(teacher || student) per position, nats.
        entropy_shift: (P,) H(student) - H(teacher) per position, nats.
        teacher_entropy: (P,) the teacher's entropy per position (its deciles make ``by_teacher_entropy``).
        position, window_length: (P,) index in its window (0-based) of each scored position's logits, and the
            window length: ``by_position`` in :data:`POSITION_BUCKETS` equal ranges of [0, window_length).
        token: (P,) int64 target token id per position: ``top_tokens``.

    Returns:
        ``kl_quantiles`` and ``entropy_shift_quantiles`` (``{"q50": x, ...}``), ``kl_top1pct_share``,
        ``by_teacher_entropy`` (per decile of teacher entropy: its range, ``n``, ``kl_mean``,
        ``entropy_shift_mean``; a position is in bucket i when ``edge[i-1] < H <= edge[i]``), ``by_position``
        (per range of positions, the same fields), ``top_tokens`` (the :data:`TOP_TOKENS` tokens with the
        largest total KL: ``token_id``, ``n``, ``kl_total``, ``kl_mean``) and ``top_rows`` (the
        :data:`TOP_CONTEXTS` positions with the largest KL, largest first, for the caller to show as text).
    """
    out: dict = {"kl_quantiles": quantiles(kl, QUANTILES),
                 "entropy_shift_quantiles": quantiles(entropy_shift, SHIFT_QUANTILES),
                 "kl_top1pct_share": top_share(kl)}
    inner = torch.tensor(list(quantiles(teacher_entropy, tuple(i / ENTROPY_BUCKETS for i in range(1, ENTROPY_BUCKETS)))
                              .values()), dtype=torch.float64)
    bucket = torch.searchsorted(inner, teacher_entropy.double().contiguous(), side="left")
    counts, kl_means, shift_means = _by_bucket(bucket, ENTROPY_BUCKETS, kl, entropy_shift)
    edges = [float(teacher_entropy.min()), *inner.tolist(), float(teacher_entropy.max())]
    out["by_teacher_entropy"] = [{"entropy_lo": edges[i], "entropy_hi": edges[i + 1], "n": counts[i],
                                  "kl_mean": kl_means[i], "entropy_shift_mean": shift_means[i]}
                                 for i in range(ENTROPY_BUCKETS)]
    if position is not None and window_length is not None:
        n_buckets = min(POSITION_BUCKETS, window_length)
        bucket = position.long() * n_buckets // window_length
        counts, kl_means, shift_means = _by_bucket(bucket, n_buckets, kl, entropy_shift)
        out["by_position"] = [{"position_lo": i * window_length // n_buckets,
                               "position_hi": (i + 1) * window_length // n_buckets - 1, "n": counts[i],
                               "kl_mean": kl_means[i], "entropy_shift_mean": shift_means[i]} for i in range(n_buckets)]
    if token is not None:
        size = int(token.max()) + 1
        total = torch.zeros(size, dtype=torch.float64).index_add_(0, token.long(), kl.double())
        count = torch.zeros(size, dtype=torch.float64).index_add_(0, token.long(), torch.ones_like(kl, dtype=torch.float64))
        seen = total.masked_fill(count == 0, -math.inf)  # a token never scored is never a top token, even at KL 0
        top = torch.topk(seen, min(TOP_TOKENS, int((count > 0).sum()))).indices.tolist()
        out["top_tokens"] = [{"token_id": t, "n": int(count[t]), "kl_total": float(total[t]),
                              "kl_mean": float(total[t] / count[t])} for t in top]
    out["top_rows"] = torch.topk(kl.double(), min(TOP_CONTEXTS, kl.numel())).indices.tolist()
    return out


def row_details(rows: list[int], kl: torch.Tensor, teacher_entropy: torch.Tensor, student_entropy: torch.Tensor,
                teacher_top1: torch.Tensor, student_top1: torch.Tensor) -> list[dict]:
    """The numbers of each row of ``rows`` (the ``top_rows`` of :func:`divergence_breakdown`): its KL, both
    entropies and both models' top-1 predictions (class or token ids)."""
    return [{"row": r, "kl": float(kl[r]), "teacher_entropy": float(teacher_entropy[r]),
             "student_entropy": float(student_entropy[r]), "teacher_top1": int(teacher_top1[r]),
             "student_top1": int(student_top1[r])} for r in rows]


def example_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict:
    """:func:`divergence_breakdown` of a classifier pair from its (N, K) logits: per-example KL, entropy shift and
    teacher entropy; ``top_contexts`` holds the :func:`row_details` of the examples with the largest KL (the caller
    adds their ids and texts)."""
    log_t = torch.log_softmax(teacher_logits.float(), -1)
    log_s = torch.log_softmax(student_logits.float(), -1)
    kl = stats.kl_divergence(log_t, log_s)
    h_t, h_s = stats.entropy(log_t.exp()), stats.entropy(log_s.exp())
    out = divergence_breakdown(kl, h_s - h_t, h_t)
    out["top_contexts"] = row_details(out.pop("top_rows"), kl, h_t, h_s, log_t.argmax(-1), log_s.argmax(-1))
    return out
