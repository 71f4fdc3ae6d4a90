"""The per-position reduction: teacher and student logits in, a few float32 scalars per position out.

An audit never keeps a language model's logits: per batch, the teacher and every student run on the same
positions, and :func:`reduce_logits` turns their ``(P, V)`` logits into per-position columns on the same
device. Only those columns leave the device, so memory grows with positions, never with the vocabulary.

A **classifier is the one-position-per-example case**: P = examples, V = classes, targets = labels (or
``ignore_index`` where unlabelled); nothing else changes.

Per model (``Reduction.models[i]``, teacher first), with ``p = softmax(logits)`` and ``y`` the target:

- ``entropy``: ``-sum_v p_v log p_v`` (nats, ``0 log 0 = 0``), float32;
- ``maxprob``: ``max_v p_v``, float32;
- ``top1``: ``argmax_v p_v`` (first index on ties), int64;
- ``target_logprob``: ``log p_y``, float32, NaN where ``y == ignore_index``;
- ``correct``: ``1.0`` if ``top1 == y`` else ``0.0``, float32, NaN where ``y == ignore_index``.

Per pair (``Reduction.pairs[j]``, teacher vs student j), with ``q`` the teacher's and ``p`` the student's
distribution:

- ``kl``: ``KL(q || p) = sum_v q_v (log q_v - log p_v)`` (forward KL, what KD minimises), float32;
- ``kl_reverse``: ``KL(p || q)``, float32;
- ``topk_overlap``: ``|topk(q) & topk(p)| / k`` with ``k = min(topk, V)``, float32 (ties broken by
  :func:`torch.topk`).

Every quantity is computed in float32 (bf16/fp16 inputs are upcast; float64 inputs too, so the backends
agree). Backends: ``"torch"`` (eager, chunked over positions so that at most :data:`CHUNK_ELEMENTS` logits
of one model are upcast at a time), ``"triton"`` (the fused one-pass kernel of
:mod:`audit.losses.kernels.reduce`, CUDA or ``TRITON_INTERPRET=1``), ``"auto"`` (triton on CUDA tensors
when Triton is importable, torch otherwise). The top-k overlap is always eager (:func:`torch.topk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from audit.errors import AuditError

# Logits (of one model) upcast to float32 at once by the eager backend: 2^24 elements = 64 MiB of float32.
CHUNK_ELEMENTS = 1 << 24
MODEL_KEYS = ("entropy", "maxprob", "top1", "target_logprob", "correct")
PAIR_KEYS = ("kl", "kl_reverse", "topk_overlap")


@dataclass(frozen=True)
class Reduction:
    """Per-position columns of one batch: ``models[0]`` the teacher, ``models[1 + j]`` student j, and
    ``pairs[j]`` teacher vs student j; each a dict of (P,) tensors keyed by :data:`MODEL_KEYS` /
    :data:`PAIR_KEYS` (see the module docstring for definitions and dtypes)."""

    models: list[dict[str, torch.Tensor]]
    pairs: list[dict[str, torch.Tensor]]


def _check(teacher: torch.Tensor, students: Sequence[torch.Tensor], targets: torch.Tensor, topk: int) -> None:
    if not isinstance(teacher, torch.Tensor) or teacher.ndim != 2 or not teacher.is_floating_point():
        got = f"{tuple(teacher.shape)} {teacher.dtype}" if isinstance(teacher, torch.Tensor) else type(teacher).__name__
        raise AuditError(f"expected teacher logits as a floating (P, V) tensor, got {got}; flatten (B, L, V) "
                         "to (P, V) after masking")
    if teacher.shape[1] < 1:
        raise AuditError(f"expected at least one class/token in the logits, got shape {tuple(teacher.shape)}")
    for j, s in enumerate(students):
        if not isinstance(s, torch.Tensor) or s.shape != teacher.shape or not s.is_floating_point() \
                or s.device != teacher.device:
            got = f"{tuple(s.shape)} {s.dtype} on {s.device}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise AuditError(f"expected student {j} logits of shape {tuple(teacher.shape)} on {teacher.device}, "
                             f"got {got}; teacher and students must score the same positions over one vocabulary")
    if not isinstance(targets, torch.Tensor) or targets.shape != teacher.shape[:1] or targets.is_floating_point() \
            or targets.dtype == torch.bool or targets.device != teacher.device:
        got = f"{tuple(targets.shape)} {targets.dtype} on {targets.device}" if isinstance(targets, torch.Tensor) \
            else type(targets).__name__
        raise AuditError(f"expected integer targets of shape ({teacher.shape[0]},) on {teacher.device}, got {got}; "
                         "pass one target id (or ignore_index) per position")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise AuditError(f"expected topk as an int >= 1, got {topk!r}; pass e.g. 5")


def _check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    # One host sync, for a clear error instead of a device-side assert in gather.
    kept = targets[targets != ignore_index]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
        raise AuditError(f"expected targets in [0, {vocab}) or ignore_index={ignore_index}, got values in "
                         f"[{int(kept.min())}, {int(kept.max())}]; check the tokenizer or label mapping")


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for (P, V) tensors as a batched matrix product: one pass, no (P, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _with_masked_rows(fast: torch.Tensor, exact) -> torch.Tensor:
    """``fast`` (P,), recomputed by ``exact(rows)`` on its NaN rows: rows with -inf (masked) logits, where a
    term is 0 * inf; there 0 log 0 = 0, and a > 0 where b = 0 still gives +inf."""
    rows = fast.isnan()
    if bool(rows.any()):
        fast = fast.clone()
        fast[rows] = exact(rows)
    return fast


class _Softmax(NamedTuple):
    """One model's softmax of a chunk, kept as ``p = weights / total`` and ``log p = shifted - log_total``."""

    shifted: torch.Tensor  # (P, V) float32: logits minus their row maximum (<= 0; -inf where masked)
    weights: torch.Tensor  # (P, V) exp(shifted)
    total: torch.Tensor  # (P,) sum of weights, >= 1
    log_total: torch.Tensor  # (P,)
    top1: torch.Tensor  # (P,) int64: the first index of the row maximum, as argmax

    def p(self, rows: torch.Tensor) -> torch.Tensor:
        return self.weights[rows] / self.total[rows, None]

    def log_p(self, rows: torch.Tensor) -> torch.Tensor:
        return self.shifted[rows] - self.log_total[rows, None]


