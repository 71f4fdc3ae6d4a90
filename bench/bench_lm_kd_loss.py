"""The KD loss at SmolLM2's vocabulary, forward + backward, per divergence and provider (issue 12's GPU speed item).

Run: ``python -m pytest bench/bench_lm_kd_loss.py`` (skips without CUDA; ``bench/gpu.sh`` runs it in its
``lm`` step). Shape: 8192 tokens x 49,152 (SmolLM2's vocabulary), bf16 student and teacher logits, ``3 * randn``
as in ``bench/bench_losses.py``. Cases: forward KL, reverse KL and TRL's generalised JSD at beta 0.5, each at
T = 1 and T = 2, with w = 0.5 and the CE term as :func:`audit.losses.distillation_loss` computes it:
``(1-w) CE(s, y) + w T^2 D(softmax(s/T), softmax(t/T))``, mean over tokens.

Providers, one set-up per case shared by all (:func:`make_setup`):

- eager: that formula written plainly (``F.cross_entropy``, ``F.kl_div`` of log-softmaxes, TRL's logsumexp
  mixture for the JSD) on float32 upcasts;
- compile: ``torch.compile`` of eager, ``dynamic=False``, compiled before timing; T is passed as a 0-d tensor
  so that one graph per divergence serves both temperatures (a Python float is specialised, and each
  temperature would be compiled again inside the lm step's time cap);
- liger: Liger's losses on float32 log-softmaxes, plus ``LigerCrossEntropyLoss``: forward KL through
  ``LigerKLDIVLoss`` (the composite ``bench/bench_losses.py`` times), reverse KL and the JSD through
  ``LigerJSD`` at beta 1 and 0.5 (its convention is TRL's; ``LigerKLDIVLoss`` gives no gradient to its
  target, so it cannot do reverse KL). Liger has all three divergences; the provider skips only without
  CUDA or ``liger_kernel``;
- ours: the fused Triton kernels through :func:`audit.losses.distillation_loss` (``backend="triton"``).

Every provider's loss and gradient are asserted against the float64 reference (eager on ``.double()`` copies
of the same rounded inputs, the gradient kept in float64) with ``bench/bench_losses.py``'s tolerances (:func:`bench_losses.assert_agrees`:
at most ``max(floor of the dtype, 1.05 x torch's own bf16 error)``). Each records in ``extra_info`` what
``bench_losses`` records (ms by ``triton.testing.do_bench``, GB/s over ``3 N V b``, % of the copy bandwidth of
the same run, extra memory: CUDA peak beyond what was allocated with the gradient buffer held, errors and
bounds) plus tokens/s. Targets for ``ours`` on an H100/H200 (:data:`TARGET_SPEEDUP`, and
``bench_losses.EXTRA_MEMORY_FRACTION`` of one logits tensor for the extra memory) go through the ``targets``
fixture. Few rounds (:data:`ROUNDS`, a short ``do_bench``): the whole file must fit the lm step's 90 s.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from bench_losses import EXTRA_MEMORY_FRACTION, Setup, assert_agrees, copy_gbps, errors, loss_and_grad  # noqa: F401
from kd_targets import Target

from audit.losses import distillation_loss, kernels

CUDA = torch.cuda.is_available()
N, V, DTYPE = 8192, 49_152, torch.bfloat16
DIVERGENCES = ["forward-kl", "reverse-kl", "jsd"]
TEMPERATURES = [1.0, 2.0]
BETA, KD_WEIGHT = 0.5, 0.5
PROVIDERS = ["eager", "compile", "liger", "ours"]  # ours last: its ratio targets need the peers' times
ROUNDS = 5
# "ours" at least this many times faster than each peer measured in the same run, every case (H100/H200)
TARGET_SPEEDUP = {"eager": 1.0, "compile": 1.0}
_ms: dict[tuple, float] = {}  # (divergence, T, provider) -> ms, for the ratio targets

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]


def eager(divergence: str, temperature: float | torch.Tensor, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(1-w) CE(s, y) + w T^2 D`` computed in ``dtype`` (float32: the eager provider; float64: the reference;
    bf16: torch's own computation in the inputs' dtype)."""
    s = s.to(dtype)
    log_p = F.log_softmax(s / temperature, -1)
    log_q = F.log_softmax(t.to(dtype) / temperature, -1)
    if divergence == "forward-kl":
        soft = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    elif divergence == "reverse-kl":
        soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    else:  # TRL's generalized_jsd_loss: m = beta q + (1 - beta) p
        log_m = torch.logsumexp(torch.stack([log_p + math.log1p(-BETA), log_q + math.log(BETA)]), dim=0)
        soft = BETA * F.kl_div(log_m, log_q, log_target=True, reduction="batchmean") \
            + (1 - BETA) * F.kl_div(log_m, log_p, log_target=True, reduction="batchmean")
    return (1 - KD_WEIGHT) * F.cross_entropy(s, y) + KD_WEIGHT * temperature**2 * soft


