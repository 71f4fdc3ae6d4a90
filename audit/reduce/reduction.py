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

Every quantity is computed in float32 (bf16/fp16 inputs are upcast; float64 inputs are rounded to float32
first, so the backends agree; top-1 and top-k ids are those of the float32 logits). Backends: ``"torch"``
(eager; below), ``"triton"`` (the fused one-pass kernel of :mod:`audit.reduce.kernel`, CUDA or
``TRITON_INTERPRET=1``), ``"auto"`` (triton on CUDA tensors when Triton is importable, torch otherwise). The top-k
overlap is always eager (block maxima, then :func:`torch.topk` over the best blocks).

The eager backend reduces the logits a **tile** at a time: a chunk of positions by a range of the vocabulary, for
all the models together. Each tile's float32 logits are written once into a reused buffer, shifted there by the
tile's row maxima, exponentiated, and multiplied in one batched product with the shifted logits (every entropy
and KL is a difference of those sums; see :func:`_chunk`); the tiles' sums are then combined at each row's
maximum. On a CPU a tile holds :data:`TILE_ELEMENTS` logits per model, so that the tile and its exponentials stay
in a core's L2 cache and every pass after the first is a pass over cached data; elsewhere a tile spans the
vocabulary (:data:`CHUNK_ELEMENTS` logits at a time). The top-1 and top-k ids come from each row's maxima of blocks
of :data:`TOP_BLOCK` entries, taken per tile, and the entries of the few best blocks (:func:`_search`).

Logits come as (P, V) tensors, or as :class:`HeadLogits`: a causal LM's last hidden states of the P positions
and its output layer, not yet multiplied (:class:`audit.run.adapters.CausalLMAdapter` where the model's head
splits from its body), or :class:`KeptRows`: the P scored rows of a model's logits of more positions, not yet
gathered. The eager backend computes each tile of :class:`HeadLogits` by the output layer's product straight into
its buffer (and the few entries the search and the targets need by products of their own), and copies each tile
of kept rows from where they lie, so no (P, V) logits tensor is allocated, copied or row-selected: on a CPU the
output layer writing fresh pages cost as much again as the product itself, and passes over logits out of cache
most of the rest (issue 25, bench/RESULTS.md). The Triton backend and the top-k teacher's columns multiply them out
first (:func:`as_tensor`).
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