def _softmax(logits: torch.Tensor) -> _Softmax:
    top, top1 = logits.max(-1)
    shifted = logits.to(torch.float32, copy=True).sub_(top.float()[:, None])
    weights = shifted.exp()
    total = weights.sum(-1)
    return _Softmax(shifted, weights, total, total.log(), top1)


def _model_columns(sm: _Softmax, targets: torch.Tensor, ignore_index: int) -> dict[str, torch.Tensor]:
    # entropy = log total - sum p shifted: two non-negative terms, no cancellation
    entropy = _with_masked_rows(sm.log_total - _rowdot(sm.weights, sm.shifted) / sm.total,
                                lambda rows: -(sm.p(rows) * sm.log_p(rows)).nansum(-1))
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    nan = torch.full_like(entropy, float("nan"))
    target_logprob = torch.where(keep, sm.shifted.gather(1, safe[:, None]).squeeze(1) - sm.log_total, nan)
    correct = torch.where(keep, (sm.top1 == safe).float(), nan)
    return {"entropy": entropy, "maxprob": sm.total.reciprocal(), "top1": sm.top1, "target_logprob": target_logprob,
            "correct": correct}


def _kl_columns(q: _Softmax, p: _Softmax) -> dict[str, torch.Tensor]:
    # log q - log p = gap - (log_total_q - log_total_p): one (P, V) difference serves both directions, and
    # is exactly 0 where the two models agree
    gap = q.shifted - p.shifted
    offset = q.log_total - p.log_total
    return {"kl": _with_masked_rows(_rowdot(q.weights, gap) / q.total - offset,
                                    lambda rows: (q.p(rows) * (q.log_p(rows) - p.log_p(rows))).nansum(-1)),
            "kl_reverse": _with_masked_rows(offset - _rowdot(p.weights, gap) / p.total,
                                            lambda rows: (p.p(rows) * (p.log_p(rows) - q.log_p(rows))).nansum(-1))}


def topk_overlap(teacher: torch.Tensor, student: torch.Tensor, k: int = 5) -> torch.Tensor:
    """``|topk(teacher) & topk(student)| / k`` per position, float32 (P,), with ``k`` capped at V.

    >>> topk_overlap(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[0.0, 2.0, 1.0, 3.0]]), k=2)
    tensor([0.5000])
    """
    k = min(k, teacher.shape[-1])
    ids_t = teacher.topk(k, dim=-1).indices  # (P, k)
    ids_s = student.topk(k, dim=-1).indices
    shared = (ids_t[:, :, None] == ids_s[:, None, :]).any(-1).sum(-1)  # (P,)
    return shared.float() / k


