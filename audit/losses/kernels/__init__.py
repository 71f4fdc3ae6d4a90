"""Fused Triton losses: one autograd Function per loss over the kernels of :mod:`audit.losses.kernels.fused`.

The forward launch computes the loss and the gradient w.r.t. the student logits together; the gradient is
kept and ``backward`` only multiplies it by ``grad_output`` (skipped on the device when that is 1). Hence a
graph through these losses can be backpropagated once: a second ``backward`` raises.

Triton is imported lazily, so :func:`available` works where it is missing; nothing touches a device at
import time. The losses are defined in :mod:`audit.losses`; these functions take its arguments, already
checked.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from audit.errors import AuditError


def available() -> bool:
    """Whether the Triton backend can run: Triton importable, and CUDA present or ``TRITON_INTERPRET=1``."""
    if importlib.util.find_spec("triton") is None:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for a ``backend`` argument: ``"auto"`` is Triton for CUDA tensors where it
    is :func:`available`, torch otherwise."""
    if backend not in ("auto", "torch", "triton"):
        raise AuditError(f"expected backend 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda and available() else "torch"
    return backend


def _require(tensor: torch.Tensor) -> None:
    if importlib.util.find_spec("triton") is None:
        raise AuditError("expected Triton to be installed for backend='triton', got none; use backend='torch'")
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise AuditError(
            f"expected CUDA tensors for backend='triton', got device {tensor.device}; "
            "use backend='torch', or set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU"
        )


def _backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
    from audit.losses.kernels import fused

    grad, ctx.grad = ctx.grad, None
    if grad is None:
        raise AuditError(
            "expected one backward pass per fused loss evaluation, got a second; "
            "recompute the loss, or use backend='torch' to backpropagate twice through one graph"
        )
    return fused.scale_grad_(grad, grad_output)


def _reduce(rows: torch.Tensor, scale: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total * scale if reduction == "mean" else total


class LabelSmoothedCrossEntropyFunction(torch.autograd.Function):
    """Fused label-smoothed cross entropy (see :func:`audit.losses.label_smoothed_cross_entropy`)."""

    @staticmethod
    def forward(ctx, logits, labels, label_smoothing, ignore_index, reduction):
        from audit.losses.kernels import fused

        rows, ctx.grad, scale = fused.forward(
            logits, None, labels, label_smoothing=label_smoothing, temperature=1.0, kd_weight=0.0,
            ignore_index=ignore_index, mean=reduction == "mean", compute_grad=ctx.needs_input_grad[0],
        )
        return _reduce(rows, scale, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return _backward(ctx, grad_output), None, None, None, None


class KDLossFunction(torch.autograd.Function):
    """Fused KD loss with any soft term (see :func:`audit.losses.distillation_loss`); the teacher gets no
    gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature, kd_weight, label_smoothing, ignore_index, reduction,
                divergence="forward-kl", beta=0.5):
        from audit.losses.kernels import fused

        rows, ctx.grad, scale = fused.forward(
            student, teacher.detach(), labels, label_smoothing=label_smoothing, temperature=temperature,
            kd_weight=kd_weight, ignore_index=ignore_index, mean=reduction == "mean",
            compute_grad=ctx.needs_input_grad[0], divergence=divergence, beta=beta,
        )
        return _reduce(rows, scale, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return _backward(ctx, grad_output), None, None, None, None, None, None, None, None, None


def label_smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float, ignore_index: int, reduction: str,
) -> torch.Tensor:
    """Fused LS cross entropy: (N, K) logits (fp32/bf16/fp16), (N,) int labels; fp32 result.

    Raises:
        AuditError: Triton missing, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    _require(logits)
    return LabelSmoothedCrossEntropyFunction.apply(logits, labels, label_smoothing, ignore_index, reduction)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
    temperature: float, kd_weight: float, label_smoothing: float, ignore_index: int, reduction: str,
) -> torch.Tensor:
    """Fused KD loss: (N, K) student and teacher logits, (N,) labels or None (pure soft term); fp32 result.

    Raises:
        AuditError: Triton missing, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    _require(student_logits)
    return KDLossFunction.apply(
        student_logits, teacher_logits, labels, temperature, kd_weight, label_smoothing, ignore_index, reduction
    )


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *, divergence: str,
    beta: float, temperature: float, kd_weight: float, label_smoothing: float, ignore_index: int, reduction: str,
) -> torch.Tensor:
    """Fused KD loss with the soft term ``divergence`` ("forward-kl", "reverse-kl", or "jsd" with beta in
    (0, 1)); shapes and result as :func:`kd_loss`.

    Raises:
        AuditError: Triton missing, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    _require(student_logits)
    return KDLossFunction.apply(
        student_logits, teacher_logits, labels, temperature, kd_weight, label_smoothing, ignore_index, reduction,
        divergence, beta,
    )