# Eager tiles. Off the CPU: logits of all models together per tile, a tile spanning the vocabulary.
CHUNK_ELEMENTS = 1 << 22
# On a CPU: logits per model and tile (512 KiB of float32: two models' tiles and their exponentials fill about a
# core's 2 MiB L2), and at most TILE_ROWS positions per tile, so that the output layer's product reads each of its
# rows for many positions at once (the sizes measured fastest: bench/RESULTS.md)
TILE_ELEMENTS = 1 << 17
TILE_ROWS = 512
TOP_BLOCK = 64  # vocabulary entries per block of the top-1 / top-k search (_search)
# HeadLogits.block_entries: one product over the distinct blocks while there are at most this many per block a row
# asks for (a gathered entry and its dot product cost about as much as 40 logits of a product), else dot products
# of ENTRY_ELEMENTS gathered output-layer weights at a time (512 KiB of float32)
SHARED_BLOCKS = 32
ENTRY_ELEMENTS = 1 << 17
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

    def block(self, rows: slice, columns: slice, out: torch.Tensor) -> torch.Tensor:
        """The logits ``[rows, columns]`` written into ``out`` (float32, any row stride) and returned: by the
        product itself where the model is float32, else by a copy of its product in its own dtype."""
        hidden, weight = self.hidden[rows], self.weight[columns]
        bias = None if self.bias is None else self.bias[columns]
        if hidden.dtype == weight.dtype == out.dtype:
            if bias is None:
                torch.mm(hidden, weight.T, out=out)
            else:
                torch.addmm(bias, hidden, weight.T, out=out)
            return out if self.temperature == 1 else out.div_(self.temperature)
        logits = torch.nn.functional.linear(hidden, weight, bias)
        return out.copy_(logits if self.temperature == 1 else logits / self.temperature)

    def columns(self, rows: slice, ids: torch.Tensor) -> torch.Tensor:
        """(n, len(ids)) float32 logits of rows ``rows`` at the vocabulary entries ``ids`` (1-D): one product with
        those rows of the output layer, rounded as :meth:`block` rounds them."""
        out = torch.empty(self.hidden[rows].shape[0], len(ids), dtype=torch.float32, device=ids.device)
        weight, bias = self.weight[ids], None if self.bias is None else self.bias[ids]
        return dataclasses.replace(self, weight=weight, bias=bias).block(rows, slice(None), out)

    def entries(self, rows: slice, ids: torch.Tensor) -> torch.Tensor:
        """(n, j) float32 logits of the vocabulary entries ``ids`` ((n, j) int64) of rows ``rows``, from the logits
        of every row at every distinct id (:meth:`columns`; at most n^2 j of them, a few rows' worth)."""
        distinct, inverse = torch.unique(ids, return_inverse=True)
        return self.columns(rows, distinct).gather(1, inverse)

    def block_entries(self, rows: slice, blocks: torch.Tensor) -> torch.Tensor:
        """(n, b * TOP_BLOCK) float32 logits of the entries of (n, b) blocks (:func:`_block_ids`) of rows ``rows``.
        Where the rows ask for few distinct blocks (at most :data:`SHARED_BLOCKS` per block a row asks for: the top
        blocks of a language model's positions are mostly the same few), every row's logits of all of them come
        from one product (:meth:`columns`); else each row's from dot products with its blocks' rows of the output
        layer, a few rows at a time (the gathered rows stay in cache), rounded to the model's dtype as its own
        product rounds them."""
        v = self.weight.shape[0]
        distinct, inverse = torch.unique(blocks, return_inverse=True)
        if len(distinct) <= SHARED_BLOCKS * blocks.shape[1]:
            values = self.columns(rows, _block_ids(distinct[None], v)[0]).view(-1, len(distinct), TOP_BLOCK)
            return values.gather(1, inverse[:, :, None].expand(-1, -1, TOP_BLOCK)).flatten(1)
        ids, hidden = _block_ids(blocks, v), self.hidden[rows]
        out = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
        step = max(1, ENTRY_ELEMENTS // max(ids.shape[1] * hidden.shape[1], 1))
        for start in range(0, ids.shape[0], step):
            part = ids[start:start + step]
            weight = self.weight.index_select(0, part.reshape(-1)).view(*part.shape, -1)  # (n, j, H)
            values = torch.bmm(weight.float(), hidden[start:start + step, :, None].float()).squeeze(2)
            if self.bias is not None:
                values += self.bias[part].float()
            if self.dtype != torch.float32:  # the model's product rounds to its dtype, then divides in it
                values = values.to(self.dtype)
            out[start:start + step] = values if self.temperature == 1 else values / self.temperature
        return out

    def materialize(self) -> torch.Tensor:
        """The (P, V) logits as a tensor, in the model's dtype."""
        logits = torch.nn.functional.linear(self.hidden, self.weight, self.bias)
        return logits if self.temperature == 1 else logits / self.temperature


@dataclass(frozen=True)
class KeptRows:
    """Rows ``index`` (P,) of (N, V) ``logits``, not gathered: a model's logits of more positions than are scored
    (its batch's span of positions), read by the eager backend a tile at a time where they lie, so the P scored
    rows are never copied out whole. ``shape``, ``dtype``, ``device`` and ``is_cuda`` are those of the
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

    def block(self, rows: slice, columns: slice, out: torch.Tensor) -> torch.Tensor:
        """The logits ``[rows, columns]`` of the kept rows, copied into ``out`` (float32, any row stride)."""
        return out.copy_(self.logits[self.index[rows], columns])

    def entries(self, rows: slice, ids: torch.Tensor) -> torch.Tensor:
        """(n, j) float32 logits of the vocabulary entries ``ids`` ((n, j) int64) of kept rows ``rows``."""
        return self.logits[self.index[rows][:, None], ids].float()

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


def _block(x: Logits, rows: slice, columns: slice, out: torch.Tensor) -> torch.Tensor:
    """The float32 logits ``[rows, columns]`` of ``x``, written into ``out``."""
    return out.copy_(x[rows, columns]) if isinstance(x, torch.Tensor) else x.block(rows, columns, out)


def _entries(x: Logits, rows: slice, ids: torch.Tensor) -> torch.Tensor:
    """(n, j) float32 logits of the vocabulary entries ``ids`` ((n, j) int64) of ``x``'s rows ``rows``."""
    return x[rows].gather(1, ids).float() if isinstance(x, torch.Tensor) else x.entries(rows, ids)


def _block_entries(x: Logits, rows: slice, blocks: torch.Tensor) -> torch.Tensor:
    """(n, b * TOP_BLOCK) float32 logits of the entries of (n, b) blocks (:func:`_block_ids`) of ``x``'s rows
    ``rows``."""
    if isinstance(x, HeadLogits):
        return x.block_entries(rows, blocks)
    return _entries(x, rows, _block_ids(blocks, x.shape[1]))


def _rows(x: Logits, index: torch.Tensor) -> torch.Tensor:
    """(n, V) float32 logits of ``x``'s rows ``index`` (n,), whole."""
    if isinstance(x, HeadLogits):
        return as_tensor(dataclasses.replace(x, hidden=x.hidden[index])).float()
    if isinstance(x, KeptRows):
        return x.logits[x.index[index]].float()
    return x[index].float()


def _sub_block_maxima(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The maxima of (..., V) ``x`` over blocks of :data:`TOP_BLOCK` entries (the last one short), (..., ceil(V /
    TOP_BLOCK)), written into ``out`` when given."""
    v = x.shape[-1]
    full = v // TOP_BLOCK * TOP_BLOCK
    if out is None:
        out = x.new_empty((*x.shape[:-1], -(-v // TOP_BLOCK)))
    if full:
        torch.amax(x[..., :full].unflatten(-1, (-1, TOP_BLOCK)), -1, out=out[..., : full // TOP_BLOCK])
    if full < v:
        torch.amax(x[..., full:], -1, keepdim=True, out=out[..., full // TOP_BLOCK:])
    return out


def _block_ids(blocks: torch.Tensor, v: int) -> torch.Tensor:
    """The vocabulary ids of (n, b) blocks of :data:`TOP_BLOCK` entries: (n, b * TOP_BLOCK), ids past the last block's
    end clamped to V - 1."""
    ids = (blocks[:, :, None] * TOP_BLOCK + torch.arange(TOP_BLOCK, device=blocks.device)).flatten(1)
    return ids.clamp(max=v - 1) if v % TOP_BLOCK else ids


def _search(block_max: torch.Tensor, entries, k: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of (n, ceil(V / TOP_BLOCK)) ``block_max``: the first index of the row maximum (as argmax), the ids of
    the k largest entries (a set: ties at the k-th place broken as :func:`torch.topk` breaks them), and whether the
    row has fewer than k finite entries (its top-k ids must come from the whole row). ``entries(blocks)`` gives the
    (n, b * TOP_BLOCK) values of the entries of (n, b) blocks (:func:`_block_ids`). A row's k largest entries lie in
    its k blocks of largest maxima, and so does its maximum, unless more than k blocks tie at it: only those k
    blocks (and then the first of the tied) are read."""
    blocks = block_max.topk(k, dim=-1).indices  # (n, k)
    best = block_max.max(-1).indices  # max: the first index of tied maxima, as argmax
    if bool((blocks != best[:, None]).all(-1).any()):  # more than k blocks tie at the maximum: add the first
        blocks = torch.cat([blocks, best[:, None]], 1)
    ids = (blocks[:, :, None] * TOP_BLOCK + torch.arange(TOP_BLOCK, device=blocks.device)).flatten(1)
    values = entries(blocks)
    if v % TOP_BLOCK:  # past the last block's end: never chosen
        values = values.masked_fill(ids >= v, float("-inf"))
    # the row maximum lies in the first block of largest maximum, among these: its first index is the least id
    top1 = torch.where(values == values.max(-1, keepdim=True).values, ids, v).amin(-1)
    chosen = values[:, : k * TOP_BLOCK].topk(k, dim=-1)
    topk = ids.gather(1, chosen.indices)
    return top1, topk, chosen.values[:, -1] == float("-inf")


def _top(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of (P, V) logits: the maximum, its first index, and the ids of the k largest (:func:`_search` over
    the row's block maxima; max and topk over whole rows where V < 4 k :data:`TOP_BLOCK`): on a CPU, max with
    indices and topk over whole rows were most of the reduction's time (bench/RESULTS.md)."""
    if x.shape[1] < 4 * k * TOP_BLOCK:
        top, top1 = x.max(-1)
        return top, top1, x.topk(k, dim=-1).indices
    block_max = _sub_block_maxima(x)
    top1, topk, short = _search(block_max, lambda blocks: x.gather(1, _block_ids(blocks, x.shape[1])), k,
                                x.shape[1])
    if bool(short.any()):
        topk[short] = x[short].topk(k, dim=-1).indices
    return block_max.amax(-1), top1, topk


class _Chunk(NamedTuple):
    """Every model's softmax on one chunk of positions (model 0 the teacher, then the students), as sums over
    the vocabulary of the logits shifted by their row maximum."""

    top: torch.Tensor  # (P, M) float32: the row maximum
    total: torch.Tensor  # (P, M): sum_v exp(x_v - top), >= 1
    log_total: torch.Tensor  # (P, M)
    # (P, M, M): cross[:, i, k] = sum_v exp(x_iv - top_i) (x_kv - top_k). Every entropy and KL is a difference of
    # these; a tile's come from one batched product (two rows at once run several times faster than row-by-row dots)
    cross: torch.Tensor
    block_max: torch.Tensor  # (M, P, ceil(V / TOP_BLOCK)): maxima of blocks of TOP_BLOCK entries, for _search


def _tiling(n: int, v: int, n_models: int, device: torch.device) -> tuple[int, int]:
    """Positions per chunk and vocabulary entries per tile of the eager backend: on a CPU, tiles of
    :data:`TILE_ELEMENTS` logits per model, of at most :data:`TILE_ROWS` positions (chunks of even size) and a
    multiple of :data:`TOP_BLOCK` entries, or the whole vocabulary where it fits; elsewhere the whole vocabulary,
    :data:`CHUNK_ELEMENTS` logits of all the models at a time. On a CPU the tiles do not depend on the number of
    models, so that a model's columns do not depend on the models it is reduced with."""
    if device.type != "cpu":
        return max(1, min(n, CHUNK_ELEMENTS // max(n_models * v, 1))), v
    rows = -(-n // -(-n // TILE_ROWS)) if n else 1
    width = max(TILE_ELEMENTS // rows // TOP_BLOCK * TOP_BLOCK, TOP_BLOCK)
    if width >= v:
        return max(rows, min(n, TILE_ELEMENTS // v)), v
    return rows, width


def _chunk(logits: Sequence[Logits], start: int, stop: int, tile: torch.Tensor, exps: torch.Tensor) -> _Chunk:
    """The softmaxes of rows ``[start, stop)`` of the models' (P, V) ``logits``, one tile of vocabulary at a time.

    ``tile`` and ``exps`` ((M, >= stop - start, W) float32) are reused by every tile: on a CPU they stay in cache,
    so that only the first pass over a tile (the output layer's product, or the read of the logits) leaves it.
    Per tile: every model's float32 logits written into ``tile``, their block maxima, the tile's row maxima ``m``,
    the logits shifted by them in place, their exponentials ``e``, the sums of those, and one batched product of
    those with the shifted logits. The tiles' sums are then shifted to the row maxima ``top``: with each tile's
    ``e_i`` scaled by ``exp(m_i - top_i)``, ``sum_v e_i (x_k - top_k) = sum_v e_i (x_k - m_k) + (m_k - top_k)
    sum_v e_i``; both terms are <= 0, so there is no cancellation.
    """
    p, n_models, v, width = stop - start, len(logits), logits[0].shape[1], tile.shape[-1]
    rows, per_tile = slice(start, stop), width // TOP_BLOCK if width < v else -(-v // TOP_BLOCK)
    n_tiles, device = -(-v // width), tile.device
    block_max = torch.empty(n_tiles, n_models, p, per_tile, device=device)
    maxima = torch.empty(n_tiles, n_models, p, device=device)
    totals = torch.empty(n_tiles, n_models, p, device=device)
    products = torch.empty(n_tiles, p, n_models, n_models, device=device)  # contiguous per tile: bmm's out
    masked = not all(isinstance(x, HeadLogits) for x in logits)  # only logits in memory can hold -inf
    for t, v0 in enumerate(range(0, v, width)):
        v1 = min(v0 + width, v)
        shifted = tile[:, :p, : v1 - v0]  # (M, p, w)
        for m, source in enumerate(logits):
            _block(source, rows, slice(v0, v1), shifted[m])
        if v1 - v0 < per_tile * TOP_BLOCK:  # the last tile is short: its missing blocks are never chosen
            block_max[t].fill_(float("-inf"))
        _sub_block_maxima(shifted, block_max[t, :, :, : -(-(v1 - v0) // TOP_BLOCK)])
        top = torch.amax(block_max[t], -1, out=maxima[t])
        if masked:  # a tile of -inf logits is shifted by a finite number: its exponentials are 0, not NaN
            top.clamp_(min=torch.finfo(torch.float32).min)
        shifted.sub_(top[..., None])
        e = torch.exp(shifted, out=exps[:, :p, : v1 - v0])
        torch.sum(e, -1, out=totals[t])
        torch.bmm(e.transpose(0, 1), shifted.permute(1, 2, 0), out=products[t])  # (p, M, w) @ (p, w, M)
    products = products.permute(0, 2, 3, 1).contiguous()  # (T, M, M, p): the positions innermost, for the loops below
    top = maxima.amax(0)  # (M, p)
    offset = maxima - top  # (T, M, p), <= 0
    scale = offset.exp()
    # per model: the same loop for a model's rows whichever models it is reduced with (a model's maximum probability
    # and so its calibration do not depend on them)
    total = torch.stack([(scale[:, m] * totals[:, m]).sum(0) for m in range(n_models)])  # (M, p)
    cross = (scale[:, :, None] * torch.addcmul(products, offset[:, None], totals[:, :, None])).sum(0)  # (M, M, p)
    block_max = block_max.permute(1, 2, 0, 3).flatten(2)[..., : -(-v // TOP_BLOCK)]  # (M, p, blocks) in order
    total = total.T
    return _Chunk(top.T, total, total.log(), cross.permute(2, 0, 1), block_max)


def _top_ids(x: Logits, rows: slice, block_max: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first index of the maximum of every row ``rows`` of ``x`` and the ids of its k largest entries, from
    the rows' (n, blocks) maxima of blocks (:func:`_search`); whole rows where V < 4 k :data:`TOP_BLOCK`."""
    v = x.shape[1]
    index = torch.arange(rows.start, rows.stop, device=block_max.device)
    if v < 4 * k * TOP_BLOCK:
        whole = _rows(x, index)
        return whole.max(-1).indices, whole.topk(k, dim=-1).indices
    top1, topk, short = _search(block_max, lambda blocks: _block_entries(x, rows, blocks), k, v)
    if bool(short.any()):
        topk[short] = _rows(x, index[short]).topk(k, dim=-1).indices
    return top1, topk


def _exact(logits: Sequence[Logits], index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, M, V) probabilities and log-probabilities of rows ``index`` (n,) from their whole float32 logits, with
    ``0 log 0`` terms to drop by ``nansum``: rows with -inf (masked) logits, where a fast column is 0 * inf (NaN);
    there 0 log 0 = 0, and a > 0 where b = 0 still gives +inf."""
    x = torch.stack([_rows(source, index) for source in logits], 1)
    shifted = x - x.amax(-1, keepdim=True)
    weights = shifted.exp()
    total = weights.sum(-1, keepdim=True)
    return weights / total, shifted - total.log()


def _columns(logits: Sequence[Logits], start: int, chunk: _Chunk, targets: torch.Tensor, k: int,
             ignore_index: int) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Every model's and pair's columns (:data:`MODEL_KEYS`, :data:`PAIR_KEYS`) of one chunk."""
    rows = slice(start, start + len(targets))
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    total, log_total, cross = chunk.total, chunk.log_total, chunk.cross
    # entropy = log total - sum p shifted: two non-negative terms, no cancellation
    entropy = log_total - torch.diagonal(cross, dim1=1, dim2=2) / total  # (p, M)
    # KL(q || p) = sum q (shifted_q - shifted_p) - (log_total_q - log_total_p), and the reverse likewise
    offset = log_total[:, :1] - log_total[:, 1:]
    forward = (cross[:, 0, :1] - cross[:, 0, 1:]) / total[:, :1] - offset
    reverse = (torch.diagonal(cross, dim1=1, dim2=2)[:, 1:] - cross[:, 1:, 0]) / total[:, 1:] + offset
    nan = torch.cat([entropy, forward, reverse], 1).isnan().any(1)
    if bool(nan.any()):
        index = nan.nonzero().squeeze(1)
        p, log_p = _exact(logits, index + start)  # (n, M, V)
        exact_entropy = -(p * log_p).nansum(-1)
        exact_forward = (p[:, :1] * (log_p[:, :1] - log_p[:, 1:])).nansum(-1)
        exact_reverse = (p[:, 1:] * (log_p[:, 1:] - log_p[:, :1])).nansum(-1)
        for fast, exact in ((entropy, exact_entropy), (forward, exact_forward), (reverse, exact_reverse)):
            fast[index] = torch.where(fast[index].isnan(), exact, fast[index])
    nan_column = torch.full_like(targets, float("nan"), dtype=torch.float32)
    models, ids = [], []
    for m, source in enumerate(logits):
        top1, topk = _top_ids(source, rows, chunk.block_max[m], k)
        target = _entries(source, rows, safe[:, None]).squeeze(1)
        models.append({"entropy": entropy[:, m], "maxprob": total[:, m].reciprocal(), "top1": top1,
                       "target_logprob": torch.where(keep, target - chunk.top[:, m] - log_total[:, m], nan_column),
                       "correct": torch.where(keep, (top1 == safe).float(), nan_column)})
        ids.append(topk)
    pairs = [{"kl": forward[:, j], "kl_reverse": reverse[:, j], "topk_overlap": _overlap(ids[0], ids[1 + j])}
             for j in range(len(logits) - 1)]
    return models, pairs


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
    n_models, k = len(logits), min(topk, v)
    rows, width = _tiling(n, v, n_models, teacher.device)
    tile = torch.empty(n_models, rows, width, dtype=torch.float32, device=teacher.device)
    exps = torch.empty_like(tile)
    models: list[list[dict]] = [[] for _ in logits]
    pairs: list[list[dict]] = [[] for _ in students]
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        chunk_models, chunk_pairs = _columns(logits, start, _chunk(logits, start, stop, tile, exps),
                                             targets[start:stop], k, ignore_index)
        for out, part in zip(models + pairs, chunk_models + chunk_pairs):
            out.append(part)

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
