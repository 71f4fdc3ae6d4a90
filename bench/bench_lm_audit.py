"""The token-level audit end to end: the fixture LM pair on real Shakespeare.

Run: ``python -m pytest bench/bench_lm_audit.py`` (``--benchmark-json=out.json`` keeps the numbers).

- **CPU**: auditing 20,000 scored tokens of the fixture teacher and its one-layer cut (shakespeare:test, windows
  of 128) through :func:`audit.compare.compare_lm`, statistics included; target under 30 s on 2 cores. The value
  check: the teacher's NLL in the report equals the mean of transformers' own per-token loss on the same windows.
- **CUDA** (skipped without one): the audit's evaluation loop (teacher + student forward, the fused reduction,
  columns to the host) against the two models' bare bf16 forward passes on the same batches; target at least
  80% of their throughput on an H100/H200.
"""

from __future__ import annotations

import time

import pytest
import torch
from kd_targets import Target

from audit.load.data.text import IGNORE_INDEX, Documents, read_documents, tokenize_windows
from audit.package import fixtures_path
from audit.settings import CompareSettings

TOKENS, MAX_LENGTH, CPU_BUDGET_S = 20_000, 128, 30.0
TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = f"{TEACHER}@layers=1"


def shakespeare(tokens: int, tokenizer) -> Documents:
    """The first test-split scenes of the built-in corpus that hold at least ``tokens`` tokens."""
    documents = read_documents("shakespeare:test")
    lengths = [len(ids) - 1 for ids in tokenizer(documents.texts)["input_ids"]]
    keep = next(i for i in range(len(lengths)) if sum(lengths[: i + 1]) >= tokens) + 1
    return Documents(documents.name, documents.texts[:keep], documents.ids[:keep], None, documents.info)


def test_cpu_audit_of_20k_tokens(benchmark, targets):
    from audit.compare import compare_lm
    from audit.load.causal_lm import load_causal_lm

    torch.set_num_threads(2)
    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    documents = shakespeare(TOKENS, teacher.tokenizer)
    settings = CompareSettings(max_length=MAX_LENGTH, batch_size=8, n_bootstrap=1000, progress=False, cache=False,
                               device="cpu")
    report = benchmark.pedantic(compare_lm, args=(teacher, [student], documents), kwargs={"settings": settings},
                                rounds=1, iterations=1)
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=MAX_LENGTH)
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
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(tokens=model["n"], tokens_per_s=model["n"] / seconds)
    targets(benchmark, Target("20k-token LM audit", seconds, CPU_BUDGET_S, "s", machine="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_audit_throughput_against_bare_forwards(benchmark, targets):
    from audit.load.causal_lm import load_causal_lm
    from audit.run.evaluate import evaluate_tokens

    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    documents = shakespeare(200_000, teacher.tokenizer)
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=512)
    device, dtype, batch = torch.device("cuda"), torch.bfloat16, 32
    for lm in (teacher, student):
        lm.model.to(device=device, dtype=dtype)

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, len(windows), batch):
                ids = windows.input_ids[start:start + batch].to(device)
                mask = windows.attention_mask[start:start + batch].to(device)
                for lm in (teacher, student):
                    lm.model(input_ids=ids, attention_mask=mask).logits.sum().item()
        torch.cuda.synchronize()

    bare()  # warm-up
    started = time.perf_counter()
    bare()
    bare_s = time.perf_counter() - started
    columns = benchmark.pedantic(evaluate_tokens, args=([teacher, student], windows),
                                 kwargs={"device": device, "dtype": dtype, "batch_size": batch}, rounds=1,
                                 iterations=1, warmup_rounds=1)
    assert columns["0.entropy"].numel() == int((windows.targets != IGNORE_INDEX).sum())
    assert torch.isfinite(columns["pair0.kl"]).all()
    ratio = bare_s / benchmark.stats.stats.median
    benchmark.extra_info.update(bare_forward_s=bare_s, share_of_bare_throughput=ratio)
    targets(benchmark, Target("audit throughput / bare bf16 forwards", ratio, 0.8, at_most=False,
                              machine="h100/h200"))
