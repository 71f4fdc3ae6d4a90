"""Forward + backward of the LS and KD losses per provider, by the protocol of docs/BENCHMARKS.md.

Run: ``python -m pytest bench/bench_losses.py --benchmark-json=out.json`` (add ``-m ""`` to include the
cases marked slow: torch.compile on CPU, ~1 minute of compiling per case).

Providers: eager (F.cross_entropy / F.kl_div on float32 upcasts), compile (``torch.compile`` of eager,
``dynamic=False``, compiled before timing), liger (only if ``liger_kernel`` is importable; KD as the
composite of BENCHMARKS.md), ours (the fused Triton kernels) and ours-torch (the project's torch
backend). One set-up per case (:func:`case`) serves every provider: the inputs, the float64 reference
(the eager formula on ``.double()`` copies of the same rounded inputs) and the error of torch's own
computation in the inputs' dtype.

Every provider's loss and gradient are asserted against the float64 reference, always: the relative
error may not exceed ``max(FLOOR[dtype], 1.05 x torch's own error in that dtype)`` (BENCHMARKS.md: the
gradient no worse than torch's own). The targets of issue 5 and issue 16 (:data:`TARGETS`) are checked
on an H100/H200 only, through the ``targets`` fixture of ``bench/conftest.py``.

Each provider is its own benchmark and records in ``extra_info``: ms, GB/s over the fewest bytes a fused kernel
moves (LS ``2 N V b``, KD ``3 N V b``), the percentage of the copy bandwidth measured in the same run, the extra
memory of a step (CUDA peak minus allocated before; None on CPU), and the loss and gradient errors with their
bounds. On a GPU ms is ``triton.testing.do_bench``'s median. On a CPU a provider is timed by
:func:`fair.alternate` alternated with eager (the textbook baseline), one thread (the copy bandwidth too), the
same warm-up (which compiles and leaves the gradient buffer allocated) and rounds, each call
:func:`cpu_repeats` steps so that it lasts milliseconds; ms is its median a step, and ``ratios["eager /
<provider>"]`` its per-round speed-up over eager (median and range). No CPU target is set.
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from fair import alternate, thread_count
from kd_targets import Target

from audit.losses import kd_loss, kernels, label_smoothed_cross_entropy

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SMOOTHING, TEMPERATURE, KD_WEIGHT = 0.1, 2.0, 0.5

# (loss, N, V, dtype): the GPU shapes of BENCHMARKS.md, and CPU-sized ones for a machine without a GPU.
# The one place sizes are set: bench/gpu_report.py reads the cases back from the JSON's extra_info.
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
# Values only (no timing) of our kernels in every dtype at the GPU shapes, fp16 included.
VALUE_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
PROVIDERS = ["eager", "compile", "liger", "ours", "ours-torch"]
CPU_ROUNDS, CPU_WARMUP, CPU_CALL_ELEMENTS = 15, 2, 1 << 22  # a timed CPU call: steps over about 4M logits
COPY_BYTES = 2 * 2**30 if CUDA else 256 * 2**20

# Relative error floors: loss |L - L64| / max(|L64|, 1) (every provider accumulates in at least fp32);
# gradient max|g - g64| / max|g64| (half a unit in the last place of the stored dtype).
LOSS_FLOOR = 1e-5
GRAD_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
OWN_SLACK = 1.05  # "no worse than torch's own", with room for a different but equally good rounding

# Targets for "ours" on an H100/H200 (issue 16 absolute, issue 5 ratios to peers measured in the same run).
TARGET_MS = {
    ("kd", 8192, 32000, torch.bfloat16): 0.55, ("ls", 8192, 32000, torch.bfloat16): 0.37,
    ("ls", 1048576, 4, torch.float32): 0.04, ("kd", 1048576, 4, torch.float32): 0.07,
    ("kd", 4096, 128256, torch.bfloat16): 1.05,
}
TARGET_PCT_OF_COPY = {("kd", 8192, 32000, torch.bfloat16): 70.0, ("ls", 8192, 32000, torch.bfloat16): 70.0}
TARGET_SPEEDUP = {  # case -> {peer: at least this many times faster than the peer}
    ("kd", 8192, 32000, torch.bfloat16): {"compile": 3.0, "liger": 10.0},
    ("ls", 8192, 32000, torch.bfloat16): {"liger": 2.5},
    ("ls", 1048576, 4, torch.float32): {"compile": 10.0},
    ("kd", 1048576, 4, torch.float32): {"compile": 10.0},
}
EXTRA_MEMORY_FRACTION = 0.02  # "about zero": at most 2% of one logits tensor beyond the gradient
_ms: dict[tuple, float] = {}  # (case, provider) -> ms, for the ratio targets


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def eager(loss: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32):
    """BENCHMARKS.md's eager formula computed in ``dtype`` (float32: the eager provider; float64: the
    reference; the inputs' own dtype: torch's own computation in that dtype)."""
    s = s.to(dtype)
    if loss == "ls":
        return F.cross_entropy(s, y, label_smoothing=SMOOTHING)
    kl = F.kl_div(F.log_softmax(s / TEMPERATURE, -1), F.log_softmax(t.to(dtype) / TEMPERATURE, -1),
                  log_target=True, reduction="batchmean")
    return (1 - KD_WEIGHT) * F.cross_entropy(s, y) + KD_WEIGHT * TEMPERATURE**2 * kl


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
        return lambda s, t, y: eager(loss, s, t, y)
    if name == "compile":
        return torch.compile(lambda s, t, y: eager(loss, s, t, y), dynamic=False)
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

    with thread_count(1) if not CUDA else contextlib.nullcontext():  # the CPU losses' thread count
        copy()
        return 2 * COPY_BYTES / (_timer(copy)() * 1e-3) / 1e9


@dataclass
class Setup:
    """One case's inputs and float64 truth, shared by every provider: ``s``, ``t`` (N, V) in the case's
    dtype, ``y`` (N,) int64; ``loss64`` a float64 scalar, ``grad64`` (N, V) float64; ``own_loss_error`` and
    ``own_grad_error`` the errors of torch's own computation in the inputs' dtype."""

    loss: str
    s: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    loss64: float
    grad64: torch.Tensor
    own_loss_error: float
    own_grad_error: float


def loss_and_grad(fn: Callable, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``fn``'s loss and gradient w.r.t. ``s`` on clones (Liger overwrites its inputs)."""
    leaf = s.detach().clone().requires_grad_()
    value = fn(leaf, t.clone(), y)
    value.backward()
    return value.item(), leaf.grad


