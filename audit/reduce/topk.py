"""Teachers seen only through their top-k log-probabilities (vLLM, an API, TRL's server distillation).

A top-k logits file holds, per scored position, the teacher's k most likely token ids and their
log-probabilities; the rest of the vocabulary is one **tail bucket** of probability
``q_tail = 1 - sum_i q_i``. The KL divergences are then those of the coarse-grained distributions over
the k + 1 outcomes {id_1, ..., id_k, tail}, the student's tail being ``p_tail = 1 - sum_i p_{id_i}``
(computed as a log-sum-exp of its logits outside the top-k ids, so it does not cancel):

    KL_k(q || p) = sum_i q_i (log q_i - log p_i) + q_tail (log q_tail - log p_tail)

The approximation error has a sign and a size (the chain rule of KL, or the log-sum inequality):

    0 <= KL(q || p) - KL_k(q || p) = q_tail * KL(q(. | tail) || p(. | tail))

so the approximation never overstates the divergence (up to the :data:`TAIL_FLOOR` given to a teacher
tail that the stored log-probabilities cannot tell from 0), is exact when the teacher's top-k covers its mass
(``q_tail = 0``) or when teacher and student agree on the shape of the tail, and can miss at most
``q_tail`` times the divergence of the tails. The same holds for the reverse KL with ``p`` and ``q``
exchanged (``p_tail`` then weighs the error). Measured (tests/reduce/test_topk.py, V = 2000, k = 20, a student
near its teacher): a peaked teacher whose tail holds 0.4% of the mass gives a mean forward KL 0.7% low and
a reverse KL 13% low (the student's tail mass is larger, and it weighs the reverse error); a near-uniform
teacher (tail 95%) loses over 80% of the KL: top-k files suit peaked teachers, i.e. LMs, only.

The same coarse-graining gives a training loss (:func:`topk_kd_loss`, ``audit train --teacher-topk``): forward
KL only, whose error the teacher's tail mass bounds; the reverse KL's error is weighed by the student's tail
mass, which training itself moves.

The file format (safetensors, written by :func:`write_topk_logits`):

- ``topk_ids`` (P, k) int32/int64: token ids, each in [0, V);
- ``topk_logprobs`` (P, k) float: log-probabilities of the whole vocabulary (<= 0, finite, summing in probability
  to <= 1; with k < V, a file whose every row sums to 1 within rounding was renormalised over its top k, which
  leaves no tail and makes the KLs no bounds: it is refused);
- ``sequence_ids`` (P,) int64 and ``positions`` (P,) int64: the document and the token position of the
  predicted token (position t: the distribution over token t given tokens < t), the keys that match the
  file to the data's scored positions;
- metadata (strings, optional for an audit, required for training): ``max_length`` and ``stride`` of the windows
  the teacher saw. Windows of any length and stride score each token once, so the keys alone cannot tell
  which context a stored distribution was conditioned on; an audit refuses metadata naming other windows than
  its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.errors import AuditError
from audit.losses import REDUCTIONS, label_smoothed_cross_entropy

KEYS = ("topk_ids", "topk_logprobs", "sequence_ids", "positions")
# how far above 1 the top-k probabilities may sum (rounding of stored fp16/bf16/fp32 log-probabilities)
SUM_TOLERANCE = 1e-3
# the smallest teacher tail mass: about the float32 resolution of a sum of probabilities near 1, below
# which stored log-probabilities cannot tell a tail from none (a tail of 0 would make KL(p||q) infinite)
TAIL_FLOOR = 2.0**-24
WINDOW_METADATA = ("max_length", "stride")  # the windows the teacher saw (metadata strings)


@dataclass(frozen=True)
class TopkLogits:
    """A teacher's top-k log-probabilities at P positions (see the module docstring for shapes), and the file's
    metadata."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    sequence_ids: torch.Tensor
    positions: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.ids.shape[0]


def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k ids (P, k) int64 and float32 log-probabilities (P, k) of (P, V) logits, most likely first.

    >>> ids, lp = topk_from_logits(torch.tensor([[0.0, 2.0, 1.0]]), 2)
    >>> ids.tolist(), [round(v, 4) for v in lp[0].tolist()]
    ([[1, 2]], [-0.4076, -1.4076])
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= logits.shape[-1]:
        raise AuditError(f"expected k in [1, {logits.shape[-1]}], got {k!r}; pick k up to the vocabulary size")
    logprobs, ids = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
    return ids, logprobs


