"""KD loss: the torch backend against F.kl_div / F.cross_entropy, the Triton kernel against float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditError
from audit.losses import kd_loss

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _kl_batchmean(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(
        F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
        log_target=True, reduction="batchmean",
    )


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_torch_backend_pure_soft_is_t2_kl_div(temperature: float, run) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 12, 9, generator=g, dtype=torch.float64)
    value, grad = run("kd", s, t, None, backend="torch", temperature=temperature)
    leaf = s.clone().requires_grad_()
    expected = temperature**2 * _kl_batchmean(leaf, t, temperature)
    expected.backward()
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-12, atol=1e-12)


def test_torch_backend_with_labels_mixes_ls_ce_and_kl(run) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 10, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (10,), generator=g)
    labels[3] = -100
    temperature, w, a = 2.0, 0.3, 0.1
    value, grad = run("kd", s, t, labels, backend="torch", temperature=temperature, kd_weight=w,
                      label_smoothing=a, reduction="none")
    kept = labels != -100
    ce = F.cross_entropy(s, labels, label_smoothing=a, reduction="none")
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                  log_target=True, reduction="none").sum(-1)
    expected = torch.where(kept, (1 - w) * ce + w * temperature**2 * kl, 0.0)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    # Per row: (1-w)(p - q') + w T (softmax(s/T) - softmax(t/T)) (CLAIMS.md P6 with smoothing).
    target = (1 - a) * F.one_hot(labels.clamp(min=0), 6).double() + a / 6
    closed = (1 - w) * (s.softmax(-1) - target) + w * temperature * ((s / temperature).softmax(-1)
                                                                     - (t / temperature).softmax(-1))
    torch.testing.assert_close(grad, torch.where(kept[:, None], closed, 0.0), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 48),
    k=st.sampled_from([1, 2, 3, 7, 64, 100, 257, 300]),
    dtype=st.sampled_from(DTYPES),
    temperature=st.floats(0.25, 100.0),
    kd_weight=st.floats(0.0, 1.0),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    labels=st.sampled_from(["none", "all kept", "half ignored", "all ignored"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_float64_reference(
    n, k, dtype, temperature, kd_weight, smoothing, labels, reduction, seed, check, device,
):
    g = torch.Generator().manual_seed(seed)
    s, t = (3 * torch.randn(2, n, k, generator=g)).to(dtype).to(device)
    y = None if labels == "none" else torch.randint(0, k, (n,), generator=g).to(device)
    if labels == "half ignored":
        y[::2] = -100
    elif labels == "all ignored":
        y[:] = -100
    go = torch.rand(n, generator=g).to(device) + 0.5 if reduction == "none" else None
    # At large T, softmax(s/T) and softmax(t/T) differ by O(1/T): their fp32 difference keeps an absolute
    # error ~eps p while shrinking, so the gradient's error relative to its size grows like T.
    check("kd", s, t, y, grad_output=go, temperature=temperature, kd_weight=kd_weight,
          label_smoothing=smoothing, reduction=reduction, loss_rtol=1e-4, grad_atol=1e-6 * max(1.0, temperature / 10))


@pytest.mark.parametrize("labelled", [False, True])
def test_bf16_gradient_no_worse_than_torch_bf16(labelled: bool, run, truth, device) -> None:
    g = torch.Generator().manual_seed(2)
    s, t = (3 * torch.randn(2, 64, 300, generator=g)).bfloat16().to(device)
    y = torch.randint(0, 300, (64,), generator=g).to(device) if labelled else None
    options = dict(temperature=2.0, kd_weight=0.5, label_smoothing=0.1)
    _, true_grad = truth("kd", s, t, y, **options)
    _, ours = run("kd", s, t, y, backend="triton", **options)
    # torch's own bf16 computation: the reference's ops run in bf16 (no float32 upcast).
    leaf = s.detach().requires_grad_()
    kl = 4.0 * F.kl_div(F.log_softmax(leaf / 2.0, -1), F.log_softmax(t / 2.0, -1), log_target=True,
                        reduction="none").sum(-1)
    rows = kl if y is None else 0.5 * F.cross_entropy(leaf, y, label_smoothing=0.1, reduction="none") + 0.5 * kl
    rows.mean().backward()
    assert leaf.grad.dtype == torch.bfloat16
    our_error = (ours.double() - true_grad).abs().max()
    torch_error = (leaf.grad.double() - true_grad).abs().max()
    assert our_error <= 1.05 * torch_error, (our_error, torch_error)


def test_reference_kd_weight_ignored_without_labels(truth) -> None:
    s, t = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(3))
    a, _ = truth("kd", s, t, None, temperature=2.0, kd_weight=0.25)
    b, _ = truth("kd", s, t, None, temperature=2.0, kd_weight=1.0)
    assert a == b


def test_teacher_gets_no_gradient(device) -> None:
    s, t = torch.randn(2, 4, 5, device=device).unbind(0)
    t = t.clone().requires_grad_()
    s = s.clone().requires_grad_()
    kd_loss(s, t, temperature=2.0, backend="triton").backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_bad_temperature_raises(temperature: float, device) -> None:
    s = torch.zeros(2, 3, device=device)
    with pytest.raises(AuditError, match="temperature > 0"):
        kd_loss(s, s, temperature=temperature, backend="triton")
