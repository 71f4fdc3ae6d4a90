"""Label-smoothed cross entropy: the torch backend against PyTorch's own, the Triton kernel against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditError
from audit.losses import label_smoothed_cross_entropy

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _labels(n: int, k: int, ignored: str, generator: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, k, (n,), generator=generator)
    if ignored == "half":
        labels[::2] = -100
    elif ignored == "all":
        labels[:] = -100
    return labels


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_torch_backend_matches_pytorch(reduction: str, smoothing: float, run) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(16, 7, generator=g, dtype=torch.float64)
    labels = _labels(16, 7, "half", g)
    value, grad = run("ls", logits, labels, backend="torch", label_smoothing=smoothing, reduction=reduction)
    leaf = logits.clone().requires_grad_()
    expected = F.cross_entropy(leaf, labels, label_smoothing=smoothing, reduction=reduction)
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-12, atol=1e-12)


def test_torch_backend_gradient_is_p_minus_smoothed_target(run) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    a = 0.2
    _, grad = run("ls", logits, labels, backend="torch", label_smoothing=a, reduction="sum")
    target = (1 - a) * F.one_hot(labels, 4).double() + a / 4
    torch.testing.assert_close(grad, logits.softmax(-1) - target, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 48),
    k=st.sampled_from([1, 2, 3, 7, 64, 100, 257, 300]),
    dtype=st.sampled_from(DTYPES),
    smoothing=st.floats(0.0, 1.0),
    ignored=st.sampled_from(["none", "half", "all"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_dtype=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_float64_reference(n, k, dtype, smoothing, ignored, reduction, label_dtype, seed, check, device):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, k, generator=g)).to(dtype).to(device)
    labels = _labels(n, k, ignored, g).to(label_dtype).to(device)
    go = torch.rand(n, generator=g).to(device) + 0.5 if reduction == "none" else None
    check("ls", logits, labels, grad_output=go, label_smoothing=smoothing, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bf16_gradient_no_worse_than_torch_bf16(reduction: str, run, truth, device) -> None:
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(64, 300, generator=g)).bfloat16().to(device)
    labels = torch.randint(0, 300, (64,), generator=g).to(device)
    options = dict(label_smoothing=0.1, reduction=reduction)
    _, true_grad = truth("ls", logits, labels, **options)
    _, ours = run("ls", logits, labels, backend="triton", **options)
    leaf = logits.detach().requires_grad_()
    torch_bf16 = F.cross_entropy(leaf, labels, label_smoothing=0.1, reduction=reduction)
    torch_bf16.backward(torch.ones_like(torch_bf16))
    our_error = (ours.double() - true_grad).abs().max()
    torch_error = (leaf.grad.double() - true_grad).abs().max()
    assert our_error <= 1.05 * torch_error, (our_error, torch_error)


def test_out_of_range_labels_raise(device) -> None:
    logits = torch.zeros(3, 4, device=device)
    with pytest.raises(AuditError, match=r"labels in \[0, 4\)"):
        label_smoothed_cross_entropy(logits, torch.tensor([0, 4, 1], device=device), backend="triton")
    with pytest.raises(AuditError, match=r"labels in \[0, 4\)"):
        label_smoothed_cross_entropy(logits, torch.tensor([0, -1, 1], device=device), backend="triton")
