"""Per-example confidence measures of a classifier's output distribution.

Every function takes a batch of N rows over K classes and returns one value per row, shape (N,), so a
mean, a per-class breakdown or a bootstrap is left to the caller. Half and bfloat16 inputs are computed in
float32; float32 and float64 keep their dtype. Probabilities are taken as given: rows are not checked to
sum to 1 (that would cost a device sync per call).
"""

from __future__ import annotations

import torch

from audit.errors import AuditError


def _check_rows(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise AuditError(f"expected {name} as a torch.Tensor, got {type(x).__name__}; convert it with torch.as_tensor")
    if x.ndim != 2 or x.shape[1] < 1:
        raise AuditError(f"expected {name} of shape (N, K) with K >= 1, got {tuple(x.shape)}; reshape to (N, K)")
    if not x.is_floating_point():
        raise AuditError(f"expected {name} with a floating dtype, got {x.dtype}; cast it with .float()")


def _check_labels(labels: torch.Tensor, rows: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != rows.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise AuditError(f"expected labels of shape ({rows.shape[0]},), got {shape}; pass one class index per row")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise AuditError(f"expected integer labels, got {labels.dtype}; cast them with .long()")
    if labels.device != rows.device:
        raise AuditError(f"expected labels on {rows.device}, got {labels.device}; move them with .to()")
    k = rows.shape[1]
    # one host sync: an out-of-range label would otherwise be a device-side assert on CUDA
    if labels.numel() and bool(((labels < 0) | (labels >= k)).any()):
        raise AuditError(f"expected labels in [0, {k}), got values outside it; check the label mapping")


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H(p) = -sum_k p_k log p_k`` of each row, in nats, with ``0 log 0 = 0``.

    Args:
        probs: (N, K) floating probabilities.

    Returns:
        (N,) entropies in [0, log K].

    Raises:
        AuditError: if ``probs`` is not a floating (N, K) tensor.

    Example:
        >>> entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor([0.6931, 0.0000])
    """
    _check_rows(probs, "probs")
    p = _compute_dtype(probs)
    # 0 - h rather than -h: a one-hot row gives +0, not -0
    return 0.0 - torch.special.xlogy(p, p).sum(-1)


def max_probability(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 probability ``max_k p_k`` of each row (the "confidence" of calibration metrics).

    Args:
        probs: (N, K) floating probabilities.

    Returns:
        (N,) values in [1/K, 1] for valid distributions.

    Raises:
        AuditError: if ``probs`` is not a floating (N, K) tensor.

    Example:
        >>> max_probability(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
        tensor([0.8000, 0.6000])
    """
    _check_rows(probs, "probs")
    return _compute_dtype(probs).amax(-1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability of each row; 1 when K = 1 (there is no runner-up).

    Args:
        probs: (N, K) floating probabilities.

    Returns:
        (N,) values in [0, 1].

    Raises:
        AuditError: if ``probs`` is not a floating (N, K) tensor.

    Example:
        >>> margin(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]))
        tensor([0.5000, 0.0000])
    """
    _check_rows(probs, "probs")
    p = _compute_dtype(probs)
    if p.shape[1] == 1:
        return torch.ones(p.shape[0], dtype=p.dtype, device=p.device)
    top2 = p.topk(2, dim=-1).values  # (N, 2)
    return top2[:, 0] - top2[:, 1]


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood ``-log softmax(z)_y``, via ``log_softmax`` (no overflow).

    Args:
        logits: (N, K) floating logits (unnormalised; ``log_softmax`` normalises them).
        labels: (N,) integer class indices in [0, K).

    Returns:
        (N,) values >= 0, in nats.

    Raises:
        AuditError: on a bad shape or dtype, labels on another device, or a label outside [0, K).

    Example:
        >>> nll(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        tensor([0.6931, 2.1269])
    """
    _check_rows(logits, "logits")
    _check_labels(labels, logits)
    logp = torch.log_softmax(_compute_dtype(logits), dim=-1)
    return -logp.gather(1, labels.long()[:, None]).squeeze(1)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example multiclass Brier score ``sum_k (p_k - 1[k = y])^2`` (Brier 1950), range [0, 2].

    This is the K-column convention. The binary "one-column" Brier score ``(p_1 - y)^2`` used by
    scikit-learn is half of it for K = 2.

    Args:
        probs: (N, K) floating probabilities.
        labels: (N,) integer class indices in [0, K).

    Returns:
        (N,) scores; 0 for a one-hot prediction of the true class, 2 for a one-hot wrong prediction.

    Raises:
        AuditError: on a bad shape or dtype, labels on another device, or a label outside [0, K).

    Example:
        >>> brier(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([1, 0]))
        tensor([2.0000, 0.5000])
    """
    _check_rows(probs, "probs")
    _check_labels(labels, probs)
    p = _compute_dtype(probs)
    one_hot = torch.nn.functional.one_hot(labels.long(), p.shape[1]).to(p.dtype)  # (N, K)
    return (p - one_hot).square().sum(-1)


def correct(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 correctness ``argmax_k p_k == y``; ties go to the lowest class index (``torch.argmax``).

    Works on logits as well as probabilities (argmax is unchanged by softmax).

    Args:
        probs: (N, K) floating probabilities or logits.
        labels: (N,) integer class indices in [0, K).

    Returns:
        (N,) bool.

    Raises:
        AuditError: on a bad shape or dtype, labels on another device, or a label outside [0, K).

    Example:
        >>> correct(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 1]))
        tensor([ True, False])
    """
    _check_rows(probs, "probs")
    _check_labels(labels, probs)
    return probs.argmax(-1) == labels
