"""Reverse KL and generalised JSD: the torch reference against TRL's formula and finite differences, the fused
Triton kernels against the float64 reference (every schedule of :func:`audit.losses.kernels.fused.config`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.losses import distillation_loss, jsd_loss, kd_loss, kernels, reverse_kl_loss
from audit.losses.kernels import fused

DIVERGENCES = [("reverse-kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)]


def _trl_jsd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, beta: float,
             temperature: float) -> torch.Tensor:
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (reduction "batchmean" over the kept tokens), written out:
    logits divided by T, no T^2; beta 0 and 1 are forward and reverse KL; otherwise the log-mixture by
    logsumexp and ``beta KL(teacher || m) + (1-beta) KL(student || m)``."""
    log_p = F.log_softmax(student / temperature, dim=-1)
    log_q = F.log_softmax(teacher / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=log_p.dtype)
        log_m = torch.logsumexp(torch.stack([log_p + torch.log1p(-b), log_q + torch.log(b)]), dim=0)
        jsd = b * F.kl_div(log_m, log_q, reduction="none", log_target=True) \
            + (1 - b) * F.kl_div(log_m, log_p, reduction="none", log_target=True)
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def _logits(n: int, k: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(2, n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    y[::3] = -100
    return s.to(dtype), t.to(dtype), y


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_jsd_is_trl_times_t_squared(beta: float, temperature: float) -> None:
    s, t, y = _logits(9, 11, 0)
    ours = jsd_loss(s, t, y, beta=beta, temperature=temperature, backend="torch")
    expected = temperature**2 * _trl_jsd(s, t, y, beta, temperature)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def test_jsd_ends_are_the_two_kls_and_the_middle_is_the_js_divergence() -> None:
    s, t, y = _logits(6, 5, 1)
    options = dict(temperature=1.5, backend="torch")
    torch.testing.assert_close(jsd_loss(s, t, y, beta=0.0, **options), kd_loss(s, t, y, **options))
    torch.testing.assert_close(jsd_loss(s, t, y, beta=1.0, **options), reverse_kl_loss(s, t, y, **options))
    # beta 1/2: the symmetric Jensen-Shannon divergence, H(m) - (H(p) + H(q)) / 2
    p, q = (s / 1.5).softmax(-1), (t / 1.5).softmax(-1)
    m = (p + q) / 2

    def entropy(x: torch.Tensor) -> torch.Tensor:
        return -(x * x.log()).sum(-1)

    js = (entropy(m) - (entropy(p) + entropy(q)) / 2)[y != -100].mean()
    torch.testing.assert_close(jsd_loss(s, t, y, beta=0.5, **options), 1.5**2 * js, rtol=1e-12, atol=1e-14)


def test_reverse_kl_is_kl_div_with_the_roles_swapped() -> None:
    s, t, y = _logits(7, 6, 2)
    expected = F.kl_div(F.log_softmax(t / 3, -1), F.log_softmax(s / 3, -1), log_target=True, reduction="none").sum(-1)
    ours = reverse_kl_loss(s, t, y, temperature=3.0, reduction="none", backend="torch")
    torch.testing.assert_close(ours, torch.where(y != -100, 9 * expected, 0.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_reference_gradient_matches_finite_differences(divergence: str, beta: float) -> None:
    s, t, y = _logits(4, 5, 3)
    s.requires_grad_()

    def loss(x: torch.Tensor) -> torch.Tensor:
        return distillation_loss(x, t, y, divergence=divergence, beta=beta, temperature=2.0, kd_weight=0.7,
                                 label_smoothing=0.1, reduction="sum", backend="torch")

    assert torch.autograd.gradcheck(loss, (s,), eps=1e-6, atol=1e-7, rtol=1e-6)


def _run(backend: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, grad_output=None, **options):
    leaf = s.detach().clone().requires_grad_()
    value = distillation_loss(leaf, t, y, backend=backend, **options)
    value.backward(torch.ones_like(value) if grad_output is None else grad_output)
    return value.detach(), leaf.grad


def _check_kernel(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, *, loss_rtol: float = 1e-5,
                  grad_rtol: float = 2e-5, grad_atol: float | None = None, grad_output=None, **options) -> None:
    """The Triton backend against the float64 reference on the same rounded inputs: loss and gradient (absolute
    tolerance ``grad_atol``, default 1e-6 of the largest reference gradient)."""
    if not kernels.available():
        pytest.skip("Triton not installed")
    value, grad = _run("triton", s, t, y, grad_output, **options)
    ref_value, ref_grad = _run("torch", s.double(), t.double(), y, None if grad_output is None else
                               grad_output.double(), **options)
    assert value.dtype == torch.float32 and grad.dtype == s.dtype
    scale = max(ref_value.abs().max().item() if ref_value.numel() else 0.0, 1.0)
    torch.testing.assert_close(value.double(), ref_value, rtol=loss_rtol, atol=loss_rtol * scale)
    atol = 1e-6 * ref_grad.abs().max().item() if grad_atol is None else grad_atol
    torch.testing.assert_close(grad.double(), ref_grad, rtol=grad_rtol, atol=atol)


@pytest.fixture(params=["many rows", "one row", "looped"])
def schedule(request, monkeypatch) -> int:
    """K for each schedule; "looped" lowers the register cap so that a small K loops over column blocks."""
    if request.param == "looped":
        monkeypatch.setattr(fused, "SINGLE_PASS_MAX_K", 64)
        monkeypatch.setattr(fused, "MANY_ROWS_MAX_K", 16)
        assert not fused.config(100, 2).single_pass
        return 100
    return {"many rows": 7, "one row": 1500}[request.param]


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("labels", ["none", "half ignored"])
def test_kernel_matches_float64_reference(divergence, beta, labels, schedule, device) -> None:
    s, t, y = _logits(6, schedule, 4, torch.float32)
    y = None if labels == "none" else y
    options = dict(divergence=divergence, beta=beta, temperature=2.0)
    if y is not None:
        options.update(kd_weight=0.6, label_smoothing=0.1)
    _check_kernel(s.to(device), t.to(device), None if y is None else y.to(device), **options)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:2])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_kernel_reductions_and_grad_output(divergence, beta, reduction, device) -> None:
    s, t, y = _logits(5, 40, 5, torch.float32)
    go = torch.rand(5, generator=torch.Generator().manual_seed(0)) + 0.5 if reduction == "none" else None
    _check_kernel(s.to(device), t.to(device), y.to(device), grad_output=None if go is None else go.to(device),
                  divergence=divergence, beta=beta, temperature=0.7, kd_weight=0.5, reduction=reduction)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:2])
