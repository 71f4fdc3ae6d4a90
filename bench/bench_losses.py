"""Forward + backward of the LS and KD losses per provider, by the protocol of ../shared/BENCHMARKS.md.

Run: ``python -m pytest bench/bench_losses.py --benchmark-json=out.json`` (add ``-m ""`` to include the
cases marked slow: torch.compile on CPU, ~1 minute of compiling per case).

Providers: eager (F.cross_entropy / F.kl_div on float32 upcasts), compile (``torch.compile`` of eager,
``dynamic=False``, compiled before timing), liger (only if ``liger_kernel`` is importable; KD as the
composite of BENCHMARKS.md), ours (the fused Triton kernels) and ours-torch (the project's torch
backend). Each records in ``extra_info``: ms (``triton.testing.do_bench`` median on GPU, the
pytest-benchmark median on CPU), GB/s over the fewest bytes a fused kernel moves (LS ``2 N V b``, KD
``3 N V b``), the percentage of the copy bandwidth measured in the same run, and the extra memory of a
step (CUDA peak minus allocated before; None on CPU).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from audit.losses import kd_loss, kernels, label_smoothed_cross_entropy

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SMOOTHING, TEMPERATURE, KD_WEIGHT = 0.1, 2.0, 0.5

# (loss, N, V, dtype): the GPU shapes of BENCHMARKS.md, and CPU-sized ones for a machine without a GPU.
GPU_CASES = [
    ("ls", 8192, 32000, torch.bfloat16), ("kd", 8192, 32000, torch.bfloat16),
    ("ls", 4096, 128256, torch.bfloat16), ("kd", 4096, 128256, torch.bfloat16),
    ("ls", 8192, 32000, torch.float32), ("kd", 8192, 32000, torch.float32),
    ("ls", 1048576, 4, torch.float32), ("kd", 1048576, 4, torch.float32),
    ("ls", 131072, 1000, torch.float32), ("kd", 131072, 1000, torch.float32),
]
CPU_CASES = [
    ("ls", 4096, 4, torch.float32), ("kd", 4096, 4, torch.float32),
    ("ls", 1024, 1000, torch.float32), ("kd", 1024, 1000, torch.float32),
]
CASES = GPU_CASES if CUDA else CPU_CASES
PROVIDERS = ["eager", "compile", "liger", "ours", "ours-torch"]
COPY_BYTES = 2 * 2**30 if CUDA else 256 * 2**20


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _eager(loss: str) -> Callable:
    def ls(s, t, y):
        return F.cross_entropy(s.float(), y, label_smoothing=SMOOTHING)

    def kd(s, t, y):
        kl = F.kl_div(F.log_softmax(s.float() / TEMPERATURE, -1), F.log_softmax(t.float() / TEMPERATURE, -1),
                      log_target=True, reduction="batchmean")
        return (1 - KD_WEIGHT) * F.cross_entropy(s.float(), y) + KD_WEIGHT * TEMPERATURE**2 * kl

    return ls if loss == "ls" else kd


def _liger(loss: str) -> Callable:
    from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss

    ce_ls, ce, kl_div = LigerCrossEntropyLoss(label_smoothing=SMOOTHING), LigerCrossEntropyLoss(), \
        LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def ls(s, t, y):
        return ce_ls(s, y)

    def kd(s, t, y):
        # Liger overwrites its input logits with their gradient: the KL branch goes first.
        kl = kl_div(torch.log_softmax(s / TEMPERATURE, -1), torch.log_softmax(t / TEMPERATURE, -1))
        return KD_WEIGHT * TEMPERATURE**2 * kl + (1 - KD_WEIGHT) * ce(s, y)

    return ls if loss == "ls" else kd


def _ours(loss: str, backend: str) -> Callable:
    def ls(s, t, y):
        return label_smoothed_cross_entropy(s, y, label_smoothing=SMOOTHING, backend=backend)

    def kd(s, t, y):
        return kd_loss(s, t, y, temperature=TEMPERATURE, kd_weight=KD_WEIGHT, backend=backend)

    return ls if loss == "ls" else kd


def _provider(name: str, loss: str) -> Callable:
    """The loss function of one provider, or ``pytest.skip`` with the reason it cannot run here."""
    if name == "eager":
        return _eager(loss)
    if name == "compile":
        return torch.compile(_eager(loss), dynamic=False)
    if name == "liger":
        if not CUDA or importlib.util.find_spec("liger_kernel") is None:
            pytest.skip("liger needs CUDA and liger_kernel (pip install liger-kernel==0.8.5)")
        return _liger(loss)
    if name == "ours":
        if not CUDA:
            pytest.skip("Triton on CPU runs under the interpreter (numpy), too slow to time meaningfully")
        if not kernels.available():
            pytest.skip("Triton not installed")
        return _ours(loss, "triton")
    return _ours(loss, "torch")


def _timer(fn: Callable[[], None]) -> Callable[[], float]:
    """Median milliseconds of ``fn``; CUDA is synchronised inside ``fn``."""
    if CUDA:
        import triton.testing

        return lambda: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    def median() -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    return median


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """Copy bandwidth of this machine in the same run: ``y.copy_(x)``, read + write bytes per second."""
    x = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=DEVICE).fill_(1.0)
    y = torch.empty_like(x)

    def copy() -> None:
        y.copy_(x)
        _sync()

    copy()
    return 2 * COPY_BYTES / (_timer(copy)() * 1e-3) / 1e9


def _case_id(case: tuple) -> str:
    loss, n, v, dtype = case
    return f"{loss}-{n}x{v}-{str(dtype).removeprefix('torch.')}"


def _params() -> list:
    params = []
    for case in CASES:
        for provider in PROVIDERS:
            marks = [pytest.mark.slow] if provider == "compile" and not CUDA else []
            params.append(pytest.param(case, provider, marks=marks, id=f"{_case_id(case)}-{provider}"))
    return params


@pytest.mark.parametrize(("case", "provider"), _params())
def test_forward_backward(case: tuple, provider: str, benchmark, copy_gbps: float) -> None:
    loss, n, v, dtype = case
    fn = _provider(provider, loss)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    s = (3 * torch.randn(n, v, generator=g, device=DEVICE)).to(dtype).requires_grad_()
    t = (3 * torch.randn(n, v, generator=g, device=DEVICE)).to(dtype)
    y = torch.randint(0, v, (n,), generator=g, device=DEVICE)

    def step() -> None:
        s.grad = None
        fn(s, t, y).backward()
        _sync()

    step()  # compiles (torch.compile, Triton) outside the timing
    step()  # leaves a gradient buffer allocated, as in training
    extra_mib = None
    if CUDA:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    benchmark.pedantic(step, rounds=20 if CUDA else 5, iterations=1, warmup_rounds=2 if CUDA else 1)
    ms = _timer(step)() if CUDA else 1e3 * benchmark.stats.stats.median
    moved = (2 if loss == "ls" else 3) * n * v * s.element_size()
    gbps = moved / (ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        loss=loss, provider=provider, n=n, v=v, dtype=str(dtype), device=DEVICE, ms=ms, gbps=gbps,
        copy_gbps=copy_gbps, pct_of_copy=100 * gbps / copy_gbps, extra_mib=extra_mib,
    )
