"""The correctness cases of docs/BENCHMARKS.md (each broke a real peer), for every fused loss.

Kinds: "ls" (label smoothing 0.1), "kd" (T=2, w=0.5, smoothing 0.1, labels) and "kd_soft" (labels None).
Shapes are CPU-sized (the Triton interpreter); K values are chosen to hit every schedule of
:func:`audit.losses.kernels.fused.config`: many rows per program, one row in registers, looped.
"""

from __future__ import annotations

import os

import pytest
import torch

from audit.errors import AuditError
from audit.losses import kd_loss, kernels, label_smoothed_cross_entropy
from audit.losses.kernels import fused

KINDS = ["ls", "kd", "kd_soft"]
# many rows per program / one row in registers / LS in registers, KD looped over column blocks
SCHEDULE_K = [5, 3000, 9000]
# The same, with the looped case (slowest under the interpreter) left to the slow run.
QUICK_K = [5, 3000, pytest.param(9000, marks=pytest.mark.slow)]


def _call(kind: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **options) -> tuple:
    """(loss name, positional inputs, options) for one kind; ``options`` override the defaults."""
    if kind == "ls":
        return "ls", (s, y), {"label_smoothing": 0.1, **options}
    if kind == "kd":
        return "kd", (s, t, y), {"temperature": 2.0, "kd_weight": 0.5, "label_smoothing": 0.1, **options}
    options.pop("ignore_index", None)
    return "kd", (s, t, None), {"temperature": 2.0, **options}


