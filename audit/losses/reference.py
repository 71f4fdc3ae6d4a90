"""Plain-torch reference losses (float32 math, float64 for float64 inputs; any device).

Conventions (docs/CLAIMS.md):
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


# On CPU these functions are the training loss, and they are bound by memory: an op on (N, K) (504 x 49,152
# float32 logits are 99 MB) costs a pass over it, and a new (N, K) tensor costs about three more (the pages
# of each fresh allocation are faulted in and zeroed). So no op is spent where it cannot change a value, and
# temporaries that need no gradient are overwritten in place. Each shortcut gives the loss and gradient of the
# plain formula bit for bit: dividing by T = 1 is exact, so is a mask that keeps every entry (which _all_above
# finds out in one read and a host sync, as the label check of audit.losses does), and so is the order of a
# product's factors.


def _log_softmax(logits: torch.Tensor, dtype: torch.dtype, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) computed in ``dtype``, (N, K)."""
    x = logits.to(dtype)
    if temperature != 1:
        x = x / temperature if x is logits else x.div_(temperature)  # a converted copy is ours to divide
    return torch.log_softmax(x, dim=-1)


def _all_above(x: torch.Tensor, bound: float) -> bool:
    """Whether every entry of ``x`` is > ``bound`` (False for a NaN, or for no entries)."""
    return x.numel() > 0 and bool(x.detach().amin() > bound)


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
    logp = _log_softmax(logits, _math_dtype(logits))
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels)).long()
    nll = -logp.gather(1, safe[:, None]).squeeze(1)
    if weight is not None:
        nll = nll * weight.to(logp.dtype)[safe]
    if label_smoothing == 0:  # the smoothing term would be multiplied by 0
        return nll, keep
    # -inf logits (masked classes) give logp = -inf; their smoothing mass is defined as 0 * -inf = 0
    if not _all_above(logp, -math.inf):
        logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    smooth = -(logp if weight is None else logp * weight.to(logp.dtype)).sum(-1)
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


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Per-row KL(a || b) from (N, K) log-probabilities, 0 log 0 = 0 (where a = 0 the log-ratio is zeroed before
    the product, so a masked class's -inf - -inf sends no NaN into the gradient). ``log_a`` is overwritten
    when it needs no gradient (the callers pass temporaries)."""
    # with only log b needing a gradient (the student, in forward KL) -sum a (log b - log a) is computed: the
    # same number, and backward then passes the gradient to log b without negating an (N, K) tensor
    flip = log_b.requires_grad and not log_a.requires_grad
    ratio = log_b - log_a if flip else log_a - log_b
    a = log_a.exp() if log_a.requires_grad else log_a.exp_()
    if not _all_above(a, 0.0):
        ratio = torch.where(a > 0, ratio, torch.zeros_like(ratio))
    terms = ratio * a if a.requires_grad else ratio.mul_(a)
    return -terms.sum(-1) if flip else terms.sum(-1)


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(s/T), log softmax(t/T)), (N, K) each, in float32 (float64 if either input is)."""
    dtype = _math_dtype(student_logits, teacher_logits)
    return _log_softmax(student_logits, dtype, temperature), _log_softmax(teacher_logits, dtype, temperature)


def soft_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T^2 KL(softmax(t/T) || softmax(s/T)) in float32 (float64 if either input is), 0 log 0 = 0."""
    log_p, log_q = _log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * _kl(log_q, log_p)


def reverse_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T^2 KL(softmax(s/T) || softmax(t/T)) in float32 (float64 if either input is), 0 log 0 = 0."""
    log_p, log_q = _log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * _kl(log_p, log_q)


def jsd_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             beta: float) -> torch.Tensor:
    """Per-row T^2 JSD_beta(softmax(t/T), softmax(s/T)) (module docstring), beta in [0, 1]."""
    if beta == 0:
        return soft_kl_rows(student_logits, teacher_logits, temperature)
    if beta == 1:
        return reverse_kl_rows(student_logits, teacher_logits, temperature)
    log_p, log_q = _log_probs(student_logits, teacher_logits, temperature)
    # -inf (masked classes) clamped to the lowest finite value: logsumexp's gradient stays finite, m stays 0
    lowest = torch.finfo(log_p.dtype).min

    def finite(log_x: torch.Tensor) -> torch.Tensor:
        return log_x if _all_above(log_x, -math.inf) else log_x.clamp(min=lowest)

    log_m = torch.logsumexp(torch.stack([finite(log_q) + math.log(beta), finite(log_p) + math.log1p(-beta)]), dim=0)
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