def errors(setup: Setup, value: float, grad: torch.Tensor) -> tuple[float, float]:
    """(relative loss error, gradient error relative to the largest true gradient) against float64."""
    loss_error = abs(value - setup.loss64) / max(abs(setup.loss64), 1.0)
    grad_error = ((grad.double() - setup.grad64).abs().max() / setup.grad64.abs().max()).item()
    return loss_error, grad_error


def make_setup(loss: str, n: int, v: int, dtype: torch.dtype) -> Setup:
    """Inputs ``3 * randn`` (BENCHMARKS.md), seed 0, and their float64 truth."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    s = (3 * torch.randn(n, v, generator=g, device=DEVICE)).to(dtype)
    t = (3 * torch.randn(n, v, generator=g, device=DEVICE)).to(dtype)
    y = torch.randint(0, v, (n,), generator=g, device=DEVICE)
    # float64 copies: a bf16 leaf would round the reference gradient back to bf16
    loss64, grad64 = loss_and_grad(lambda a, b, c: eager(loss, a, b, c, torch.float64), s.double(), t.double(), y)
    setup = Setup(loss, s, t, y, loss64, grad64, 0.0, 0.0)
    own_value, own_grad = loss_and_grad(lambda a, b, c: eager(loss, a, b, c, dtype), s, t, y)
    setup.own_loss_error, setup.own_grad_error = errors(setup, own_value, own_grad)
    return setup


def assert_agrees(setup: Setup, value: float, grad: torch.Tensor, who: str) -> dict[str, float]:
    """Assert a provider's loss and gradient against the float64 truth; return the errors and bounds."""
    loss_error, grad_error = errors(setup, value, grad)
    loss_bound = max(LOSS_FLOOR, OWN_SLACK * setup.own_loss_error)
    grad_bound = max(GRAD_FLOOR[setup.s.dtype], OWN_SLACK * setup.own_grad_error)
    assert grad.shape == setup.s.shape, f"{who}: gradient shape {tuple(grad.shape)}, expected {tuple(setup.s.shape)}"
    assert loss_error <= loss_bound, f"{who}: loss error {loss_error:.3g} above {loss_bound:.3g}"
    assert grad_error <= grad_bound, f"{who}: gradient error {grad_error:.3g} above {grad_bound:.3g}"
    return {"loss_error": loss_error, "loss_bound": loss_bound, "grad_error": grad_error, "grad_bound": grad_bound}


def _case_id(case: tuple) -> str:
    loss, n, v, dtype = case
    return f"{loss}-{n}x{v}-{str(dtype).removeprefix('torch.')}"


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def case(request) -> tuple[tuple, Setup]:
    """One shared set-up per case; pytest groups the providers of a case, so one case is in memory at a time."""
    yield request.param, make_setup(*request.param)
    if CUDA:
        torch.cuda.empty_cache()


