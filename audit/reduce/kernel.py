"""Triton kernel of the audit's per-position reduction (:mod:`audit.reduce.reduction`): one read of a teacher's and a
student's logits gives both models' entropy, max probability, argmax and target log-probability, and both KLs.

Per row, for each model ``x`` (teacher ``t``, student ``s``), one online pass over column blocks keeps the
running max ``m_x``, its first argmax, ``D_x = sum_v e^(x_v - m_x)`` and ``E_x = sum_v e^(x_v - m_x)(x_v - m_x)``,
and two cross sums ``C_t = sum_v e^(t_v - m_t)(s_v - m_s)`` and ``C_s = sum_v e^(s_v - m_s)(t_v - m_t)``.
When a max grows by ``d = m_old - m_new < 0``, a sum of ``e^(x - m)`` is multiplied by ``e^d``; a sum that also
carries ``(x - m)`` of the same model gains ``d`` times the (rescaled) ``D``; a cross sum gains ``d`` times the
other model's rescaled ``D`` when the *other* max moves. Then, with ``q = softmax(t)``, ``p = softmax(s)``:

- ``H_x = log D_x - E_x / D_x``; ``max p_x = 1 / D_x``; ``log p_x(y) = x_y - m_x - log D_x``;
- ``KL(q || p) = E_t / D_t - C_t / D_t + log D_s - log D_t``, and symmetrically ``KL(p || q)``.

All terms are centred on the row max, so a common offset of 1e4 loses nothing; a -inf logit contributes
``0`` (``0 log 0 = 0``), except where the other model gives it mass, where the KL is +inf as it should be.
When student and teacher are equal the two KL terms are computed identically and cancel exactly; near
equality the fp32 error is about ``1e-7`` times the entropy (the eager ``sum q (log q - log p)`` has the same
order), enough for an audit (the training loss in :mod:`audit.losses.kernels.fused` takes a second pass to
keep tiny KLs exact; the audit reads the logits once).

Schedules as in :func:`audit.losses.kernels.fused.config` with two inputs: padded V <= 1024 gives
``BLOCK_ROWS = 2048 // BLOCK_V`` rows per program (classifiers: millions of rows, few classes), larger V one
row per program looping over blocks of at most 4096 columns. Offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from audit.losses.kernels.fused import config


@triton.jit
def _online(x, m, d, e, arg, start):
    """Fold a [BLOCK_ROWS, BLOCK_V] fp32 block of one model (-inf where masked; its first column is ``start``)
    into the running max ``m``, first argmax, ``D`` and ``E``. Also returns what the cross sums need: the safe
    new max, ``w = e^(x - m)``, ``z = x - m``, the factor ``e^(m_old - m_new)``, the shift ``m_old - m_new``
    and the old ``D`` rescaled to the new max."""
    block_max = tl.max(x, axis=1)
    block_arg = tl.argmax(x, axis=1, tie_break_left=True)
    # strictly greater: an equal max in a later block keeps the earlier (first) index
    arg = tl.where(block_max > m, start + block_arg.to(tl.int64), arg)
    m_new = tl.maximum(m, block_max)
    # a row all -inf so far keeps a shift of 0, so exp() never sees -inf - -inf
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    m_old = tl.where(m == float("-inf"), m_safe, m)
    shift = m_old - m_safe  # <= 0
    scale = tl.exp(shift)
    z = x - m_safe[:, None]
    w = tl.exp(z)
    d_scaled = d * scale
    e = e * scale + shift * d_scaled + tl.sum(tl.where(w > 0.0, w * z, 0.0), axis=1)
    d = d_scaled + tl.sum(w, axis=1)
    return m_new, d, e, arg, w, z, scale, shift, d_scaled


@triton.jit
def reduce_pair_kernel(
    t_ptr, t_stride,  # teacher logits (P, V), unit column stride, any float dtype
    s_ptr, s_stride,  # student logits (P, V), unit column stride
    y_ptr, y_stride,  # targets (P,) int32/int64, ignore_index where none
    out_ptr,  # out: (P, 10) fp32: H_t, maxp_t, logp_t(y), H_s, maxp_s, logp_s(y), KL(q||p), KL(p||q), top1_t, top1_s
    P, V, ignore_index,
    BLOCK_ROWS: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < P
    y = tl.load(y_ptr + rows * y_stride, mask=row_ok, other=ignore_index).to(tl.int64)
    has_y = row_ok & (y != ignore_index)
    y = tl.where(has_y, y, 0)
    t_row = t_ptr + rows[:, None] * t_stride
    s_row = s_ptr + rows[:, None] * s_stride

    m_t = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    m_s = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    d_t = tl.zeros([BLOCK_ROWS], tl.float32)
    d_s = tl.zeros([BLOCK_ROWS], tl.float32)
    e_t = tl.zeros([BLOCK_ROWS], tl.float32)
    e_s = tl.zeros([BLOCK_ROWS], tl.float32)
    c_t = tl.zeros([BLOCK_ROWS], tl.float32)
    c_s = tl.zeros([BLOCK_ROWS], tl.float32)
    arg_t = tl.zeros([BLOCK_ROWS], tl.int64)
    arg_s = tl.zeros([BLOCK_ROWS], tl.int64)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols < V)[None, :]
        t = tl.load(t_row + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        s = tl.load(s_row + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_t, d_t, e_t, arg_t, w_t, z_t, scale_t, shift_t, dt_scaled = _online(t, m_t, d_t, e_t, arg_t, start)
        m_s, d_s, e_s, arg_s, w_s, z_s, scale_s, shift_s, ds_scaled = _online(s, m_s, d_s, e_s, arg_s, start)
        # C_t = sum e^(t - m_t)(s - m_s): rescale by the teacher's max, re-centre on the student's new max
        c_t = c_t * scale_t + shift_s * dt_scaled + tl.sum(tl.where(w_t > 0.0, w_t * z_s, 0.0), axis=1)
        c_s = c_s * scale_s + shift_t * ds_scaled + tl.sum(tl.where(w_s > 0.0, w_s * z_t, 0.0), axis=1)

    t_y = tl.load(t_ptr + rows * t_stride + y, mask=has_y, other=0.0).to(tl.float32)
    s_y = tl.load(s_ptr + rows * s_stride + y, mask=has_y, other=0.0).to(tl.float32)
    # rows past P saw only -inf: finite stats so that no NaN is formed (nothing is stored for them)
    m_t = tl.where(row_ok, m_t, 0.0)
    m_s = tl.where(row_ok, m_s, 0.0)
    d_t = tl.where(row_ok, d_t, 1.0)
    d_s = tl.where(row_ok, d_s, 1.0)
    log_dt = tl.log(d_t)
    log_ds = tl.log(d_s)
    nan = float("nan")
    out = out_ptr + rows * 10  # int64 offsets
    tl.store(out + 0, log_dt - e_t / d_t, mask=row_ok)
    tl.store(out + 1, 1.0 / d_t, mask=row_ok)
    tl.store(out + 2, tl.where(has_y, t_y - m_t - log_dt, nan), mask=row_ok)
    tl.store(out + 3, log_ds - e_s / d_s, mask=row_ok)
    tl.store(out + 4, 1.0 / d_s, mask=row_ok)
    tl.store(out + 5, tl.where(has_y, s_y - m_s - log_ds, nan), mask=row_ok)
    tl.store(out + 6, (e_t - c_t) / d_t + log_ds - log_dt, mask=row_ok)
    tl.store(out + 7, (e_s - c_s) / d_s + log_dt - log_ds, mask=row_ok)
    tl.store(out + 8, arg_t.to(tl.float32), mask=row_ok)
    tl.store(out + 9, arg_s.to(tl.float32), mask=row_ok)


# Column block of the looped schedule (V > 1024): two fp32 blocks of this size live in registers per row.
MAX_BLOCK_V = 4096


def _row_major(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(1) == 1 else x.contiguous()


def reduce_pair(
    teacher: torch.Tensor, student: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Launch :func:`reduce_pair_kernel` on (P, V) teacher and student logits and (P,) targets (checked by
    the caller). Returns the teacher's and the student's columns (entropy, maxprob, top1, target_logprob,
    correct) and the pair's (kl, kl_reverse), as in :mod:`audit.reduce.reduction`."""
    p, v = teacher.shape
    teacher, student = _row_major(teacher), _row_major(student)
    out = torch.empty((p, 10), dtype=torch.float32, device=teacher.device)
    if p:
        cfg = config(v, 2)
        block_v = min(cfg.block_k, MAX_BLOCK_V)
        reduce_pair_kernel[(triton.cdiv(p, cfg.block_rows),)](
            teacher, teacher.stride(0), student, student.stride(0), targets, targets.stride(0), out,
            p, v, ignore_index, BLOCK_ROWS=cfg.block_rows, BLOCK_V=block_v, num_warps=cfg.num_warps,
        )
    out = out.T.contiguous()  # (10, P): one contiguous column per quantity
    keep = targets != ignore_index
    columns = []
    for first, top1_row in ((0, 8), (3, 9)):
        # argmax stored as fp32 is exact below 2^24 ids: every vocabulary in use
        top1 = out[top1_row].long()
        correct = torch.where(keep, (top1 == targets).float(), torch.full_like(out[0], float("nan")))
        columns.append({"entropy": out[first], "maxprob": out[first + 1], "top1": top1,
                        "target_logprob": out[first + 2], "correct": correct})
    return columns[0], columns[1], {"kl": out[6], "kl_reverse": out[7]}
