"""The token-level audit end to end against its floor: the fixture LM pair on real Shakespeare.

Run: ``python -m pytest bench/bench_lm_audit.py`` (``--benchmark-json=out.json`` keeps the numbers).

The **floor** is the two models' bare ``transformers`` forwards on the audit's batches, the windows cut after the
batch's last scored position (a window's last position has no target) and ``logits_to_keep`` set to the scored
positions: every logit the audit needs and nothing else, as the model computes it (:func:`floor`). Where the
installed transformers takes a boolean ``(batch, positions)`` ``logits_to_keep`` (it keeps exactly the ``True``
positions; checked once, :func:`keeps_scored_positions`), that is the batch's scored-position mask; else it is
the batch's span from its first scored column (an int: the last positions; or the columns, where they have a
gap), which also forms the logits of unscored positions of windows batched with a document's first window
(24% more logits on the CPU case's windows). The audit and the floor are timed by :func:`fair.alternate`: at one
named thread, alternated round by round after the same warm-up, the ratio taken per round and its median the
figure (``extra_info``: per-round seconds and ratios, median and range, the load average, ``floor_keeps``).

- **CPU**: auditing 20,000 scored tokens of the fixture teacher and its one-layer cut (shakespeare:test, windows
  of 128, batch 8, one thread) through :func:`audit.compare.compare_lm`, statistics included: within
  :data:`CPU_RATIO` x the floor, and under 30 s. The value check: the teacher's NLL in the report equals the mean
  of transformers' own per-token loss on the same windows.
- **CUDA** (skipped without one): the audit's evaluation loop (teacher + student, the fused reduction, columns
  to the host) against the floor in bf16 on the same batches: within :data:`GPU_RATIO` x on an H100/H200.
"""

from __future__ import annotations

import pytest
import torch
from fair import alternate
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


def keeps_scored_positions(model, windows: TokenWindows) -> bool:
    """Whether this transformers takes a boolean ``(batch, positions)`` ``logits_to_keep`` and returns the logits
    of exactly those positions (transformers 5's ``slice_logits_to_keep``; older versions index the positions
    dimension with it and fail or return another shape)."""
    scored, device = windows.targets[:1] != IGNORE_INDEX, model.device
    try:
        with torch.inference_mode():
            logits = model(input_ids=windows.input_ids[:1].to(device), attention_mask=windows.attention_mask[:1].to(device),
                           logits_to_keep=scored.to(device)).logits
    except (IndexError, RuntimeError, TypeError):
        return False
    return tuple(logits.shape[:-1]) == (int(scored.sum()),)


def floor(models: list, windows: TokenWindows, batch: int, device: torch.device, scored_only: bool) -> None:
    """The bare forwards of every model on the audit's batches of ``windows``, cut after the batch's last scored
    position, forming the logits of its scored positions (``scored_only``) or of its scored span."""
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            scored = windows.targets[start:start + batch] != IGNORE_INDEX  # (B, S)
            columns = scored.any(0).nonzero().squeeze(1)
            first, end = int(columns[0]), int(columns[-1]) + 1
            if scored_only:
                keep = scored[:, :end].to(device)
            else:  # the last end - first positions, or the columns themselves where the span has a gap
                keep = end - first if columns.numel() == end - first else columns.to(device)
            ids = windows.input_ids[start:start + batch, :end].to(device)
            mask = windows.attention_mask[start:start + batch, :end].to(device)
            for lm in models:
                lm.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    if device.type == "cuda":
        torch.cuda.synchronize()


RATIO = {"audit / floor": ("audit", "floor")}


def test_cpu_audit_of_20k_tokens(benchmark, targets):
    from audit.compare import compare_lm
    from audit.load.causal_lm import load_causal_lm

    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    documents = shakespeare(TOKENS, teacher.tokenizer)
    settings = CompareSettings(max_length=MAX_LENGTH, batch_size=BATCH, n_bootstrap=1000, progress=False, cache=False,
                               device="cpu")
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=MAX_LENGTH)
    scored_only = keeps_scored_positions(teacher.model, windows)
    measured = alternate(benchmark, {
        "audit": lambda: compare_lm(teacher, [student], documents, settings=settings),
        "floor": lambda: floor([teacher, student], windows, BATCH, torch.device("cpu"), scored_only)},
        rounds=ROUNDS, warmup=WARMUP, threads=THREADS, ratios=RATIO)
    losses = []
    with torch.inference_mode():
        for start in range(0, len(windows), 16):
            logits = teacher.model(input_ids=windows.input_ids[start:start + 16],
                                   attention_mask=windows.attention_mask[start:start + 16]).logits
            losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(),
                                                            windows.targets[start:start + 16],
                                                            ignore_index=IGNORE_INDEX, reduction="none"))
    losses = torch.cat(losses)[windows.targets != IGNORE_INDEX]
    model = measured.results["audit"]["models"]["lm-teacher"]
    assert model["n"] == losses.numel() >= TOKENS
    assert model["nll"] == pytest.approx(float(losses.double().mean()), rel=1e-5)
    audit_s, ratio = measured.median("audit"), measured.ratios["audit / floor"]
    benchmark.extra_info.update(tokens=model["n"], tokens_per_s=model["n"] / audit_s,
                                floor_keeps="scored positions" if scored_only else "scored span")
    targets(benchmark,
            Target(f"audit / floor, median of {ROUNDS} alternated rounds", ratio.median, CPU_RATIO, "x"),
            Target("20k-token LM audit", audit_s, CPU_BUDGET_S, "s"))


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
    scored_only = keeps_scored_positions(teacher.model, windows)

    def audit() -> dict[str, torch.Tensor]:
        columns = evaluate_tokens([teacher, student], windows, device=device, dtype=dtype, batch_size=batch)
        torch.cuda.synchronize()
        return columns

    measured = alternate(benchmark, {"audit": audit,
                                     "floor": lambda: floor([teacher, student], windows, batch, device, scored_only)},
                         rounds=ROUNDS, warmup=WARMUP, threads=THREADS, ratios=RATIO)
    columns = measured.results["audit"]
    assert columns["0.entropy"].numel() == int((windows.targets != IGNORE_INDEX).sum())
    assert torch.isfinite(columns["pair0.kl"]).all()
    benchmark.extra_info.update(tokens=columns["0.entropy"].numel(),
                                floor_keeps="scored positions" if scored_only else "scored span")
    targets(benchmark, Target(f"audit / bare bf16 forwards, median of {ROUNDS} alternated rounds",
                              measured.ratios["audit / floor"].median, GPU_RATIO, "x", machine="h100/h200"))
