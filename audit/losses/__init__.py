"""The losses students are trained with: label-smoothed cross entropy and knowledge distillation (a component of
the training recipes; it may import the foundation only).

KD's soft term is forward KL (:func:`kd_loss`, Hinton's), reverse KL (:func:`reverse_kl_loss`) or TRL's
generalised JSD (:func:`jsd_loss`); :func:`distillation_loss` picks one by name. The conventions, and why
T^2 multiplies every soft term, are in :mod:`audit.losses.reference`.

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
from audit.losses.kernels import resolve_backend

REDUCTIONS = ("mean", "sum", "none")
DIVERGENCES = ("forward-kl", "reverse-kl", "jsd")


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
    if resolve_backend(backend, logits) == "triton":
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
    return distillation_loss(student_logits, teacher_logits, labels, divergence="forward-kl", temperature=temperature,
                             kd_weight=kd_weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
                             reduction=reduction, backend=backend)


def reverse_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    temperature: float = 1.0, kd_weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100,
    reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """``(1-w) CE_LS(s, y) + w T^2 KL(softmax(s/T) || softmax(t/T))`` (mode-seeking); arguments as :func:`kd_loss`.

    >>> round(float(reverse_kl_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))), 6)
    0.0
    """
    return distillation_loss(student_logits, teacher_logits, labels, divergence="reverse-kl", temperature=temperature,
                             kd_weight=kd_weight, label_smoothing=label_smoothing, ignore_index=ignore_index,
                             reduction=reduction, backend=backend)


def jsd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    beta: float = 0.5, temperature: float = 1.0, kd_weight: float = 1.0, label_smoothing: float = 0.0,
    ignore_index: int = -100, reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """``(1-w) CE_LS(s, y) + w T^2 JSD_beta`` in TRL's convention (``generalized_jsd_loss``): with
    ``p = softmax(s/T)``, ``q = softmax(t/T)`` and ``m = beta q + (1-beta) p``,
    ``JSD_beta = beta KL(q || m) + (1-beta) KL(p || m)``; beta 0 is KL(q || p) (forward) and beta 1 KL(p || q)
    (reverse). TRL has no T^2 factor: at T = 1 the two are equal. Other arguments as :func:`kd_loss`.

    Raises:
        AuditError: beta outside [0, 1], and as :func:`kd_loss`.

    >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 3.0]]).log().nan_to_num(neginf=0.0)
    >>> round(float(jsd_loss(s, t, beta=0.5)), 6)  # JS divergence of (1/2, 1/2) and (1/4, 3/4)
    0.033822
    """
    return distillation_loss(student_logits, teacher_logits, labels, divergence="jsd", beta=beta,
                             temperature=temperature, kd_weight=kd_weight, label_smoothing=label_smoothing,
                             ignore_index=ignore_index, reduction=reduction, backend=backend)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
    divergence: str = "forward-kl", beta: float = 0.5, temperature: float = 1.0, kd_weight: float = 1.0,
    label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean", backend: str = "auto",
) -> torch.Tensor:
    """``(1-w) CE_LS(s, y) + w T^2 D(s, t)`` with the soft term ``divergence`` of :data:`DIVERGENCES`.

    Args:
        student_logits: (N, K) float tensor; the gradient flows here only.
        teacher_logits: (N, K) float tensor of the same shape (detached).
        labels: (N,) int class ids or ``ignore_index``; ``None`` for the pure soft loss over every row.
        divergence: "forward-kl" (:func:`kd_loss`), "reverse-kl" (:func:`reverse_kl_loss`) or "jsd"
            (:func:`jsd_loss`, with ``beta`` in [0, 1]; ignored otherwise).
        temperature: T > 0. kd_weight: w in [0, 1]. reduction: "mean" over kept rows, "sum" or "none".

    Returns:
        a float32 scalar (float64 for float64 inputs with the torch backend), or (N,) for "none".

    Raises:
        AuditError: mismatched shapes, unknown divergence, beta outside [0, 1], T <= 0, w outside [0, 1],
            labels out of range.

    >>> round(float(distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3), divergence="reverse-kl")), 6)
    0.0
    """
    _check(student_logits, labels, reduction, label_smoothing)
    if teacher_logits.shape != student_logits.shape:
        raise AuditError(
            f"expected teacher logits of shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}; "
            "teacher and student must predict the same classes"
        )
    if divergence not in DIVERGENCES:
        raise AuditError(f"expected divergence in {DIVERGENCES}, got {divergence!r}")
    if not 0.0 <= beta <= 1.0:
        raise AuditError(f"expected beta in [0, 1] (0: forward KL, 1: reverse KL), got {beta}")
    if not temperature > 0:
        raise AuditError(f"expected temperature > 0, got {temperature}")
    if not 0.0 <= kd_weight <= 1.0:
        raise AuditError(f"expected kd_weight in [0, 1], got {kd_weight}")
    if labels is not None:
        _check_labels(labels, student_logits.shape[1], ignore_index)
    if divergence == "jsd" and beta in (0.0, 1.0):  # TRL's limits: the JSD's ends are the two KLs
        divergence = "forward-kl" if beta == 0.0 else "reverse-kl"
    options = dict(temperature=temperature, kd_weight=kd_weight, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, reduction=reduction)
    if resolve_backend(backend, student_logits) == "triton":
        from audit.losses import kernels

        return kernels.distillation_loss(student_logits, teacher_logits, labels, divergence=divergence, beta=beta,
                                         **options)
    return reference.distillation_loss(student_logits, teacher_logits, labels, divergence=divergence, beta=beta,
                                       **options)