def _provider_params() -> list:
    return [pytest.param(p, marks=[pytest.mark.slow] if p == "compile" and not CUDA else [], id=p) for p in PROVIDERS]


@pytest.mark.parametrize("provider", _provider_params())
def test_forward_backward(case: tuple, provider: str, benchmark, copy_gbps: float, targets) -> None:
    (loss, n, v, dtype), setup = case
    fn = _provider(provider, loss)
    accuracy = assert_agrees(setup, *loss_and_grad(fn, setup.s, setup.t, setup.y), provider)
    s = setup.s.clone().requires_grad_()
    t = setup.t.clone()
    if CUDA:
        def step() -> None:
            s.grad = None
            fn(s, t, setup.y).backward()
            _sync()

        step()  # compiles (torch.compile, Triton) outside the timing
        step()  # leaves a gradient buffer allocated, as in training
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
        benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
        ms = _timer(step)()
    else:
        extra_mib, ms = None, _cpu_alternated(benchmark, provider, fn, setup)
    moved = (2 if loss == "ls" else 3) * n * v * s.element_size()
    gbps = moved / (ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        loss=loss, provider=provider, n=n, v=v, dtype=str(dtype), device=DEVICE, ms=ms, gbps=gbps,
        copy_gbps=copy_gbps, pct_of_copy=100 * gbps / copy_gbps, extra_mib=extra_mib, **accuracy,
    )
    key = (loss, n, v, dtype)
    _ms[(key, provider)] = ms
    if provider == "ours":
        targets(benchmark, *_targets(key, ms, 100 * gbps / copy_gbps, extra_mib, n * v * s.element_size()))


def cpu_repeats(n: int, v: int) -> int:
    """Steps per timed call on a CPU: enough to touch about :data:`CPU_CALL_ELEMENTS` logits."""
    return max(1, CPU_CALL_ELEMENTS // (n * v))


def _cpu_alternated(benchmark, provider: str, fn: Callable, setup: Setup) -> float:
    """ms a step of ``provider`` on a CPU, alternated with eager (:func:`fair.alternate`, one thread)."""
    repeats = cpu_repeats(*setup.s.shape)

    def steps(fn: Callable) -> Callable[[], None]:
        s, t = setup.s.clone().requires_grad_(), setup.t.clone()

        def run() -> None:
            for _ in range(repeats):
                s.grad = None
                fn(s, t, setup.y).backward()

        return run

    providers = {provider: steps(fn)}
    if provider != "eager":
        providers["eager"] = steps(_provider("eager", setup.loss))
    ratios = {f"eager / {provider}": ("eager", provider)} if provider != "eager" else {}
    measured = alternate(benchmark, providers, rounds=CPU_ROUNDS, warmup=CPU_WARMUP, ratios=ratios)
    benchmark.extra_info["steps_per_call"] = repeats
    return 1e3 * measured.median(provider) / repeats


def _targets(key: tuple, ms: float, pct: float, extra_mib: float | None, logits_bytes: int) -> list[Target]:
    """The H100/H200 targets of ``ours`` at one case (issue 16 and issue 5)."""
    found = []
    if key in TARGET_MS:
        found.append(Target("ms", ms, TARGET_MS[key], " ms", machine="h100/h200"))
    if key in TARGET_PCT_OF_COPY:
        found.append(Target("% of copy bandwidth", pct, TARGET_PCT_OF_COPY[key], "%", at_most=False,
                            machine="h100/h200"))
    for peer, ratio in TARGET_SPEEDUP.get(key, {}).items():
        if (key, peer) in _ms:
            found.append(Target(f"speed-up over {peer}", _ms[(key, peer)] / ms, ratio, "x", at_most=False,
                                machine="h100/h200"))
    if extra_mib is not None:
        found.append(Target("extra memory", extra_mib, EXTRA_MEMORY_FRACTION * logits_bytes / 2**20, " MiB",
                            kind="memory", machine="h100/h200"))
    return found


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", VALUE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", sorted({(n, v) for _, n, v, _ in GPU_CASES}), ids=lambda nv: f"{nv[0]}x{nv[1]}")
@pytest.mark.parametrize("loss", ["ls", "kd"])
def test_values_in_every_dtype(loss: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    """Our fused kernels at every GPU shape in bf16, fp16 and fp32 (values only, not timed)."""
    if not CUDA:
        pytest.skip("needs a CUDA device (GPU-sized shapes)")
    setup = make_setup(loss, *shape, dtype)
    assert_agrees(setup, *loss_and_grad(_ours(loss, "triton"), setup.s, setup.t, setup.y), f"ours {dtype}")
