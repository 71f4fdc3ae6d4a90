"""The losses students are trained with: label-smoothed cross entropy and knowledge distillation.

One public function per loss; ``backend`` picks the implementation:

- ``"torch"``: :mod:`audit.losses.reference`, plain torch, float32 math (float64 for float64 inputs), any device;
- ``"triton"``: the fused kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``);
- ``"auto"``: triton on CUDA tensors when Triton is importable, torch otherwise.

Gradients flow to the student logits only.
"""

from __future__ import annotations

import torch

from audit.errors import AuditError
from audit.losses import reference

REDUCTIONS = ("mean", "sum", "none")


def _check(logits: torch.Tensor, labels: torch.Tensor | None, reduction: str, label_smoothing: float) -> None:
    if logits.ndim != 2:
        raise AuditError(f"expected logits of shape (N, K), got {tuple(logits.shape)}; flatten leading dims first")
    if reduction not in REDUCTIONS:
        raise AuditError(f"expected reduction in {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise AuditError(f"expected label_smoothing in [0, 1], got {label_smoothing}")
    if labels is not None and labels.shape != logits.shape[:1]:
        raise AuditError(f"expected labels of shape ({logits.shape[0]},), got {tuple(labels.shape)}")


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    # One host sync, taken only to give a clear error instead of a device assert.
    kept = labels[labels != ignore_index]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= num_classes):
        raise AuditError(
            f"expected labels in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got values in [{int(kept.min())}, {int(kept.max())}]; check the label mapping"
        )


def _resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise AuditError(f"expected backend 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        from audit.losses import kernels

        return "triton" if tensor.is_cuda and kernels.available() else "torch"
    return backend


def label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0, ignore_index: int = -100,
    reduction: str = "mean", weight: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Cross entropy against the smoothed target ``(1-a) e_y + a/K`` (PyTorch's convention).

    Args:
        logits: (N, K) float tensor, any float dtype; math in float32 (float64 for float64 inputs).
        labels: (N,) int32/int64 class ids, or ``ignore_index`` for rows to skip.
        label_smoothing: a in [0, 1].
        reduction: "mean" over kept rows (0 if none), "sum", or "none" (per-row, 0 for ignored rows).
        weight: optional (K,) class weights (torch backend only).

    Raises:
        AuditError: wrong shapes, labels out of range, unknown reduction/backend.

    >>> label_smoothed_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), label_smoothing=0.1)
    tensor(0.6931)
    """
    _check(logits, labels, reduction, label_smoothing)
    _check_labels(labels, logits.shape[1], ignore_index)
    if _resolve_backend(backend, logits) == "triton":
        if weight is not None:
            raise AuditError("expected weight=None with backend='triton'; use backend='torch' for class weights")
        from audit.losses import kernels

        return kernels.label_smoothed_cross_entropy(
            logits, labels, label_smoothing=label_smoothing, ignore_index=ignore_index, reduction=reduction
        )
    return reference.label_smoothed_cross_entropy(
        logits, labels, label_smoothing=label_smoothing, ignore_index=ignore_index, reduction=reduction, weight=weight
    )


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    temperature: float = 1.0, kd_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
    reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """``(1-w) CE_LS(s, y) + w T^2 KL(softmax(t/T) || softmax(s/T))``; with ``labels=None`` the pure soft term.

    Args:
        student_logits: (N, K) float tensor; the gradient flows here only.
        teacher_logits: (N, K) float tensor of the same shape (detached).
        labels: (N,) int class ids or ``ignore_index``; ``None`` for the pure soft loss.
        temperature: T > 0. kd_weight: w in [0, 1].

    Raises:
        AuditError: mismatched shapes, T <= 0, w outside [0, 1], labels out of range.

    >>> round(float(kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), temperature=2.0)), 6)
    0.0
    """
    _check(student_logits, labels, reduction, label_smoothing)
    if teacher_logits.shape != student_logits.shape:
        raise AuditError(
            f"expected teacher logits of shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}; "
            "teacher and student must predict the same classes"
        )
    if not temperature > 0:
        raise AuditError(f"expected temperature > 0, got {temperature}")
    if not 0.0 <= kd_weight <= 1.0:
        raise AuditError(f"expected kd_weight in [0, 1], got {kd_weight}")
    if labels is not None:
        _check_labels(labels, student_logits.shape[1], ignore_index)
    options = dict(temperature=temperature, kd_weight=kd_weight, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, reduction=reduction)
    if _resolve_backend(backend, student_logits) == "triton":
        from audit.losses import kernels

        return kernels.kd_loss(student_logits, teacher_logits, labels, **options)
    return reference.kd_loss(student_logits, teacher_logits, labels, **options)