@pytest.mark.parametrize("dtype,grad_rtol", [(torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
def test_kernel_half_precision(divergence, beta, dtype, grad_rtol, device) -> None:
    s, t, _ = _logits(8, 300, 6, dtype)
    # one ulp of the stored gradient (bf16: 2^-7, the interpreter truncates where the GPU rounds; fp16: 2^-10)
    _check_kernel(s.to(device), t.to(device), None, grad_rtol=grad_rtol, grad_atol=1e-7, divergence=divergence,
                  beta=beta)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:2])
def test_student_close_to_teacher_keeps_its_small_loss(divergence, beta, device) -> None:
    g = torch.Generator().manual_seed(7)
    t = 3 * torch.randn(4, 200, generator=g)
    s = t + 1e-3 * torch.randn(4, 200, generator=g)
    # the divergence is ~1e-7: a difference of sums in fp32 would lose it; the phi form keeps 4 digits. The
    # gradient ~ p (log p/q - C) inherits fp32's error in log p/q (an ulp of the logits, ~2e-7), as forward
    # KL's p - q does: absolute, not relative, to the O(1e-3) gradient.
    _check_kernel(s.to(device), t.to(device), None, loss_rtol=1e-4, grad_atol=1e-7, divergence=divergence, beta=beta)
    value, _ = _run("triton", s.to(device), t.to(device), None, divergence=divergence, beta=beta)
    assert 0 < value.item() < 1e-5


@pytest.mark.parametrize("divergence,beta", DIVERGENCES[:2])
def test_equal_logits_give_zero_and_masked_classes_stay_finite(divergence, beta, device) -> None:
    s, t, y = _logits(4, 9, 8, torch.float32)
    value, grad = _run("triton", s.to(device), s.to(device), None, divergence=divergence, beta=beta)
    assert value.item() == pytest.approx(0.0, abs=1e-7) and grad.abs().max().item() < 1e-7
    s[:, 3] = t[:, 3] = float("-inf")  # a class both models mask (a padded vocabulary)
    _check_kernel(s.to(device), t.to(device), y.to(device), divergence=divergence, beta=beta, kd_weight=0.5)


@pytest.mark.parametrize("bad", [dict(beta=-0.1), dict(beta=1.5), dict(beta=math.nan), dict(divergence="kl")])
def test_bad_options_raise(bad: dict) -> None:
    s = torch.zeros(2, 3)
    options = {"divergence": "jsd", **bad}
    with pytest.raises(AuditError, match="expected (beta|divergence)"):
        distillation_loss(s, s, **options)