@functools.cache
def _compiled(divergence: str) -> Callable:
    """eager under ``torch.compile``, called as ``(temperature, s, t, y)``, compiled once per divergence."""
    def loss(temperature: torch.Tensor, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return eager(divergence, temperature, s, t, y)

    return torch.compile(loss, dynamic=False)


def _liger(divergence: str, temperature: float) -> Callable:
    from liger_kernel.transformers import LigerCrossEntropyLoss, LigerJSD, LigerKLDIVLoss

    ce = LigerCrossEntropyLoss()
    soft = {"forward-kl": LigerKLDIVLoss(reduction="batchmean", log_target=True), "reverse-kl": LigerJSD(beta=1.0),
            "jsd": LigerJSD(beta=BETA)}[divergence]

    def loss(s, t, y):
        # float32 log-probabilities, as eager's: LigerJSD returns its loss in its input's dtype. Liger
        # overwrites its input logits with their gradient: the soft branch goes first.
        log_p = torch.log_softmax(s.float() / temperature, -1)
        kl = soft(log_p, torch.log_softmax(t.float() / temperature, -1))  # (student, teacher)
        return KD_WEIGHT * temperature**2 * kl + (1 - KD_WEIGHT) * ce(s, y)

    return loss


def _provider(name: str, divergence: str, temperature: float) -> Callable:
    """The loss function of one provider, or ``pytest.skip`` with the reason it cannot run here."""
    if name == "eager":
        return functools.partial(eager, divergence, temperature)
    if name == "compile":
        compiled, t = _compiled(divergence), torch.tensor(temperature, device="cuda")
        return lambda s, teacher, y: compiled(t, s, teacher, y)
    if name == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            pytest.skip("liger needs liger_kernel (pip install liger-kernel==0.8.5)")
        return _liger(divergence, temperature)
    if not kernels.available():
        pytest.skip("Triton not installed")
    return lambda s, t, y: distillation_loss(s, t, y, divergence=divergence, beta=BETA, temperature=temperature,
                                             kd_weight=KD_WEIGHT, backend="triton")


def make_setup(divergence: str, temperature: float) -> Setup:
    """Inputs ``3 * randn`` in bf16, seed 0, all tokens scored, and their float64 truth."""
    g = torch.Generator(device="cuda").manual_seed(0)
    s = (3 * torch.randn(N, V, generator=g, device="cuda")).to(DTYPE)
    t = (3 * torch.randn(N, V, generator=g, device="cuda")).to(DTYPE)
    y = torch.randint(0, V, (N,), generator=g, device="cuda")
    # .double() copies, so that the reference gradient stays float64 (a bf16 leaf would get it rounded to bf16)
    loss64, grad64 = loss_and_grad(functools.partial(eager, divergence, temperature, dtype=torch.float64),
                                   s.double(), t.double(), y)
    setup = Setup(f"kd {divergence} T={temperature:g}", s, t, y, loss64, grad64, 0.0, 0.0)
    own = loss_and_grad(functools.partial(eager, divergence, temperature, dtype=DTYPE), s, t, y)
    setup.own_loss_error, setup.own_grad_error = errors(setup, *own)
    return setup


def _case_id(case: tuple[str, float]) -> str:
    return f"{case[0]}-T{case[1]:g}"


@pytest.fixture(scope="module", params=[(d, t) for d in DIVERGENCES for t in TEMPERATURES], ids=_case_id)
def case(request) -> tuple[tuple[str, float], Setup]:
    """One shared set-up per case; pytest groups the providers of a case, so one case is in memory at a time."""
    yield request.param, make_setup(*request.param)
    torch.cuda.empty_cache()


# copy_gbps: bench_losses' fixture, imported above (hence the noqa)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_forward_backward(case: tuple, provider: str, benchmark, copy_gbps: float, targets) -> None:  # noqa: F811
    import triton.testing

    (divergence, temperature), setup = case
    fn = _provider(provider, divergence, temperature)
    accuracy = assert_agrees(setup, *loss_and_grad(fn, setup.s, setup.t, setup.y), f"{provider} {setup.loss}")
    s = setup.s.clone().requires_grad_()
    t = setup.t.clone()

    def step() -> None:
        s.grad = None
        fn(s, t, setup.y).backward()
        torch.cuda.synchronize()

    step()  # compiles (torch.compile, Triton) outside the timing
    step()  # leaves a gradient buffer allocated, as in training
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ms = triton.testing.do_bench(step, warmup=10, rep=50, return_mode="median")
    logits_bytes = N * V * s.element_size()
    gbps = 3 * logits_bytes / (ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        loss=setup.loss, divergence=divergence, temperature=temperature, beta=BETA, kd_weight=KD_WEIGHT,
        provider=provider, n=N, v=V, dtype=str(DTYPE), device="cuda", ms=ms, tokens_per_s=N / (ms * 1e-3),
        gbps=gbps, copy_gbps=copy_gbps, pct_of_copy=100 * gbps / copy_gbps, extra_mib=extra_mib, **accuracy,
    )
    _ms[(divergence, temperature, provider)] = ms
    if provider != "ours":
        return
    found = [Target(f"speed-up over {peer}", _ms[(divergence, temperature, peer)] / ms, ratio, "x", at_most=False,
                    machine="h100/h200")
             for peer, ratio in TARGET_SPEEDUP.items() if (divergence, temperature, peer) in _ms]
    found.append(Target("extra memory", extra_mib, EXTRA_MEMORY_FRACTION * logits_bytes / 2**20, " MiB",
                        kind="memory", machine="h100/h200"))
    targets(benchmark, *found)
