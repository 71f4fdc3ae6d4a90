"""Shared set-up for the loss tests (the Triton interpreter is switched on in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from audit.losses import kd_loss, kernels, label_smoothed_cross_entropy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOSSES = {"ls": label_smoothed_cross_entropy, "kd": kd_loss}


def evaluate(
    loss: str, student: torch.Tensor, *args: torch.Tensor | None, backend: str,
    grad_output: torch.Tensor | None = None, **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its gradient w.r.t. ``student`` (strides kept) for one backend.

    ``args`` are (labels,) for "ls" and (teacher, labels) for "kd"; ``grad_output`` defaults to ones.
    """
    leaf = student.detach().requires_grad_()
    value = LOSSES[loss](leaf, *args, backend=backend, **options)
    value.backward(torch.ones_like(value) if grad_output is None else grad_output)
    return value.detach(), leaf.grad


def reference(
    loss: str, student: torch.Tensor, *args: torch.Tensor | None, grad_output: torch.Tensor | None = None, **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 truth from the same rounded inputs: the torch backend on ``.double()`` copies."""
    args = tuple(a.double() if a is not None and a.is_floating_point() else a for a in args)
    go = None if grad_output is None else grad_output.double()
    return evaluate(loss, student.double(), *args, backend="torch", grad_output=go, **options)


# Rounding of the stored gradient plus fp32 arithmetic: half an ulp, except that the Triton interpreter
# truncates fp32 -> bf16 (a whole ulp, 2^-7); the GPU rounds to nearest.
GRAD_RTOL = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3 if DEVICE == "cpu" else 4e-3}


def assert_close_to_reference(
    loss: str, student: torch.Tensor, *args: torch.Tensor | None, grad_output: torch.Tensor | None = None,
    loss_rtol: float = 2e-5, loss_atol: float | None = None, grad_atol: float = 1e-6, **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Triton backend and check loss and gradient against the float64 reference; returns both.

    The loss tolerance is ``loss_rtol`` relative, plus ``loss_atol`` (default: ``loss_rtol`` times the
    largest reference loss, at least 1); the gradient's is per dtype (:data:`GRAD_RTOL`) relative, plus
    ``grad_atol`` times the largest reference gradient.
    """
    value, grad = evaluate(loss, student, *args, backend="triton", grad_output=grad_output, **options)
    ref_value, ref_grad = reference(loss, student, *args, grad_output=grad_output, **options)
    assert value.dtype == torch.float32 and grad.dtype == student.dtype and grad.shape == student.shape
    scale = ref_value.abs().max().item() if ref_value.numel() else 0.0
    atol = loss_rtol * max(scale, 1.0) if loss_atol is None else loss_atol
    torch.testing.assert_close(value.double(), ref_value, rtol=loss_rtol, atol=atol)
    # A grad_output other than 1 rescales the stored (already rounded) gradient: a second rounding.
    rtol = GRAD_RTOL[student.dtype] * (1 if grad_output is None or student.dtype == torch.float32 else 2)
    atol = grad_atol * ref_grad.abs().max().item() + (1e-7 if student.dtype == torch.float16 else 0.0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=max(atol, 1e-30))
    return value, grad


@pytest.fixture(scope="session")
def run() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`evaluate`: loss and student gradient for one backend."""
    return evaluate


@pytest.fixture(scope="session")
def truth() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`reference`: float64 loss and gradient from the torch backend."""
    return reference


@pytest.fixture(scope="session")
def check() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`assert_close_to_reference`: Triton vs float64 reference, loss and gradient."""
    if not kernels.available():
        pytest.skip("Triton not installed")
    return assert_close_to_reference