def _resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise AuditError(f"expected backend 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        from audit.losses import kernels

        return "triton" if tensor.is_cuda and kernels.available() else "torch"
    return backend


def _eager(teacher: torch.Tensor, students: Sequence[torch.Tensor], targets: torch.Tensor, topk: int,
           ignore_index: int) -> Reduction:
    n, v = teacher.shape
    chunk = max(1, CHUNK_ELEMENTS // max(v, 1))
    models: list[list[dict]] = [[] for _ in range(1 + len(students))]
    pairs: list[list[dict]] = [[] for _ in students]
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        y = targets[rows]
        teacher_sm = _softmax(teacher[rows])
        models[0].append(_model_columns(teacher_sm, y, ignore_index))
        for j, s in enumerate(students):
            student_sm = _softmax(s[rows])
            models[1 + j].append(_model_columns(student_sm, y, ignore_index))
            pairs[j].append({**_kl_columns(teacher_sm, student_sm),
                             "topk_overlap": topk_overlap(teacher[rows], s[rows], topk)})
            del student_sm

    def cat(parts: list[dict], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if not parts:  # P = 0
            return {key: torch.empty(0, dtype=torch.int64 if key == "top1" else torch.float32,
                                     device=teacher.device) for key in keys}
        return {key: torch.cat([part[key] for part in parts]) for key in keys}

    return Reduction([cat(m, MODEL_KEYS) for m in models], [cat(p, PAIR_KEYS) for p in pairs])


def _fused(teacher: torch.Tensor, students: Sequence[torch.Tensor], targets: torch.Tensor, topk: int,
           ignore_index: int) -> Reduction:
    from audit.losses.kernels import _require
    from audit.losses.kernels import reduce as kernel

    _require(teacher)
    if not students:  # the kernel needs a pair: pair the teacher with itself, keep its own columns only
        columns = kernel.reduce_pair(teacher, teacher, targets, ignore_index=ignore_index)
        return Reduction([columns[0]], [])
    models, pairs = [], []
    for j, s in enumerate(students):
        t_cols, s_cols, kls = kernel.reduce_pair(teacher, s, targets, ignore_index=ignore_index)
        if j == 0:
            models.append(t_cols)
        models.append(s_cols)
        pairs.append({**kls, "topk_overlap": topk_overlap(teacher, s, topk)})
    return Reduction(models, pairs)


def reduce_logits(
    teacher_logits: torch.Tensor, student_logits: Sequence[torch.Tensor], targets: torch.Tensor, *,
    topk: int = 5, ignore_index: int = -100, backend: str = "auto",
) -> Reduction:
    """Per-position scalars of a teacher and its students on the same P positions.

    Args:
        teacher_logits: (P, V) float logits (fp32, bf16, fp16 or fp64), positions already masked and
            flattened by the caller (for an LM: ``logits[targets != -100]`` of a (B, L, V) batch).
        student_logits: zero or more (P, V) float logits on the same device.
        targets: (P,) int target ids (the next token; the label for a classifier), or ``ignore_index``.
        topk: k of the top-k overlap (capped at V).
        ignore_index: target value of positions without a target (their ``target_logprob`` and
            ``correct`` are NaN; every other column is still computed).
        backend: "auto", "torch" or "triton" (see the module docstring).

    Returns:
        :class:`Reduction` of (P,) tensors on the logits' device.

    Raises:
        AuditError: shapes, dtypes or devices that do not match; targets outside [0, V); topk < 1;
            unknown backend; backend "triton" without Triton or on CPU without ``TRITON_INTERPRET=1``.

    >>> r = reduce_logits(torch.tensor([[2.0, 0.0]]), [torch.tensor([[0.0, 2.0]])], torch.tensor([0]))
    >>> round(float(r.models[0]["maxprob"]), 4), float(r.models[1]["correct"]), float(r.pairs[0]["topk_overlap"])
    (0.8808, 0.0, 1.0)
    """
    students = list(student_logits)
    _check(teacher_logits, students, targets, topk)
    _check_targets(targets, teacher_logits.shape[1], ignore_index)
    run = _fused if _resolve_backend(backend, teacher_logits) == "triton" else _eager
    return run(teacher_logits, students, targets, topk, ignore_index)
