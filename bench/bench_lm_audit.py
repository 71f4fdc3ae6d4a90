"""The token-level audit end to end against its floor: the fixture LM pair on real Shakespeare.

Run: ``python -m pytest bench/bench_lm_audit.py`` (``--benchmark-json=out.json`` keeps the numbers).

The **floor** is the two models' bare ``transformers`` forwards on the audit's batches, with ``logits_to_keep``
over each batch's scored span and the windows cut after their last scored position (a window's last position
has no target): every logit the audit needs and nothing else, as the model computes it (:func:`floor`). The
audit and the floor run alternated round by round in the same process (rotating order), after one warm-up
round each, at a named thread count (restored after); the ratio is taken per round and its median is the figure
(``extra_info``: per-round seconds and ratios, median and range, the load average; the benchmark's own figure is
one round of both).

- **CPU**: auditing 20,000 scored tokens of the fixture teacher and its one-layer cut (shakespeare:test, windows
  of 128, batch 8, one thread) through :func:`audit.compare.compare_lm`, statistics included: within
  :data:`CPU_RATIO` x the floor, and under 30 s. The value check: the teacher's NLL in the report equals the mean
  of transformers' own per-token loss on the same windows.
- **CUDA** (skipped without one): the audit's evaluation loop (teacher + student, the fused reduction, columns
  to the host) against the floor in bf16 on the same batches: within :data:`GPU_RATIO` x on an H100/H200.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch
from kd_targets import Target

from audit.load.data.text import IGNORE_INDEX, Documents, TokenWindows, read_documents, tokenize_windows
from audit.package import fixtures_path
from audit.settings import CompareSettings

TOKENS, MAX_LENGTH, BATCH, CPU_BUDGET_S = 20_000, 128, 8, 30.0
THREADS, ROUNDS, WARMUP = 1, 3, 1
# the audit over the floor (issue 25; measured ratios in bench/RESULTS.md)
CPU_RATIO = GPU_RATIO = 1.15
TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = f"{TEACHER}@layers=1"


def shakespeare(tokens: int, tokenizer) -> Documents:
    """The first test-split scenes of the built-in corpus that hold at least ``tokens`` tokens."""
    documents = read_documents("shakespeare:test")
    lengths = [len(ids) - 1 for ids in tokenizer(documents.texts)["input_ids"]]
    keep = next(i for i in range(len(lengths)) if sum(lengths[: i + 1]) >= tokens) + 1
    return Documents(documents.name, documents.texts[:keep], documents.ids[:keep], None, documents.info)


def floor(models: list, windows: TokenWindows, batch: int, device: torch.device) -> None:
    """The bare forwards of every model on the audit's batches of ``windows``, with ``logits_to_keep`` from the
    batch's first scored position and the windows cut after its last (the span the audit reads)."""
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            columns = (windows.targets[start:start + batch] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
            first, end = int(columns[0]), int(columns[-1]) + 1
            ids = windows.input_ids[start:start + batch, :end].to(device)
            mask = windows.attention_mask[start:start + batch, :end].to(device)
            for lm in models:
                lm.model(input_ids=ids, attention_mask=mask, logits_to_keep=end - first)
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternated(benchmark, providers: dict[str, Callable[[], object]]) -> list[dict[str, float]]:
    """Seconds of each provider per round: :data:`ROUNDS` rounds after :data:`WARMUP` untimed ones, the providers
    in a rotating order. The benchmark's own figure is the time of one round of all providers."""
    names, rounds = list(providers), []

    def one_round() -> None:
        seconds, turn = {}, len(rounds)
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            started = time.perf_counter()
            providers[name]()
            seconds[name] = time.perf_counter() - started
        rounds.append(seconds)

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    return rounds[WARMUP:]  # warm-up rounds are recorded by one_round too


def ratio_summary(rounds: list[dict[str, float]]) -> dict:
    ratios = [r["audit"] / r["floor"] for r in rounds]
    return {"seconds": rounds, "ratios": ratios, "ratio_median": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)], "load_average": os.getloadavg()}


@pytest.fixture
def threads():
    """:data:`THREADS` intra-op torch threads, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


def test_cpu_audit_of_20k_tokens(benchmark, targets, threads):
    from audit.compare import compare_lm
    from audit.load.causal_lm import load_causal_lm

    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    documents = shakespeare(TOKENS, teacher.tokenizer)
    settings = CompareSettings(max_length=MAX_LENGTH, batch_size=BATCH, n_bootstrap=1000, progress=False, cache=False,
                               device="cpu")
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=MAX_LENGTH)
    reports = []
    rounds = alternated(benchmark, {
        "audit": lambda: reports.append(compare_lm(teacher, [student], documents, settings=settings)),
        "floor": lambda: floor([teacher, student], windows, BATCH, torch.device("cpu"))})
    report = reports[-1]
    losses = []
    with torch.inference_mode():
        for start in range(0, len(windows), 16):
            logits = teacher.model(input_ids=windows.input_ids[start:start + 16],
                                   attention_mask=windows.attention_mask[start:start + 16]).logits
            losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(),
                                                            windows.targets[start:start + 16],
                                                            ignore_index=IGNORE_INDEX, reduction="none"))
    losses = torch.cat(losses)[windows.targets != IGNORE_INDEX]
    model = report["models"]["lm-teacher"]
    assert model["n"] == losses.numel() >= TOKENS
    assert model["nll"] == pytest.approx(float(losses.double().mean()), rel=1e-5)
    audit_s = [r["audit"] for r in rounds]
    summary = ratio_summary(rounds)
    benchmark.extra_info.update(tokens=model["n"], threads=threads, audit_s_median=statistics.median(audit_s),
                                tokens_per_s=model["n"] / statistics.median(audit_s), **summary)
    targets(benchmark,
            Target(f"audit / floor, median of {ROUNDS} alternated rounds", summary["ratio_median"], CPU_RATIO, "x",
                   machine="cpu"),
            Target("20k-token LM audit", statistics.median(audit_s), CPU_BUDGET_S, "s", machine="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_audit_against_bare_forwards(benchmark, targets):
    from audit.load.causal_lm import load_causal_lm
    from audit.run.evaluate import evaluate_tokens

    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    documents = shakespeare(200_000, teacher.tokenizer)
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=512)
    device, dtype, batch = torch.device("cuda"), torch.bfloat16, 32
    for lm in (teacher, student):
        lm.model.to(device=device, dtype=dtype)
    columns = []

    def audit() -> None:
        columns.append(evaluate_tokens([teacher, student], windows, device=device, dtype=dtype, batch_size=batch))
        torch.cuda.synchronize()

    rounds = alternated(benchmark, {"audit": audit,
                                    "floor": lambda: floor([teacher, student], windows, batch, device)})
    assert columns[-1]["0.entropy"].numel() == int((windows.targets != IGNORE_INDEX).sum())
    assert torch.isfinite(columns[-1]["pair0.kl"]).all()
    summary = ratio_summary(rounds)
    benchmark.extra_info.update(tokens=columns[-1]["0.entropy"].numel(), **summary)
    targets(benchmark, Target(f"audit / bare bf16 forwards, median of {ROUNDS} alternated rounds",
                              summary["ratio_median"], GPU_RATIO, "x", machine="h100/h200"))
