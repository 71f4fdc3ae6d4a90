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
of all the models together are upcast at a time; each model's softmax is kept as its max-shifted logits and
their exponentials, and every entropy and KL of a chunk comes from one batched product of the two),
``"triton"`` (the fused one-pass kernel of
:mod:`audit.reduce.kernel`, CUDA or ``TRITON_INTERPRET=1``), ``"auto"`` (triton on CUDA tensors
when Triton is importable, torch otherwise). The top-k overlap is always eager (block maxima, then
:func:`torch.topk` over the best blocks).

Logits come as (P, V) tensors, or as :class:`HeadLogits`: a causal LM's last hidden states of the P positions
and its output layer, not yet multiplied (:class:`audit.run.adapters.CausalLMAdapter` where the model's head
splits from its body), or :class:`KeptRows`: the P scored rows of a model's logits of more positions, not yet
gathered. The eager backend computes each chunk's logits straight into its float32 buffer (gathers the
chunk's kept rows), so no (P, V) logits tensor is allocated, copied or row-selected: on a CPU the output layer
writing fresh pages cost as much again as the product itself, and the copies 40% of the audit (issue 25). The
Triton backend and the top-k teacher's columns multiply them out first (:func:`as_tensor`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from audit.errors import AuditError
from audit.losses.kernels import _require, resolve_backend
from audit.reduce.topk import topk_tail_kl, topk_teacher_columns

# Logits (of all models together) upcast to float32 at once by the eager backend: 2^22 elements = 16 MiB of
# float32 per half of the buffer, the fastest chunk measured once the output layer writes into it (the token
# audit of bench_lm_audit, 2 models x 49,152: 2^21 / 2^22 / 2^23 / 2^24 took 9.7 / 8.8 / 11.3 / 12.9 s, medians
# of 3 alternated one-thread rounds on the shared 2-core VM, 2026-12-06; before, with copies into the buffer,
# 2^24 was fastest: bench/RESULTS.md)
CHUNK_ELEMENTS = 1 << 22
TOP_BLOCK = 64  # vocabulary entries per block of the top-1 / top-k search (_top)
MODEL_KEYS = ("entropy", "maxprob", "top1", "target_logprob", "correct")
PAIR_KEYS = ("kl", "kl_reverse", "topk_overlap")


@dataclass(frozen=True)
class HeadLogits:
    """(P, V) logits not multiplied out yet: the (P, H) ``hidden`` states of P positions through an output layer
    (``weight`` (V, H), ``bias`` (V,) or None), divided by ``temperature``: ``linear(hidden, weight, bias) /
    temperature``, row for row the logits the model's own head gives those positions.

    ``shape``, ``dtype``, ``device`` and ``is_cuda`` are those of the logits; ``logits / t`` is the same logits
    divided by t again (a temperature-scaled view, nothing is computed)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    temperature: float = 1.0

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.hidden.shape[0], self.weight.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def is_cuda(self) -> bool:
        return self.hidden.is_cuda

    def __truediv__(self, temperature: float) -> HeadLogits:
        return dataclasses.replace(self, temperature=self.temperature * temperature)

    def rows(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of rows ``[start, stop)``; written into ``out`` ((stop - start, V) float32, any row stride)
        when given: in place by the product itself where the model is float32, else by a copy."""
        hidden = self.hidden[start:stop]
        if out is not None and hidden.dtype == self.weight.dtype == out.dtype:
            if self.bias is None:
                torch.mm(hidden, self.weight.T, out=out)
            else:
                torch.addmm(self.bias, hidden, self.weight.T, out=out)
            return out if self.temperature == 1 else out.div_(self.temperature)
        logits = torch.nn.functional.linear(hidden, self.weight, self.bias)
        logits = logits if self.temperature == 1 else logits / self.temperature
        return logits if out is None else out.copy_(logits)

    def materialize(self) -> torch.Tensor:
        """The (P, V) logits as a tensor, in the model's dtype."""
        return self.rows(0, self.hidden.shape[0])