def _logits(n: int, k: int, seed: int, device: str, dtype: torch.dtype = torch.float32) -> tuple:
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(2, n, k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return s.to(dtype).to(device), t.to(dtype).to(device), y.to(device)


def test_schedules_cover_the_three_variants() -> None:
    seen = {(c.block_rows > 1, c.single_pass) for k in SCHEDULE_K for c in (fused.config(k, 1), fused.config(k, 2))}
    assert seen == {(True, True), (False, True), (False, False)}


# 1. confident rows
@pytest.mark.parametrize("margin", [10.0, 20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", SCHEDULE_K)
def test_confident_rows_keep_the_true_class_gradient(margin, dtype, k, check, device) -> None:
    """p_y -> 1: with no smoothing, and a teacher equal to the student (zero KL gradient), the true-class
    gradient is -(weight) sum_{j != y} p_j, tiny but exact; p_y - 1 in fp32 would give 0 at margin 20."""
    s, _, y = _logits(4, k, 0, device)
    rows = torch.arange(4, device=device)
    s[rows, y] = s.max(-1).values + margin
    s = s.to(dtype)
    _, grad = check("ls", s, y, label_smoothing=0.0)
    assert (grad[rows, y] < 0).all()
    _, grad = check("kd", s, s, y, temperature=1.0, kd_weight=0.5)
    assert (grad[rows, y] < 0).all()


# 2. student ~= teacher
@pytest.mark.parametrize("k", SCHEDULE_K)
def test_student_equal_to_teacher_gives_exact_zero(k, run, device) -> None:
    s, _, _ = _logits(4, k, 1, device)
    value, grad = run("kd", s, s, None, backend="triton", temperature=2.0)
    assert value.item() == 0.0 and (grad == 0).all()


@pytest.mark.parametrize("kind", ["kd", "kd_soft"])
@pytest.mark.parametrize("k", SCHEDULE_K)
def test_student_close_to_teacher(kind, k, check, device) -> None:
    s, _, y = _logits(4, k, 2, device)
    t = s + 1e-3 * torch.randn(s.shape, generator=torch.Generator().manual_seed(3)).to(device)
    name, args, options = _call(kind, s, t, y, kd_weight=1.0, label_smoothing=0.0)
    # The KL loss is second order in t - s and is computed without cancellation (relative error ~1e-5 here,
    # where torch's float32 KL is off by ~100%); the gradient p - q keeps fp32's absolute error ~eps p,
    # which is ~1e-4 of a gradient of size ~1e-3 p.
    check(name, *args, loss_rtol=1e-3, loss_atol=0.0, grad_atol=1e-3, **options)


# 3. large common offset
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", SCHEDULE_K)
def test_large_common_offset(kind, k, check, device) -> None:
    s, t, y = _logits(4, k, 4, device)
    name, args, options = _call(kind, s + 1e4, t + 1e4, y)
    check(name, *args, loss_rtol=1e-5, **options)


# 4. -inf masked logits
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", SCHEDULE_K)
def test_masked_logits(kind, k, check, device) -> None:
    s, t, y = _logits(4, k, 5, device)
    g = torch.Generator().manual_seed(6)
    masked = (torch.rand(4, k, generator=g) < 0.5).to(device)
    masked[3] = True  # all classes but the label masked
    masked[torch.arange(4), y] = False
    s, t = s.masked_fill(masked, float("-inf")), t.masked_fill(masked, float("-inf"))
    name, args, options = _call(kind, s, t, y)
    value, grad = check(name, *args, **options)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert (grad[masked] == 0).all()


@pytest.mark.parametrize("k", [5, 9000])
def test_teacher_masks_more_than_student(k, check, device) -> None:
    s, t, _ = _logits(4, k, 7, device)
    t[:, ::2] = float("-inf")
    check("kd", s, t, None, temperature=2.0)


# 5. very peaked and very flat teachers
@pytest.mark.parametrize("kind", ["kd", "kd_soft"])
@pytest.mark.parametrize(("temperature", "teacher_scale"), [(0.5, 10.0), (10.0, 1.0)])
@pytest.mark.parametrize("k", QUICK_K)
def test_peaked_and_flat_teachers(kind, temperature, teacher_scale, k, check, device) -> None:
    s, t, y = _logits(8, k, 8, device)
    name, args, options = _call(kind, s, teacher_scale * t, y, temperature=temperature)
    check(name, *args, loss_rtol=1e-4, **options)


# 6. ignore_index
@pytest.mark.parametrize("kind", ["ls", "kd"])
@pytest.mark.parametrize("ignored", ["none", "half", "all"])
@pytest.mark.parametrize(("k", "reduction"), [(5, "mean"), (5, "sum"), (5, "none"), (3000, "mean"), (9000, "mean")])
def test_ignore_index(kind, ignored, k, reduction, check, device) -> None:
    s, t, y = _logits(6, k, 9, device)
    y = y.clone()
    if ignored == "half":
        y[1::2] = 7
    elif ignored == "all":
        y[:] = 7
    name, args, options = _call(kind, s, t, y, ignore_index=7 if k > 7 else -100, reduction=reduction)
    if k <= 7:
        args = tuple(torch.where(a == 7, -100, a) if a is y else a for a in args)
    value, grad = check(name, *args, **options)
    if ignored == "all":
        assert (value == 0).all() and (grad == 0).all()


# 7. reduction "none" with a non-uniform grad_output, and a scaled scalar loss
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", QUICK_K)
def test_non_uniform_grad_output(kind, k, check, device) -> None:
    s, t, y = _logits(6, k, 10, device)
    go = torch.linspace(-2.0, 3.0, 12, device=device)[::2]  # strided too
    name, args, options = _call(kind, s, t, y, reduction="none")
    check(name, *args, grad_output=go, **options)
    for reduction in ("mean", "sum"):
        name, args, options = _call(kind, s, t, y, reduction=reduction)
        check(name, *args, grad_output=torch.tensor(2.5, device=device), **options)


# 8. non-contiguous inputs
def _strided(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` (N, K), stored sliced, with stride-2 rows, or transposed."""
    n, k = x.shape
    if layout == "sliced":
        base = torch.zeros(n, k + 3, dtype=x.dtype, device=x.device)
        base[:, 1:k + 1] = x
        return base[:, 1:k + 1]
    if layout == "stride-2 rows":
        base = torch.zeros(2 * n, k, dtype=x.dtype, device=x.device)
        base[::2] = x
        return base[::2]
    return x.T.contiguous().T


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["sliced", "stride-2 rows", "transposed"])
@pytest.mark.parametrize("k", QUICK_K)
def test_non_contiguous_inputs(kind, layout, k, run, device) -> None:
    s, t, y = _logits(6, k, 11, device)
    s_view, t_view = _strided(s, layout), _strided(t, layout)
    y_view = torch.stack([y, torch.zeros_like(y)], 1).reshape(-1)[::2]
    assert not s_view.is_contiguous() and not y_view.is_contiguous()
    name, args, options = _call(kind, s, t, y)
    expected = run(name, *args, backend="triton", **options)
    name, args, options = _call(kind, s_view, t_view, y_view)
    got = run(name, *args, backend="triton", **options)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# 9. K in {1, 2}, K not a multiple of a block, the largest vocabularies
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 2, 3, 257, 1025, 16385])
def test_class_counts(kind, k, check, device) -> None:
    s, t, y = _logits(5, k, 12, device, torch.bfloat16 if k % 2 else torch.float32)
    name, args, options = _call(kind, s, t, y)
    check(name, *args, loss_rtol=1e-4, **options)


@pytest.mark.parametrize("kind", ["ls", "kd", pytest.param("kd_soft", marks=pytest.mark.slow)])
@pytest.mark.parametrize("k", [151936, 256000])
def test_large_vocabularies(kind, k, check, device) -> None:
    s, t, y = _logits(2, k, 13, device, torch.bfloat16)
    name, args, options = _call(kind, s, t, y)
    check(name, *args, loss_rtol=1e-4, **options)


# 10. N * K > 2^31: 64-bit offsets
@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_more_than_2_to_31_elements(kind, truth, device) -> None:
    n, k = 16_800, 128_256  # 2.15e9 elements, 4.3 GB per bf16 tensor
    assert n * k > 2**31
    g = torch.Generator(device=device).manual_seed(14)
    s = torch.randn(n, k, generator=g, device=device, dtype=torch.bfloat16).requires_grad_()
    t = torch.randn(n, k, generator=g, device=device, dtype=torch.bfloat16)
    y = torch.randint(0, k, (n,), generator=g, device=device)
    name, args, options = _call(kind, s, t, y, reduction="none")
    rows = kd_loss(*args, backend="triton", **options) if name == "kd" else \
        label_smoothed_cross_entropy(*args, backend="triton", **options)
    rows[-3:].sum().backward()
    tail = slice(n - 3, n)
    _, _, options = _call(kind, s, t, y, reduction="none")
    name, args, _ = _call(kind, s.detach()[tail], t[tail], y[tail])
    ref_rows, ref_grad = truth(name, *args, **options)
    torch.testing.assert_close(rows[tail].detach().double(), ref_rows, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.grad[tail].double(), ref_grad, rtol=4e-3, atol=1e-6)
    assert (s.grad[:-3] == 0).all()


# 11. label dtypes and out-of-range labels
@pytest.mark.parametrize("kind", ["ls", "kd"])
@pytest.mark.parametrize("k", [5, 9000])
def test_int32_and_int64_labels_agree(kind, k, run, device) -> None:
    s, t, y = _logits(6, k, 15, device)
    y[0] = -100
    name, args, options = _call(kind, s, t, y)
    expected = run(name, *args, backend="triton", **options)
    name, args, options = _call(kind, s, t, y.int())
    torch.testing.assert_close(run(name, *args, backend="triton", **options), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [5, -1, 1000])
def test_out_of_range_labels_raise(bad, device) -> None:
    s = torch.zeros(3, 5, device=device)
    with pytest.raises(AuditError, match=r"expected labels in \[0, 5\)"):
        kd_loss(s, s, torch.tensor([0, bad, 1], device=device), backend="triton")


# The autograd Function
def test_second_backward_raises(device) -> None:
    s = torch.randn(3, 4, device=device, requires_grad=True)
    value = label_smoothed_cross_entropy(s, torch.tensor([0, 1, 2], device=device), backend="triton")
    value.backward(retain_graph=True)
    with pytest.raises(AuditError, match="one backward pass"):
        value.backward()


@pytest.mark.parametrize("kind", KINDS)
def test_forward_without_grad_matches(kind, run, device) -> None:
    s, t, y = _logits(6, 300, 16, device)
    name, args, options = _call(kind, s, t, y)
    expected, _ = run(name, *args, backend="triton", **options)
    fn = kd_loss if name == "kd" else label_smoothed_cross_entropy
    with torch.no_grad():
        torch.testing.assert_close(fn(*args, backend="triton", **options), expected, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal only applies without CUDA")
def test_cpu_tensors_without_interpreter_raise(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not kernels.available()
    with pytest.raises(AuditError, match="expected CUDA tensors"):
        label_smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), backend="triton")
    assert os.environ.get("TRITON_INTERPRET") is None
