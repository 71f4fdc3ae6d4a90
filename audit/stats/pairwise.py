"""How far two models' output distributions are apart, per example: KL divergence and top-1 agreement."""

from __future__ import annotations

import torch

from audit.errors import AuditError
from audit.stats.confidence import _check_rows


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    _check_rows(a, names[0])
    _check_rows(b, names[1])
    if a.shape != b.shape:
        raise AuditError(f"expected {names[1]} of shape {tuple(a.shape)}, got {tuple(b.shape)}; pass the same N and K")
    if a.device != b.device:
        raise AuditError(f"expected {names[1]} on {a.device}, got {b.device}; move it with .to()")


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_k p_k (log p_k - log q_k)`` per row, in nats, from log-probabilities.

    Terms with ``p_k = 0`` are 0 even where ``log q_k = -inf`` (``0 log 0 = 0``); a class with
    ``p_k > 0`` and ``q_k = 0`` gives ``+inf``. Half and bfloat16 inputs are computed in float32.

    Args:
        log_p: (N, K) floating log-probabilities of p (e.g. ``log_softmax`` of the teacher's logits).
        log_q: (N, K) floating log-probabilities of q, same shape and device.

    Returns:
        (N,) divergences >= 0 (up to rounding), promoted dtype of the two inputs.

    Raises:
        AuditError: on a bad or mismatched shape, dtype or device.

    Example:
        >>> p = torch.tensor([[0.5, 0.5, 0.0]]).log()
        >>> q = torch.tensor([[0.25, 0.75, 0.0]]).log()
        >>> kl_divergence(p, q)
        tensor([0.1438])
    """
    _check_pair(log_p, log_q, ("log_p", "log_q"))
    dtype = torch.promote_types(torch.promote_types(log_p.dtype, log_q.dtype), torch.float32)
    log_p, log_q = log_p.to(dtype), log_q.to(dtype)
    p = log_p.exp()
    # torch.where, not p * (...): with p = 0 and log_q = -inf the product would be 0 * inf = NaN
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def agreement(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Whether the two models' top-1 classes agree, ``argmax p == argmax q``, per row.

    Works on probabilities, log-probabilities or logits alike; ties go to the lowest class index.

    Args:
        p: (N, K) floating scores of the first model.
        q: (N, K) floating scores of the second model, same shape and device.

    Returns:
        (N,) bool.

    Raises:
        AuditError: on a bad or mismatched shape, dtype or device.

    Example:
        >>> agreement(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([[0.6, 0.4], [0.7, 0.3]]))
        tensor([ True, False])
    """
    _check_pair(p, q, ("p", "q"))
    return p.argmax(-1) == q.argmax(-1)