@dataclass(frozen=True)
class KeptRows:
    """Rows ``index`` (P,) of (N, V) ``logits``, not gathered: a model's logits of more positions than are scored
    (its batch's span of positions), read by the eager backend a chunk of rows at a time where they lie, so the
    P scored rows are never copied out whole. ``shape``, ``dtype``, ``device`` and ``is_cuda`` are those of the
    kept rows; ``logits / t`` gathers them, then divides."""

    logits: torch.Tensor
    index: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.index.shape[0], self.logits.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def device(self) -> torch.device:
        return self.logits.device

    @property
    def is_cuda(self) -> bool:
        return self.logits.is_cuda

    def __truediv__(self, temperature: float) -> torch.Tensor:
        return self.materialize() / temperature

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The logits of kept rows ``[start, stop)``, gathered."""
        return self.logits.index_select(0, self.index[start:stop])

    def materialize(self) -> torch.Tensor:
        """The (P, V) kept rows as a tensor."""
        return self.logits.index_select(0, self.index)


Logits = torch.Tensor | HeadLogits | KeptRows


def as_tensor(logits: Logits) -> torch.Tensor:
    """``logits`` as a (P, V) tensor (``materialize()``d; a tensor as it is)."""
    return logits if isinstance(logits, torch.Tensor) else logits.materialize()


@dataclass(frozen=True)
class Reduction:
    """Per-position columns of one batch: ``models[0]`` the teacher, ``models[1 + j]`` student j, and
    ``pairs[j]`` teacher vs student j; each a dict of (P,) tensors keyed by :data:`MODEL_KEYS` /
    :data:`PAIR_KEYS` (see the module docstring for definitions and dtypes)."""

    models: list[dict[str, torch.Tensor]]
    pairs: list[dict[str, torch.Tensor]]


def _is_logits(x) -> bool:
    """A floating (P, V) tensor, :class:`HeadLogits` or :class:`KeptRows` of one."""
    if isinstance(x, KeptRows):
        x = x.logits
    return isinstance(x, HeadLogits) or (isinstance(x, torch.Tensor) and x.ndim == 2 and x.is_floating_point())


def _check(teacher: Logits, students: Sequence[Logits], targets: torch.Tensor, topk: int) -> None:
    if not _is_logits(teacher):
        got = f"{tuple(teacher.shape)} {teacher.dtype}" if isinstance(teacher, torch.Tensor) else type(teacher).__name__
        raise AuditError(f"expected teacher logits as a floating (P, V) tensor, got {got}; flatten (B, L, V) "
                         "to (P, V) after masking")
    if teacher.shape[1] < 1:
        raise AuditError(f"expected at least one class/token in the logits, got shape {tuple(teacher.shape)}")
    for j, s in enumerate(students):
        if not _is_logits(s) or s.shape != teacher.shape or s.device != teacher.device:
            got = f"{tuple(s.shape)} {s.dtype} on {s.device}" if isinstance(s, (torch.Tensor, HeadLogits, KeptRows)) \
                else type(s).__name__
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


def _with_masked_rows(fast: torch.Tensor, exact) -> torch.Tensor:
    """``fast`` (P,), recomputed by ``exact(rows)`` on its NaN rows: rows with -inf (masked) logits, where a
    term is 0 * inf; there 0 log 0 = 0, and a > 0 where b = 0 still gives +inf."""
    rows = fast.isnan()
    if bool(rows.any()):
        fast = fast.clone()
        fast[rows] = exact(rows)
    return fast


class _Softmaxes(NamedTuple):
    """Every model's softmax on one chunk of positions (model 0 the teacher, then the students), kept as
    ``p = weights / total`` and ``log p = shifted - log_total``."""

    shifted: torch.Tensor  # (P, M, V) float32: logits minus their row maximum (<= 0; -inf where masked)
    weights: torch.Tensor  # (P, M, V): exp(shifted)
    total: torch.Tensor  # (P, M): sum of weights, >= 1
    log_total: torch.Tensor  # (P, M)
    top1: list[torch.Tensor]  # per model (P,) int64: the first index of the row maximum, as argmax
    # (P, M, M): cross[:, i, k] = sum_v weights_i shifted_k. Every entropy and KL is a difference of these,
    # from one batched matrix product (two rows at once run several times faster than row-by-row dots)
    cross: torch.Tensor

    def p(self, m: int, rows: torch.Tensor) -> torch.Tensor:
        return self.weights[rows, m] / self.total[rows, m, None]

    def log_p(self, m: int, rows: torch.Tensor) -> torch.Tensor:
        return self.shifted[rows, m] - self.log_total[rows, m, None]


def _top(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of (P, V) logits: the maximum, its first index, and the ids of the k largest (a set: ties at
    the k-th place are broken as :func:`torch.topk` breaks them). One pass takes the maxima of blocks of
    :data:`TOP_BLOCK` entries; the top-1 then searches the best block, the top-k the k best: a row's k
    largest entries lie in the k blocks of largest maxima: on a CPU, max with indices and topk over whole rows
    were most of the reduction's time (bench/RESULTS.md)."""
    p, v = x.shape
    if v < 4 * k * TOP_BLOCK:
        top, top1 = x.max(-1)
        return top, top1, x.topk(k, dim=-1).indices
    full = v // TOP_BLOCK * TOP_BLOCK
    block_max = x[:, :full].view(p, -1, TOP_BLOCK).amax(-1)
    if full < v:
        block_max = torch.cat([block_max, x[:, full:].amax(-1, keepdim=True)], 1)
    offsets = torch.arange(TOP_BLOCK, device=x.device)

    def entries(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (P, n) blocks -> ids, values
        ids = (blocks[:, :, None] * TOP_BLOCK + offsets).flatten(1)
        if full == v:  # every block whole
            return ids, x.gather(1, ids)
        values = x.gather(1, ids.clamp(max=v - 1))
        return ids, values.masked_fill(ids >= v, float("-inf"))  # past the last block's end: never chosen

    top, best = block_max.max(-1)  # max: the first index of tied maxima, as argmax
    ids, values = entries(best[:, None])
    top1 = ids.gather(1, values.max(-1).indices[:, None]).squeeze(1)
    ids, values = entries(block_max.topk(k, dim=-1).indices)
    chosen = values.topk(k, dim=-1)
    topk = ids.gather(1, chosen.indices)
    short = chosen.values[:, -1] == float("-inf")  # rows with fewer than k finite logits: the whole row decides
    if bool(short.any()):
        topk[short] = x[short].topk(k, dim=-1).indices
    return top, top1, topk


def _softmaxes(logits: Sequence[Logits], start: int, stop: int, k: int,
               buffer: torch.Tensor) -> tuple[_Softmaxes, list[torch.Tensor]]:
    """The softmaxes of rows ``[start, stop)`` of the models' (P, V) ``logits``, and each model's top-k ids
    (:func:`_top`), written into ``buffer`` (2, >= stop - start, M, V) float32: reused by every chunk, as fresh
    64 MiB tensors cost a page fault per 4 KiB on a CPU.

    Each model's float32 logits are written into the buffer's first half once and shifted there: a tensor (or
    the chunk's :class:`KeptRows`) by one subtraction that reads it (its maximum taken first, in its own dtype),
    :class:`HeadLogits` by the output layer's product itself, then shifted in place (the maxima read from the
    buffer, every model's rows searched in one :func:`_top` when all are :class:`HeadLogits`); the exponentials
    go to the second half. One write per element and model, then one exp, one sum and one batched product."""
    p, n_models, v = stop - start, len(logits), buffer.shape[-1]
    shifted, weights = buffer[0, :p], buffer[1, :p]
    if all(isinstance(x, HeadLogits) for x in logits):  # every model's logits in the buffer: one search for all
        for m, x in enumerate(logits):
            x.rows(start, stop, out=shifted[:, m])
        top, index, top_ids = _top(shifted.view(p * n_models, v), k)
        shifted.sub_(top.view(p, n_models, 1))
        top1, ids = list(index.view(p, n_models).unbind(1)), list(top_ids.view(p, n_models, k).unbind(1))
    else:
        top1, ids = [], []
        for m, x in enumerate(logits):
            out = shifted[:, m]
            if isinstance(x, HeadLogits):
                top, index, top_ids = _top(x.rows(start, stop, out=out), k)
                out.sub_(top[:, None])
            else:
                x = x.rows(start, stop) if isinstance(x, KeptRows) else x[start:stop]
                top, index, top_ids = _top(x, k)
                if x.dtype == torch.float64:  # rounded to float32 first, then shifted, as the kernel reads it
                    out.copy_(x).sub_(top.float()[:, None])
                else:  # exact upcast, then one float32 subtraction: the same values as copying, then subtracting
                    torch.sub(x, top.float()[:, None], out=out)
            top1.append(index)
            ids.append(top_ids)
    torch.exp(shifted, out=weights)
    total = weights.sum(-1)
    return _Softmaxes(shifted, weights, total, total.log(), top1, torch.bmm(weights, shifted.transpose(1, 2))), ids


def _model_columns(sm: _Softmaxes, m: int, targets: torch.Tensor, ignore_index: int) -> dict[str, torch.Tensor]:
    total, log_total = sm.total[:, m], sm.log_total[:, m]
    # entropy = log total - sum p shifted: two non-negative terms, no cancellation
    entropy = _with_masked_rows(log_total - sm.cross[:, m, m] / total,
                                lambda rows: -(sm.p(m, rows) * sm.log_p(m, rows)).nansum(-1))
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    nan = torch.full_like(entropy, float("nan"))
    target_logprob = torch.where(keep, sm.shifted[:, m].gather(1, safe[:, None]).squeeze(1) - log_total, nan)
    correct = torch.where(keep, (sm.top1[m] == safe).float(), nan)
    return {"entropy": entropy, "maxprob": total.reciprocal(), "top1": sm.top1[m], "target_logprob": target_logprob,
            "correct": correct}


def _kl_columns(sm: _Softmaxes, j: int) -> dict[str, torch.Tensor]:
    """KL between the teacher (model 0, q) and model j (p): ``KL(q||p) = sum q (shifted_q - shifted_p) -
    (log_total_q - log_total_p)``, and the reverse likewise."""
    offset = sm.log_total[:, 0] - sm.log_total[:, j]
    forward = (sm.cross[:, 0, 0] - sm.cross[:, 0, j]) / sm.total[:, 0] - offset
    reverse = (sm.cross[:, j, j] - sm.cross[:, j, 0]) / sm.total[:, j] + offset
    return {"kl": _with_masked_rows(forward, lambda rows: (sm.p(0, rows) * (sm.log_p(0, rows) - sm.log_p(j, rows)))
                                    .nansum(-1)),
            "kl_reverse": _with_masked_rows(reverse, lambda rows: (sm.p(j, rows) * (sm.log_p(j, rows)
                                                                                    - sm.log_p(0, rows))).nansum(-1))}


def topk_overlap(teacher: torch.Tensor, student: torch.Tensor, k: int = 5) -> torch.Tensor:
    """``|topk(teacher) & topk(student)| / k`` per position, float32 (P,), with ``k`` capped at V.

    >>> topk_overlap(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[0.0, 2.0, 1.0, 3.0]]), k=2)
    tensor([0.5000])
    """
    k = min(k, teacher.shape[-1])
    return _overlap(_top(teacher, k)[2], _top(student, k)[2])


def _overlap(ids_t: torch.Tensor, ids_s: torch.Tensor) -> torch.Tensor:
    """The share of (P, k) top-k ids the two rows have in common, float32 (P,)."""
    shared = (ids_t[:, :, None] == ids_s[:, None, :]).any(-1).sum(-1)
    return shared.float() / ids_t.shape[1]


def _eager(teacher: Logits, students: Sequence[Logits], targets: torch.Tensor, topk: int,
           ignore_index: int) -> Reduction:
    logits = [teacher, *students]
    n, v = teacher.shape
    chunk = max(1, CHUNK_ELEMENTS // max(v * len(logits), 1))
    models: list[list[dict]] = [[] for _ in logits]
    pairs: list[list[dict]] = [[] for _ in students]
    k = min(topk, v)
    buffer = torch.empty(2, min(chunk, n), len(logits), v, dtype=torch.float32, device=teacher.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        y = targets[start:stop]
        sm, ids = _softmaxes(logits, start, stop, k, buffer)
        for m in range(len(logits)):
            models[m].append(_model_columns(sm, m, y, ignore_index))
        for j in range(len(students)):
            pairs[j].append({**_kl_columns(sm, 1 + j), "topk_overlap": _overlap(ids[0], ids[1 + j])})
        del sm

    def cat(parts: list[dict], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if not parts:  # P = 0
            return {key: torch.empty(0, dtype=torch.int64 if key == "top1" else torch.float32,
                                     device=teacher.device) for key in keys}
        return {key: torch.cat([part[key] for part in parts]) for key in keys}

    return Reduction([cat(m, MODEL_KEYS) for m in models], [cat(p, PAIR_KEYS) for p in pairs])


def _fused(teacher: torch.Tensor, students: Sequence[torch.Tensor], targets: torch.Tensor, topk: int,
           ignore_index: int) -> Reduction:
    from audit.reduce import kernel  # imports triton, an optional dependency

    teacher, students = as_tensor(teacher), [as_tensor(s) for s in students]
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
    teacher_logits: Logits, student_logits: Sequence[Logits], targets: torch.Tensor, *,
    topk: int = 5, ignore_index: int = -100, backend: str = "auto",
) -> Reduction:
    """Per-position scalars of a teacher and its students on the same P positions.

    Args:
        teacher_logits: (P, V) float logits (fp32, bf16, fp16 or fp64), positions already masked and
            flattened by the caller (for an LM: ``logits[targets != -100]`` of a (B, L, V) batch), or those
            positions' :class:`HeadLogits` or :class:`KeptRows`.
        student_logits: zero or more (P, V) float logits (or :class:`HeadLogits`, :class:`KeptRows`) on the
            same device.
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
    run = _fused if resolve_backend(backend, teacher_logits) == "triton" else _eager
    return run(teacher_logits, students, targets, topk, ignore_index)


def column_names(names: list[str], n_students: int) -> list[str]:
    """Names of the per-position columns: every model's :data:`MODEL_KEYS`, then every pair's :data:`PAIR_KEYS`."""
    return ([f"{m}.{k}" for m in range(len(names)) for k in MODEL_KEYS]
            + [f"pair{j}.{k}" for j in range(n_students) for k in PAIR_KEYS])


def reduce_batches(batches: list) -> Reduction:
    """The reduction of one batch of every model (:class:`audit.run.adapters.Batch`, teacher first, on the same
    positions; logits as tensors, :class:`HeadLogits` or :class:`KeptRows`); a top-k teacher's columns and KLs
    come from its file."""
    teacher, students = batches[0], [b.logits for b in batches[1:]]
    if teacher.topk is None:
        return reduce_logits(teacher.logits, students, teacher.targets)
    students = [as_tensor(s) for s in students]
    ids, logprobs = teacher.topk
    vocab = students[0].shape[1]
    columns = topk_teacher_columns(ids, logprobs, teacher.targets, vocab_size=vocab)
    # the teacher's top ids as logits that rank them first, for the overlap with the student's top 5
    ranked = torch.full_like(students[0][:, :1].expand(-1, vocab), float("-inf")).scatter(1, ids.long(),
                                                                                           logprobs.float())
    pairs = [{**{k: v for k, v in topk_tail_kl(ids, logprobs, s).items() if k in PAIR_KEYS},
              "topk_overlap": topk_overlap(ranked, s, min(5, ids.shape[1]))} for s in students]
    return Reduction([columns, *reduce_logits(students[0], students[1:], teacher.targets).models], pairs)


def reduction_block(reduction: Reduction) -> torch.Tensor:
    """(P, C) float32 CPU columns of one batch, in the order of :func:`_columns_of`."""
    return torch.stack([model[k].float() for model in reduction.models for k in MODEL_KEYS]
                       + [pair[k].float() for pair in reduction.pairs for k in PAIR_KEYS], 1).cpu()