def _log_tail(logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log q_tail = log(1 - sum exp(logprobs)) per row, float32, computed in float64 and floored at
    log :data:`TAIL_FLOOR` (-inf when the top k are the whole vocabulary: there is no tail)."""
    if logprobs.shape[-1] == vocab_size:
        return torch.full(logprobs.shape[:-1], float("-inf"), device=logprobs.device)
    log_mass = torch.logsumexp(logprobs.double(), -1).clamp(max=0.0)
    tail = -torch.expm1(log_mass)  # 1 - e^a without cancelling for a near 0
    return tail.clamp(min=TAIL_FLOOR).log().float()


def _tail_kl(log_a: torch.Tensor, log_a_tail: torch.Tensor, log_b: torch.Tensor, log_b_tail: torch.Tensor
             ) -> torch.Tensor:
    """KL over k + 1 outcomes from (P, k) log-probabilities and (P,) log tails; 0 log 0 = 0."""
    a, a_tail = log_a.exp(), log_a_tail.exp()
    body = torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)
    return body + torch.where(a_tail > 0, a_tail * (log_a_tail - log_b_tail), torch.zeros_like(a_tail))


def _check_pair(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, student_logits: torch.Tensor) -> None:
    if topk_ids.ndim != 2 or topk_logprobs.shape != topk_ids.shape or student_logits.ndim != 2 \
            or student_logits.shape[0] != topk_ids.shape[0] or topk_ids.shape[1] > student_logits.shape[1] \
            or len({topk_ids.device, topk_logprobs.device, student_logits.device}) != 1:
        raise AuditError(f"expected topk_ids and topk_logprobs (P, k) and student logits (P, V >= k) on one device, "
                         f"got {tuple(topk_ids.shape)}, {tuple(topk_logprobs.shape)} and "
                         f"{tuple(student_logits.shape)}; match the top-k file to the scored positions")


def _student_buckets(topk_ids: torch.Tensor, student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's (P, k) log-probabilities of the teacher's top-k ids and (P,) log tail mass off them, float32
    (the tail a log-sum-exp of the other logits, so it does not cancel; -inf when k = V)."""
    log_p_all = torch.log_softmax(student_logits.float(), -1)  # (P, V)
    ids = topk_ids.long()
    log_p = log_p_all.gather(1, ids)  # (P, k)
    return log_p, torch.logsumexp(log_p_all.scatter(1, ids, float("-inf")), -1)


def topk_tail_kl(
    topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, student_logits: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Tail-bucket KL(teacher || student) and KL(student || teacher) per position (module docstring).

    Args:
        topk_ids: (P, k) int token ids of the teacher's top k, distinct per row, in [0, V).
        topk_logprobs: (P, k) float teacher log-probabilities of those ids.
        student_logits: (P, V) float student logits (math in float32).

    Returns:
        ``{"kl": (P,), "kl_reverse": (P,), "teacher_tail": (P,)}`` float32; ``teacher_tail`` is q_tail.
        Both KLs are lower bounds of the full-vocabulary KLs.

    Raises:
        AuditError: shapes or devices that do not match.

    >>> s = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    >>> ids, lp = topk_from_logits(s, 2)
    >>> abs(float(topk_tail_kl(ids, lp, s)["kl"])) < 1e-6  # the student is the teacher
    True
    """
    _check_pair(topk_ids, topk_logprobs, student_logits)
    log_p, log_p_tail = _student_buckets(topk_ids, student_logits)
    log_q = topk_logprobs.float()
    log_q_tail = _log_tail(log_q, student_logits.shape[1])
    return {"kl": _tail_kl(log_q, log_q_tail, log_p, log_p_tail),
            "kl_reverse": _tail_kl(log_p, log_p_tail, log_q, log_q_tail),
            "teacher_tail": log_q_tail.exp()}


def topk_kd_loss(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
    labels: torch.Tensor | None = None, *, kd_weight: float = 1.0, ignore_index: int = -100,
    reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """``(1-w) CE(s, y) + w KL_k(q || p)``: forward-KL distillation from a teacher's top k with one tail bucket.

    ``KL_k`` is the tail-bucket forward KL of the module docstring: the student is asked to give each top-k id
    the teacher's probability and to leave the teacher's tail mass ``q_tail`` outside them, the shape of its tail
    left to the CE term (bucketing, not spreading ``q_tail`` evenly over the V - k other ids, which would teach
    a flat tail no LM teacher has). It is the full forward KL when k = V, and below it by
    ``q_tail * KL(q(. | tail) || p(. | tail))`` otherwise. At temperature 1 only: the file holds the teacher's
    log-probabilities, and re-tempering them needs the tail's unseen shape. The soft term is eager torch on every
    device (gather, scatter and log-sum-exp over a (P, V) float32 copy); the CE term goes through
    :func:`audit.losses.label_smoothed_cross_entropy` (fused on CUDA).

    Args:
        student_logits: (P, V) float student logits (any float dtype; math in float32); the gradient flows here.
        topk_ids, topk_logprobs: (P, k) as in :func:`topk_tail_kl`.
        labels: (P,) int next tokens or ``ignore_index``; ``None`` for the pure soft loss over every row.
        kd_weight: w in [0, 1]. reduction: "mean" over kept rows (0 if none), "sum", or "none" ((P,), 0 for
            ignored rows). backend: that of the CE term (:mod:`audit.losses`).

    Returns:
        a float32 scalar, or (P,) for "none".

    Raises:
        AuditError: shapes or devices that do not match, w outside [0, 1], an unknown reduction, labels out of
            range.

    >>> s = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    >>> ids, lp = topk_from_logits(s, 2)
    >>> abs(float(topk_kd_loss(s, ids, lp))) < 1e-6  # the student is the teacher
    True
    """
    _check_pair(topk_ids, topk_logprobs, student_logits)
    if not 0.0 <= kd_weight <= 1.0:
        raise AuditError(f"expected kd_weight in [0, 1], got {kd_weight}")
    if reduction not in REDUCTIONS:
        raise AuditError(f"expected reduction in {REDUCTIONS}, got {reduction!r}")
    log_p, log_p_tail = _student_buckets(topk_ids, student_logits)
    log_q = topk_logprobs.detach().float()
    rows = _tail_kl(log_q, _log_tail(log_q, student_logits.shape[1]), log_p, log_p_tail)  # (P,)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if labels is not None:
        ce = label_smoothed_cross_entropy(student_logits, labels, ignore_index=ignore_index, reduction="none",
                                          backend=backend).float()
        rows, keep = (1.0 - kd_weight) * ce + kd_weight * rows, labels != ignore_index
    rows = torch.where(keep, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / keep.sum().clamp(min=1)


def topk_teacher_columns(
    topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """The teacher's per-position columns of :mod:`audit.reduce.reduction` (``MODEL_KEYS``) from its top k alone.

    Exact: ``maxprob``, ``top1`` (the most likely stored id; first of ties), ``correct``. Approximate:
    ``entropy`` is that of the k + 1 outcomes {ids, tail}, a lower bound of the full entropy (the tail's
    own spread is unseen); ``target_logprob`` is exact where the target is among the top k and NaN where
    it is not (its probability is only known to be at most q_tail), and NaN where ``targets`` is
    ``ignore_index``; count the NaNs before averaging an NLL.

    Args:
        topk_ids, topk_logprobs: (P, k) as in :func:`topk_tail_kl`; targets: (P,) int; vocab_size: V.

    Returns:
        dict of (P,) tensors: entropy, maxprob, target_logprob, correct (float32), top1 (int64).

    >>> cols = topk_teacher_columns(torch.tensor([[2, 0]]), torch.tensor([[-0.1, -3.0]]), torch.tensor([0]),
    ...                             vocab_size=4)
    >>> int(cols["top1"]), float(cols["correct"]), round(float(cols["target_logprob"]), 2)
    (2, 0.0, -3.0)
    """
    log_q = topk_logprobs.float()
    log_tail = _log_tail(log_q, vocab_size)
    q, tail = log_q.exp(), log_tail.exp()
    entropy = -torch.where(q > 0, q * log_q, torch.zeros_like(q)).sum(-1) \
        - torch.where(tail > 0, tail * log_tail, torch.zeros_like(tail))
    best = log_q.argmax(-1, keepdim=True)  # (P, 1)
    top1 = topk_ids.long().gather(1, best).squeeze(1)
    keep = targets != ignore_index
    hit = topk_ids.long() == targets.long()[:, None]  # (P, k): where the target sits in the top k
    nan = torch.full_like(tail, float("nan"))
    target_logprob = torch.where(keep & hit.any(1), torch.where(hit, log_q, 0.0).sum(1), nan)
    correct = torch.where(keep, (top1 == targets).float(), nan)
    return {"entropy": entropy, "maxprob": log_q.gather(1, best).squeeze(1).exp(), "top1": top1,
            "target_logprob": target_logprob, "correct": correct}


def _check_file(tensors: dict[str, torch.Tensor], path: Path, vocab_size: int | None,
                sequence_ids: torch.Tensor | None, positions: torch.Tensor | None) -> None:
    missing = [key for key in KEYS if key not in tensors]
    if missing:
        raise AuditError(f"expected tensors {', '.join(KEYS)} in {path}, got {sorted(tensors)}; "
                         "write the file with audit.reduce.topk.write_topk_logits")
    ids, logprobs = tensors["topk_ids"], tensors["topk_logprobs"]
    if ids.ndim != 2 or ids.is_floating_point() or logprobs.shape != ids.shape or not logprobs.is_floating_point():
        raise AuditError(f"expected integer topk_ids and float topk_logprobs of one shape (P, k) in {path}, got "
                         f"{tuple(ids.shape)} {ids.dtype} and {tuple(logprobs.shape)} {logprobs.dtype}; "
                         "store one row of k per scored position")
    for key in ("sequence_ids", "positions"):
        t = tensors[key]
        if t.shape != ids.shape[:1] or t.is_floating_point():
            raise AuditError(f"expected integer {key} of shape ({ids.shape[0]},) in {path}, got "
                             f"{tuple(t.shape)} {t.dtype}; store one per scored position")
    if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        where = int(((ids < 0) | (ids >= (vocab_size or 1 << 62))).any(1).nonzero()[0])
        bound = f"in [0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise AuditError(f"expected token ids {bound} in {path}, got {ids[where].tolist()} at row {where}; "
                         "the file was written with another tokenizer or vocabulary")
    bad = ~torch.isfinite(logprobs.float()) | (logprobs.float() > 0)
    if bool(bad.any()):
        where = int(bad.any(1).nonzero()[0])
        raise AuditError(f"expected finite log-probabilities <= 0 in {path}, got {logprobs[where].tolist()} at row "
                         f"{where}; store log-softmax values (a -inf is not allowed: leave that id out)")
    total = torch.logsumexp(logprobs.double(), -1).exp()
    _check_tail(logprobs, total, path, vocab_size)
    if bool((total > 1 + SUM_TOLERANCE).any()):
        where = int((total > 1 + SUM_TOLERANCE).nonzero()[0])
        raise AuditError(f"expected top-k probabilities summing to <= 1 in {path}, got {float(total[where]):.4f} at "
                         f"row {where}; store log-softmax over the whole vocabulary, not over the top k")
    if bool((ids.sort(1).values.diff(1) == 0).any()):
        raise AuditError(f"expected distinct token ids in each row of {path}, got a repeated id; "
                         "store each of the top k once")
    for key, expected in (("sequence_ids", sequence_ids), ("positions", positions)):
        if expected is None:
            continue
        got = tensors[key]
        if got.shape != expected.shape or not torch.equal(got.long(), expected.long().cpu()):
            n = min(len(got), len(expected))
            diff = (got[:n].long() != expected[:n].long().cpu()).nonzero()
            first = f"first difference at row {int(diff[0])}" if len(diff) else "a different count"
            raise AuditError(f"expected {len(expected)} {key} matching the data's scored positions in {path}, got "
                             f"{len(got)} ({first}); write the file from the same data, max_length and stride")


def _rounding(logprobs: torch.Tensor) -> torch.Tensor:
    """(P,) how far from its true value a row's top-k mass can be read, from the rounding of its stored
    log-probabilities: sum_i q_i (1 + |log q_i|) times the storage dtype's epsilon (a relative rounding of each
    log-probability moves q_i by q_i |log q_i| eps), and never below :data:`SUM_TOLERANCE`."""
    q = logprobs.double().exp()
    eps = torch.finfo(logprobs.dtype).eps
    return (eps * (q * (1 + logprobs.double().abs())).sum(-1)).clamp(min=SUM_TOLERANCE)


def _check_tail(logprobs: torch.Tensor, total: torch.Tensor, path: Path, vocab_size: int | None) -> None:
    """Refuse a file whose every row's top-k mass is 1 within rounding while k < V: log-probabilities renormalised
    over the top k (log_softmax of the top-k logits), which leave no tail bucket. A teacher's real tail is then
    unknown, and the tail-bucket KLs are no lower bounds (the reverse KL weighs the student's tail against a teacher
    tail of :data:`TAIL_FLOOR`). One confident row may hold all its mass in its top k; every row of a file does not.
    """
    k = logprobs.shape[1]
    if vocab_size is None or k >= vocab_size or logprobs.shape[0] == 0:
        return
    if bool(((total - 1).abs() <= _rounding(logprobs)).all()):
        raise AuditError(f"expected the teacher's log-probabilities over its whole vocabulary in {path} (the top {k} "
                         f"of {vocab_size} ids summing below 1, the rest its tail), got every row summing to 1 within "
                         f"rounding (smallest {float(total.min()):.6f}): log-probabilities renormalised over the top k, "
                         "whose KLs are no lower bounds; store the top k of log_softmax over all "
                         f"{vocab_size} logits (audit.reduce.topk.topk_from_logits), or all {vocab_size} ids")


def _check_windows(metadata: dict[str, str], path: Path, windows: dict | None) -> None:
    """Refuse window metadata (:data:`WINDOW_METADATA`) other than the audit's; absent metadata passes (optional
    for an audit)."""
    if windows is None:
        return
    expected = {key: str(windows[key]) for key in WINDOW_METADATA}
    got = {key: metadata.get(key, expected[key]) for key in WINDOW_METADATA}
    if got != expected:
        raise AuditError(f"expected a top-k file of windows with max_length {expected['max_length']} and stride "
                         f"{expected['stride']} (the audit's), got max_length {got['max_length']} and stride "
                         f"{got['stride']} in the metadata of {path}; pass --max-length {got['max_length']} --stride "
                         f"{got['stride']} to audit it with the windows its teacher saw, or write it again from "
                         f"windows of {expected['max_length']}/{expected['stride']}")


def read_topk_logits(
    path: str | Path, *, vocab_size: int | None = None, sequence_ids: torch.Tensor | None = None,
    positions: torch.Tensor | None = None, windows: dict | None = None,
) -> TopkLogits:
    """Read and validate a top-k logits file (format in the module docstring); tensors on CPU.

    Args:
        path: the safetensors file.
        vocab_size: the student's vocabulary size V; every id must be < V, and with k < V the rows must leave a
            tail (a file whose every row sums to 1 within rounding was renormalised over its top k).
        sequence_ids, positions: (P,) the data's scored positions (e.g. from
            :class:`audit.load.data.text.TokenWindows`); the file must hold exactly these, in this order.
        windows: the audit's windows (``TokenWindows.info``: ``max_length``, ``stride``); the file's window
            metadata, where it has some, must name the same.

    Raises:
        AuditError: missing file or tensors; wrong shapes or dtypes; ids outside [0, V); NaN, inf or
            positive log-probabilities; top-k probabilities summing above 1, or every row summing to 1 with
            k < V; repeated ids in a row; window metadata other than ``windows``; sequence ids or positions
            that do not match the data.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AuditError(f"expected a top-k logits file at {path}, got no such file; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise AuditError(f"expected a safetensors file at {path}, got one that does not parse ({e}); "
                         "write it with audit.reduce.topk.write_topk_logits") from e
    _check_windows(metadata, path, windows)
    _check_file(tensors, path, vocab_size, sequence_ids, positions)
    return TopkLogits(tensors["topk_ids"], tensors["topk_logprobs"], tensors["sequence_ids"], tensors["positions"],
                      metadata)


def write_topk_logits(
    path: str | Path, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, sequence_ids: torch.Tensor,
    positions: torch.Tensor, *, metadata: dict[str, str] | None = None,
) -> Path:
    """Write a top-k logits file atomically (format in the module docstring); returns its path.

    Raises:
        AuditError: the tensors fail the checks of :func:`read_topk_logits` (without vocabulary or data).
    """
    from safetensors.torch import save_file

    tensors = {"topk_ids": topk_ids.detach().cpu().contiguous(),
               "topk_logprobs": topk_logprobs.detach().cpu().contiguous(),
               "sequence_ids": sequence_ids.detach().cpu().long().contiguous(),
               "positions": positions.detach().cpu().long().contiguous()}
    _check_file(tensors, Path(path), None, None, None)
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
