"""Triton kernels: the loss and its gradient w.r.t. the student logits in one launch.

One forward kernel serves both losses (``HAS_TEACHER`` / ``HAS_LABELS`` are compile-time switches):

- label smoothing: ``HAS_LABELS``, no teacher;
- KD: ``HAS_TEACHER``, with labels (``(1-w) CE_LS + w T^2 KL``) or without (pure ``T^2 KL``).

Per row, with raw maxima ``M_s = max s``, ``M_t = max t`` and ``d1 = sum exp(s - M_s)``,
``D_s = sum exp((s - M_s)/T)``, ``D_t = sum exp((t - M_t)/T)`` (pass 1, online over column blocks):

- ``CE_LS = (1-a)(M_s - s_y + log d1) + a/K (n log d1 - sum_fin (s_j - M_s))``, the sum and ``n`` over the
  finite logits (a -inf masked class carries no smoothing mass, as in the torch reference);
- ``KL(softmax(t/T) || softmax(s/T)) = sum_j p_j phi(delta_j)`` with ``p = softmax(s/T)``,
  ``delta = log q - log p`` and ``phi(x) = x e^x - e^x + 1 >= 0`` (pass 2): every term is second order in
  ``delta``, so a student close to its teacher keeps its (tiny) loss, which ``sum q (log q - log p)`` in
  fp32 loses entirely;
- gradient ``(1-a)(p - e_y) + a/K (n p - fin)`` (times ``1-w`` in KD) ``+ w T (softmax(s/T) - softmax(t/T))``.

``DIVERGENCE`` (compile-time) picks the soft term; with ``p = softmax(s/T)``, ``q = softmax(t/T)``:

- 0, forward KL ``KL(q || p)``, as above;
- 1, reverse KL ``R = KL(p || q) = sum_j q_j phi(log p_j - log q_j)``; gradient ``w T p (log p - log q - R)``;
- 2, generalised JSD (0 < beta < 1), ``m = beta q + (1-beta) p``,
  ``J = beta KL(q || m) + (1-beta) KL(p || m)`` with ``KL(a || m) = sum_j m_j phi(log a_j - log m_j)``;
  ``dJ/dp_j = (1-beta) log(p_j / m_j)``, so the gradient is ``w T (1-beta) p (u - KL(p || m))`` with
  ``u = log(p/m) = -log1p(beta expm1(log q - log p))`` (no cancellation when p and q are close).

Both need the row's divergence before any gradient element: in registers (``SINGLE_PASS``) it is a
reduction between the two uses; in the looped schedule it costs one extra read of the row (pass 1b).

Differences are taken of raw logits (``s - M_s``, ``t - M_t``) before any division by T, so a common
offset of 1e4 loses nothing. ``p_y - 1`` is ``-sum_{j != y} p_j``: ``d1`` is accumulated without the true
class so that the true-class gradient of a confident row does not cancel.

Two schedules, picked by :func:`config` from K:

- ``SINGLE_PASS`` (padded K up to 16384 for LS, 8192 for KD): the whole row sits in registers; it is read
  once and the gradient written from the same registers. For padded K <= 1024 a program takes
  ``BLOCK_ROWS = 2048 // BLOCK_K`` rows as a 2-D ``[BLOCK_ROWS, BLOCK_K]`` tile (classification heads:
  few classes, millions of rows); above, one row per program.
- looped (larger vocabularies): one row per program; pass 1 runs an online softmax over column blocks,
  pass 2 re-reads the row (from L2) for the gradient and the KL sum.

Block sizes and warp counts are first guesses, not yet tuned on a GPU.

All offsets are int64 (the program id is cast before multiplying by a stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Padded K up to which several rows share a program (2-D tile of ROW_TILE elements).
MANY_ROWS_MAX_K = 1024
ROW_TILE = 2048
# Padded K up to which a whole row is held in registers; per input tensor, so KD (two inputs) gets half.
SINGLE_PASS_MAX_K = 16384
# The soft terms of KD, in the order of the kernel's DIVERGENCE switch.
DIVERGENCES = ("forward-kl", "reverse-kl", "jsd")


@dataclass(frozen=True)
class Config:
    """Launch schedule for an (N, K) problem."""

    block_rows: int
    block_k: int
    single_pass: bool
    num_warps: int


def config(num_classes: int, num_inputs: int) -> Config:
    """Pick the schedule from K (``num_inputs``: 1 for LS, 2 for KD).

    >>> config(4, 2)
    Config(block_rows=512, block_k=4, single_pass=True, num_warps=4)
    >>> config(32000, 1)
    Config(block_rows=1, block_k=16384, single_pass=False, num_warps=32)
    """
    block_k = max(triton.next_power_of_2(num_classes), 2)
    if block_k <= MANY_ROWS_MAX_K:
        return Config(ROW_TILE // block_k, block_k, True, 4)
    cap = SINGLE_PASS_MAX_K // num_inputs
    single = block_k <= cap
    block_k = min(block_k, cap)
    return Config(1, block_k, single, min(32, max(4, block_k // 512)))


@triton.jit
def _load_block(s_row, t_row, cols, keep, K, HAS_TEACHER: tl.constexpr):
    """Student and teacher logits of columns ``cols`` of a block of rows, fp32; -inf where masked (ignored
    rows, columns past K). Without a teacher ``t`` is ``s`` (never used)."""
    mask = keep[:, None] & (cols < K)[None, :]
    s = tl.load(s_row + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    t = s
    if HAS_TEACHER:
        t = tl.load(t_row + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    return s, t


@triton.jit
def _update(s, t, cols, y, m_s, rest, n_fin, sum_fin, d_s, m_t, d_t, inv_t,
            HAS_TEACHER: tl.constexpr, HAS_LABELS: tl.constexpr):
    """Fold one [BLOCK_ROWS, BLOCK_K] block of fp32 logits (-inf where masked) into the running row stats."""
    m_new = tl.maximum(m_s, tl.max(s, axis=1))
    # A row that is all -inf so far keeps a shift of 0, so exp() sees -inf, never -inf - -inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    shift = s - m_safe[:, None]
    if HAS_LABELS:
        not_y = cols[None, :] != y[:, None]
        rest = rest * tl.exp(m_s - m_safe) + tl.sum(tl.where(not_y, tl.exp(shift), 0.0), axis=1)
        fin = s > float("-inf")
        # sum_fin holds sum (s_j - M_s) over finite s_j; re-centre it when the max grows.
        m_old = tl.where(n_fin > 0, m_s, m_safe)
        sum_fin = sum_fin + n_fin * (m_old - m_safe) + tl.sum(tl.where(fin, shift, 0.0), axis=1)
        n_fin = n_fin + tl.sum(fin.to(tl.float32), axis=1)
    if HAS_TEACHER:
        d_s = d_s * tl.exp((m_s - m_safe) * inv_t) + tl.sum(tl.exp(shift * inv_t), axis=1)
        mt_new = tl.maximum(m_t, tl.max(t, axis=1))
        mt_safe = tl.where(mt_new == float("-inf"), 0.0, mt_new)
        d_t = d_t * tl.exp((m_t - mt_safe) * inv_t) + tl.sum(tl.exp((t - mt_safe[:, None]) * inv_t), axis=1)
        m_t = mt_new
    return m_new, rest, n_fin, sum_fin, d_s, m_t, d_t


@triton.jit
def _phi_times(w, x):
    """``w phi(x)``, ``phi(x) = x e^x - e^x + 1``, by its series near 0 (no cancellation); 0 where w = 0."""
    series = x * x * (0.5 + x * (1.0 / 3.0 + x * (0.125 + x * (1.0 / 30.0 + x / 144.0))))
    return w * series


@triton.jit
def _expm1(x):
    """``e^x - 1`` without cancellation for small |x| (series, relative error < 2e-8 below 0.1)."""
    series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x / 120.0))))
    return tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0)


@triton.jit
def _log1p(y):
    """``log(1 + y)`` without cancellation for small |y| (series, relative error < 2e-9 below 0.1)."""
    series = y * (1.0 - y * (0.5 - y * (1.0 / 3.0 - y * (0.25 - y * (0.2 - y * (1.0 / 6.0 - y / 7.0))))))
    return tl.where(tl.abs(y) < 0.1, series, tl.log(1.0 + y))


@triton.jit
def _kl_terms(a, m, x):
    """Per column, ``m phi(x)`` with ``x = log(a / m)`` (a share of ``KL(a || m)``): the series near 0, else
    ``a x - a + m``; ``a = 0`` contributes ``m`` (and a column where both are 0, nothing)."""
    far = tl.where(a > 0.0, a * x, 0.0) - a + m
    return tl.where(tl.abs(x) < 0.1, _phi_times(m, x), far)


@triton.jit
def _soft_terms(s, t, m_s, d_s, m_t, d_t, log_ratio, inv_t, beta, DIVERGENCE: tl.constexpr):
    """For a block of reverse KL (``DIVERGENCE`` 1) or JSD (2): ``p = softmax(s/T)``, the gradient's direction
    ``L`` (``log p/q``, or ``log p/m``; 0 where p = 0), each column's share of the divergence, and its share of
    the scalar ``C`` the gradient subtracts (``R``, or ``KL(p || m)``)."""
    p = tl.exp((s - m_s[:, None]) * inv_t) / d_s[:, None]
    q = tl.exp((t - m_t[:, None]) * inv_t) / d_t[:, None]
    delta = ((t - m_t[:, None]) - (s - m_s[:, None])) * inv_t + log_ratio[:, None]  # log q - log p
    if DIVERGENCE == 1:
        direction = -delta  # log(p / q)
        c_terms = _kl_terms(p, q, direction)
        div_terms = c_terms
    else:
        direction = -_log1p(beta * _expm1(delta))  # log(p / m)
        m = beta * q + (1.0 - beta) * p
        c_terms = _kl_terms(p, m, direction)
        div_terms = beta * _kl_terms(q, m, delta + direction) + (1.0 - beta) * c_terms  # log(q/m) = log(q/p) + log(p/m)
    return p, tl.where(p > 0.0, direction, 0.0), div_terms, c_terms


@triton.jit
def _pass2(s, t, cols, y, m_s, d1, rest, n_fin, d_s, m_t, d_t, log_ratio, keep, scale,
           smooth, smooth_per_class, ce_coef, kl_grad_coef, inv_t, beta, div_c,
           HAS_TEACHER: tl.constexpr, HAS_LABELS: tl.constexpr, DIVERGENCE: tl.constexpr):
    """For one [BLOCK_ROWS, BLOCK_K] block: the gradient w.r.t. the student logits (times ``scale``) and, for
    forward KL, the block's share of KL(softmax(t/T) || softmax(s/T)) per row. Reverse KL and JSD take their
    row scalar ``div_c`` (see :func:`_soft_terms`) from an earlier reduction and return 0 for the share."""
    g = tl.zeros(s.shape, dtype=tl.float32)
    kl = tl.zeros([s.shape[0]], dtype=tl.float32)
    if HAS_LABELS:
        p = tl.exp(s - m_s[:, None]) / d1[:, None]
        fin = (s > float("-inf")).to(tl.float32)
        c = (1.0 - smooth) + smooth_per_class * n_fin
        g_ce = c[:, None] * p - smooth_per_class * fin
        # True class: (1-a)(p_y - 1) written as -(1-a) sum_{j != y} p_j, no cancellation when p_y -> 1.
        g_y = (-(1.0 - smooth) * rest / d1)[:, None] + (smooth_per_class * n_fin)[:, None] * p - smooth_per_class
        g = ce_coef * tl.where(cols[None, :] == y[:, None], g_y, g_ce)
    if HAS_TEACHER and DIVERGENCE != 0:
        p_t, direction, _, _ = _soft_terms(s, t, m_s, d_s, m_t, d_t, log_ratio, inv_t, beta, DIVERGENCE)
        g_coef = kl_grad_coef
        if DIVERGENCE == 2:
            g_coef = kl_grad_coef * (1.0 - beta)  # dJ/dp = (1-beta) log(p/m)
        g += g_coef * p_t * (direction - div_c[:, None])
    if HAS_TEACHER and DIVERGENCE == 0:
        p_t = tl.exp((s - m_s[:, None]) * inv_t) / d_s[:, None]
        q_t = tl.exp((t - m_t[:, None]) * inv_t) / d_t[:, None]
        g += kl_grad_coef * (p_t - q_t)
        # KL = sum_j p_j phi(delta_j), delta = log q - log p, phi(x) = x e^x - e^x + 1 >= 0: every term is
        # second order in delta, so a student close to its teacher does not lose the loss to cancellation
        # (sum q log q - sum q log p would), and an error in the normalisers enters only at second order.
        delta = ((t - m_t[:, None]) - (s - m_s[:, None])) * inv_t + log_ratio[:, None]
        small = delta * delta * (0.5 + delta * (1.0 / 3.0 + delta * (0.125 + delta * (1.0 / 30.0 + delta / 144.0))))
        # Far from 0, p phi(delta) = q delta - q + p; q = 0 (teacher -inf) contributes p.
        far = tl.where(q_t > 0.0, q_t * delta, 0.0) - q_t + p_t
        kl = tl.sum(tl.where(tl.abs(delta) < 0.1, p_t * small, far), axis=1)
    return tl.where(keep[:, None], g * scale, 0.0), kl


@triton.jit
def fused_loss_kernel(
    s_ptr, s_stride,  # student logits (N, K), unit column stride, any float dtype
    t_ptr, t_stride,  # teacher logits (N, K), unit column stride; unused without HAS_TEACHER
    y_ptr, y_stride,  # labels (N,) int32/int64; unused without HAS_LABELS
    g_ptr, g_stride,  # out: gradient (N, K), dtype of the student logits; unused without COMPUTE_GRAD
    loss_ptr,  # out: (N,) fp32 per-row loss, 0 for ignored rows (unscaled: reduction is done by the caller)
    scale_ptr,  # () fp32 on device: 1 / kept rows for "mean", 1 otherwise; multiplies the gradient only
    N, K, ignore_index,
    smooth,  # label smoothing a
    smooth_per_class,  # a / K
    ce_coef,  # weight of CE_LS: 1 - w in KD, 1 for LS
    kl_coef,  # weight of KL in the loss: w T^2 (T^2 without labels)
    kl_grad_coef,  # its gradient weight: w T (T without labels)
    inv_t,  # 1 / T
    beta,  # JSD's mixture weight of the teacher (DIVERGENCE 2 only)
    HAS_TEACHER: tl.constexpr, HAS_LABELS: tl.constexpr, COMPUTE_GRAD: tl.constexpr, DIVERGENCE: tl.constexpr,
    SINGLE_PASS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < N
    if HAS_LABELS:
        y = tl.load(y_ptr + rows * y_stride, mask=row_ok, other=ignore_index).to(tl.int64)
        keep = row_ok & (y != ignore_index)
        y = tl.where(keep, y, 0)
        # s_y read on its own: the true-class term is computed in fp32 from the stored value, before rounding.
        s_y = tl.load(s_ptr + rows * s_stride + y, mask=keep, other=0.0).to(tl.float32)
    else:
        y = tl.zeros([BLOCK_ROWS], dtype=tl.int64) - 1
        keep = row_ok
    s_row = s_ptr + rows[:, None] * s_stride
    t_row = t_ptr + rows[:, None] * t_stride
    g_row = g_ptr + rows[:, None] * g_stride
    scale = tl.load(scale_ptr)

    m_s = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    m_t = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    rest = tl.zeros([BLOCK_ROWS], tl.float32)
    n_fin = tl.zeros([BLOCK_ROWS], tl.float32)
    sum_fin = tl.zeros([BLOCK_ROWS], tl.float32)
    d_s = tl.zeros([BLOCK_ROWS], tl.float32)
    d_t = tl.zeros([BLOCK_ROWS], tl.float32)

    # Pass 1: row statistics. Ignored rows are masked out of every load, so they cost no bandwidth.
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK_K)
        s, t = _load_block(s_row, t_row, cols, keep, K, HAS_TEACHER)
        m_s, rest, n_fin, sum_fin, d_s, m_t, d_t = _update(
            s, t, cols, y, m_s, rest, n_fin, sum_fin, d_s, m_t, d_t, inv_t, HAS_TEACHER, HAS_LABELS)
    else:
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            s, t = _load_block(s_row, t_row, cols, keep, K, HAS_TEACHER)
            m_s, rest, n_fin, sum_fin, d_s, m_t, d_t = _update(
                s, t, cols, y, m_s, rest, n_fin, sum_fin, d_s, m_t, d_t, inv_t, HAS_TEACHER, HAS_LABELS)

    # Ignored rows saw only -inf: give them finite stats (max 0, sums 1) so that no NaN is ever formed.
    m_s = tl.where(keep, m_s, 0.0)
    m_t = tl.where(keep, m_t, 0.0)
    d_s = tl.where(keep, d_s, 1.0)
    d_t = tl.where(keep, d_t, 1.0)
    log_ratio = tl.log(d_s / d_t)
    loss = tl.zeros([BLOCK_ROWS], tl.float32)
    d1 = rest
    if HAS_LABELS:
        d1 = rest + tl.exp(s_y - m_s)  # s_y = 0 on ignored rows: d1 = 1
        log_d1 = tl.log(d1)
        nll = (m_s - s_y) + log_d1
        loss = ce_coef * ((1.0 - smooth) * nll + smooth_per_class * (n_fin * log_d1 - sum_fin))

    # Pass 1b (reverse KL, JSD): the divergence and the scalar C that every gradient element subtracts.
    kl = tl.zeros([BLOCK_ROWS], tl.float32)
    div_c = tl.zeros([BLOCK_ROWS], tl.float32)
    if HAS_TEACHER and DIVERGENCE != 0:
        if SINGLE_PASS:
            _, _, div_terms, c_terms = _soft_terms(s, t, m_s, d_s, m_t, d_t, log_ratio, inv_t, beta, DIVERGENCE)
            kl = tl.sum(div_terms, axis=1)
            div_c = tl.sum(c_terms, axis=1)
        else:
            for start in range(0, K, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                s, t = _load_block(s_row, t_row, cols, keep, K, HAS_TEACHER)
                _, _, div_terms, c_terms = _soft_terms(s, t, m_s, d_s, m_t, d_t, log_ratio, inv_t, beta, DIVERGENCE)
                kl += tl.sum(div_terms, axis=1)
                div_c += tl.sum(c_terms, axis=1)

    # Pass 2: gradient (and forward KL), from the registers (SINGLE_PASS) or re-reading the row (from L2).
    if COMPUTE_GRAD or (HAS_TEACHER and DIVERGENCE == 0):
        if SINGLE_PASS:
            g, kl_block = _pass2(s, t, cols, y, m_s, d1, rest, n_fin, d_s, m_t, d_t, log_ratio, keep, scale,
                                 smooth, smooth_per_class, ce_coef, kl_grad_coef, inv_t, beta, div_c,
                                 HAS_TEACHER, HAS_LABELS, DIVERGENCE)
            kl += kl_block
            if COMPUTE_GRAD:
                tl.store(g_row + cols[None, :], g.to(g_ptr.dtype.element_ty),
                         mask=row_ok[:, None] & (cols < K)[None, :])
        else:
            for start in range(0, K, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                s, t = _load_block(s_row, t_row, cols, keep, K, HAS_TEACHER)
                g, kl_block = _pass2(s, t, cols, y, m_s, d1, rest, n_fin, d_s, m_t, d_t, log_ratio, keep, scale,
                                     smooth, smooth_per_class, ce_coef, kl_grad_coef, inv_t, beta, div_c,
                                     HAS_TEACHER, HAS_LABELS, DIVERGENCE)
                kl += kl_block
                if COMPUTE_GRAD:
                    tl.store(g_row + cols[None, :], g.to(g_ptr.dtype.element_ty),
                             mask=row_ok[:, None] & (cols < K)[None, :])
    if HAS_TEACHER:
        loss += kl_coef * kl
    tl.store(loss_ptr + rows, tl.where(keep, loss, 0.0), mask=row_ok)


@triton.jit
def scale_grad_kernel(
    g_ptr, g_stride,  # in/out: gradient (N, K) from the forward kernel
    go_ptr, go_stride,  # grad_output: (N,) per row, or a scalar read with go_stride = 0
    N, K,
    BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < N
    go = tl.load(go_ptr + rows * go_stride, mask=row_ok, other=1.0).to(tl.float32)
    # grad_output == 1 (plain loss.backward()) is decided on the device: no read, no write, no host sync.
    if tl.max(tl.where(go != 1.0, 1, 0)) > 0:
        g_row = g_ptr + rows[:, None] * g_stride
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            mask = row_ok[:, None] & (cols < K)[None, :]
            g = tl.load(g_row + cols[None, :], mask=mask).to(tl.float32)
            tl.store(g_row + cols[None, :], (g * go[:, None]).to(g_ptr.dtype.element_ty), mask=mask)


def _row_major(x: torch.Tensor) -> torch.Tensor:
    # Rows may be strided (slices, stride-2 rows); columns must be unit-stride for coalesced loads.
    return x if x.stride(1) == 1 else x.contiguous()


def forward(
    student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None, *,
    label_smoothing: float, temperature: float, kd_weight: float, ignore_index: int, mean: bool, compute_grad: bool,
    divergence: str = "forward-kl", beta: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch :func:`fused_loss_kernel`.

    Args:
        student: (N, K) float logits. teacher: (N, K) or None (LS). labels: (N,) ints or None (pure soft KD).
        divergence: the soft term, "forward-kl", "reverse-kl" or "jsd" (then ``beta`` in (0, 1)).
        mean: scale the gradient by 1 / kept rows (kept rows counted on the device, no host sync).

    Returns:
        per-row fp32 loss (N,) (0 on ignored rows), gradient (N, K) in the student's dtype (None unless
        ``compute_grad``; scaled for ``mean``), and the fp32 scalar scale (1 / kept rows, or 1).
    """
    n, k = student.shape
    student = _row_major(student)
    has_teacher = teacher is not None
    teacher = _row_major(teacher) if has_teacher else student
    has_labels = labels is not None
    loss = torch.empty(n, dtype=torch.float32, device=student.device)
    grad = torch.empty((n, k), dtype=student.dtype, device=student.device) if compute_grad else None
    if not mean:
        scale = torch.ones((), dtype=torch.float32, device=student.device)
    elif has_labels:
        scale = (labels != ignore_index).sum().clamp(min=1).to(torch.float32).reciprocal()
    else:
        scale = torch.full((), 1.0 / max(n, 1), dtype=torch.float32, device=student.device)
    if n == 0:
        return loss, grad, scale
    if not has_teacher:
        ce_coef, kl_coef, kl_grad_coef = 1.0, 0.0, 0.0
    elif has_labels:
        ce_coef, kl_coef, kl_grad_coef = 1.0 - kd_weight, kd_weight * temperature**2, kd_weight * temperature
    else:
        ce_coef, kl_coef, kl_grad_coef = 0.0, temperature**2, temperature
    cfg = config(k, 2 if has_teacher else 1)
    fused_loss_kernel[(triton.cdiv(n, cfg.block_rows),)](
        student, student.stride(0), teacher, teacher.stride(0),
        labels if has_labels else student, labels.stride(0) if has_labels else 0,
        grad if compute_grad else student, k,
        loss, scale, n, k, ignore_index,
        float(label_smoothing), float(label_smoothing) / k, ce_coef, kl_coef, kl_grad_coef, 1.0 / temperature,
        float(beta), HAS_TEACHER=has_teacher, HAS_LABELS=has_labels, COMPUTE_GRAD=compute_grad,
        DIVERGENCE=DIVERGENCES.index(divergence),
        SINGLE_PASS=cfg.single_pass, BLOCK_ROWS=cfg.block_rows, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
    )
    return loss, grad, scale


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """Multiply the (N, K) ``grad`` in place by ``grad_output`` (a scalar, or (N,) per row); returns ``grad``."""
    n, k = grad.shape
    if n == 0:
        return grad
    cfg = config(k, 1)
    go_stride = grad_output.stride(0) if grad_output.ndim else 0
    scale_grad_kernel[(triton.cdiv(n, cfg.block_rows),)](
        grad, grad.stride(0), grad_output, go_stride, n, k,
        BLOCK_ROWS=cfg.block_rows, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
    )
    return grad
