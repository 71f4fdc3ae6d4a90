"""Plain-torch reference losses (float32 math, float64 for float64 inputs; any device).

Conventions (../shared/CLAIMS.md):
- label smoothing puts a/K on every class: target q' = (1-a) e_y + a/K;
- KD = (1-w) CE_LS(s, y) + w T^2 D(s, t) with the soft term D one of (p = softmax(s/T), q = softmax(t/T)):
  forward KL ``KL(q || p)`` (Hinton's), reverse KL ``KL(p || q)``, or TRL's generalised JSD
  ``JSD_beta = beta KL(q || m) + (1-beta) KL(p || m)``, ``m = beta q + (1-beta) p`` (beta 0 is defined as
  forward KL and beta 1 as reverse KL, the limits TRL's ``generalized_jsd_loss`` special-cases);
- the T^2 factor multiplies the soft term, whichever divergence it is, and never the CE term: each divergence
  is a function of s/T, so its gradient w.r.t. s carries 1/T, and near agreement (and at large T, where
  p - q ~ (s - t)/(K T)) another 1/T: T^2 keeps the soft gradient's scale, and the CE/soft balance set by w,
  the same at every T (Hinton et al. 2015). TRL applies no T^2; at T = 1 the two agree exactly;
- rows whose label is ``ignore_index`` contribute nothing; "mean" divides by the number of kept rows
  (0 kept rows gives 0, not NaN).
"""

from __future__ import annotations

import math

import torch


def _math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # float64 inputs keep float64 so the exact identities of CLAIMS.md can be checked to 1e-10;
    # half/bfloat16/float32 inputs all compute in float32.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _reduce(per_row: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    per_row = torch.where(keep, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / keep.sum().clamp(min=1)


def label_smoothed_cross_entropy_rows(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, ignore_index: int,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row H(q', softmax(logits)) in float32 (float64 for float64 logits) and the mask of kept rows.
    Shapes (N, K), (N,)."""
    logp = torch.log_softmax(logits.to(_math_dtype(logits)), dim=-1)
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels)).long()
    nll = -logp.gather(1, safe[:, None]).squeeze(1)
    # -inf logits (masked classes) give logp = -inf; their smoothing mass is defined as 0 * -inf = 0
    finite_logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    if weight is not None:
        w = weight.to(logp.dtype)
        nll = nll * w[safe]
        smooth = -(finite_logp * w).sum(-1)
    else:
        smooth = -finite_logp.sum(-1)
    k = logits.shape[-1]
    rows = (1.0 - label_smoothing) * nll + (label_smoothing / k) * smooth
    return rows, keep


def label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0, ignore_index: int = -100,
    reduction: str = "mean", weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference LS cross entropy; with ``weight`` "mean" divides by the summed weights of kept rows,
    as :func:`torch.nn.functional.cross_entropy` does."""
    rows, keep = label_smoothed_cross_entropy_rows(logits, labels, label_smoothing, ignore_index, weight)
    if weight is not None and reduction == "mean":
        safe = torch.where(keep, labels, torch.zeros_like(labels)).long()
        denom = torch.where(keep, weight.to(rows.dtype)[safe], torch.zeros(1, dtype=rows.dtype, device=logits.device)).sum()
        return torch.where(keep, rows, torch.zeros_like(rows)).sum() / denom.clamp(min=torch.finfo(rows.dtype).tiny)
    return _reduce(rows, keep, reduction)


def soft_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T^2 KL(softmax(t/T) || softmax(s/T)) in float32 (float64 if either input is), 0 log 0 = 0."""
    dtype = _math_dtype(student_logits, teacher_logits)
    log_q = torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    log_p = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return temperature**2 * terms.sum(-1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Per-row KL(a || b) from log-probabilities, 0 log 0 = 0 (the log-ratio is zeroed before the product, so a
    masked class's -inf - -inf sends no NaN into the gradient)."""
    a = log_a.exp()
    return (a * torch.where(a > 0, log_a - log_b, torch.zeros_like(a))).sum(-1)


def reverse_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T^2 KL(softmax(s/T) || softmax(t/T)) in float32 (float64 if either input is), 0 log 0 = 0."""
    dtype = _math_dtype(student_logits, teacher_logits)
    log_q = torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    log_p = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    return temperature**2 * _kl(log_p, log_q)


def jsd_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             beta: float) -> torch.Tensor:
    """Per-row T^2 JSD_beta(softmax(t/T), softmax(s/T)) (module docstring), beta in [0, 1]."""
    if beta == 0:
        return soft_kl_rows(student_logits, teacher_logits, temperature)
    if beta == 1:
        return reverse_kl_rows(student_logits, teacher_logits, temperature)
    dtype = _math_dtype(student_logits, teacher_logits)
    log_q = torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    log_p = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    # -inf (masked classes) clamped to the lowest finite value: logsumexp's gradient stays finite, m stays 0
    lowest = torch.finfo(dtype).min
    log_m = torch.logsumexp(torch.stack([log_q.clamp(min=lowest) + math.log(beta),
                                         log_p.clamp(min=lowest) + math.log1p(-beta)]), dim=0)
    return temperature**2 * (beta * _kl(log_q, log_m) + (1.0 - beta) * _kl(log_p, log_m))


def soft_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, divergence: str, temperature: float,
              beta: float) -> torch.Tensor:
    """Per-row T^2 D(s, t) for ``divergence`` "forward-kl", "reverse-kl" or "jsd"."""
    if divergence == "forward-kl":
        return soft_kl_rows(student_logits, teacher_logits, temperature)
    if divergence == "reverse-kl":
        return reverse_kl_rows(student_logits, teacher_logits, temperature)
    return jsd_rows(student_logits, teacher_logits, temperature, beta)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    divergence: str = "forward-kl", beta: float = 0.5, temperature: float = 1.0, kd_weight: float = 1.0,
    label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
) -> torch.Tensor:
    """Reference KD loss with any soft term; with ``labels=None`` the pure soft term (w treated as 1)."""
    kl = soft_rows(student_logits, teacher_logits.detach(), divergence=divergence, temperature=temperature, beta=beta)
    if labels is None:
        return _reduce(kl, torch.ones_like(kl, dtype=torch.bool), reduction)
    ce, keep = label_smoothed_cross_entropy_rows(student_logits, labels, label_smoothing, ignore_index)
    return _reduce((1.0 - kd_weight) * ce + kd_weight * kl, keep, reduction)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    temperature: float = 1.0, kd_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Reference KD loss with the forward KL (:func:`distillation_loss`)."""
    return distillation_loss(student_logits, teacher_logits, labels, temperature=temperature, kd_weight=kd_weight,
                             label_smoothing=label_smoothing, ignore_index=ignore_index, reduction=reduction)
