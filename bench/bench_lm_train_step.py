"""Tokens/s of one KD training step of a causal-LM student on CPU, the teacher's forward included.

Run: ``python -m pytest bench/bench_lm_train_step.py`` (``--benchmark-json=out.json`` keeps the numbers).

The step is the one :func:`audit.recipes.train_lm.train_lm` takes: the teacher's forward under ``no_grad``, the
student's forward, the loss at the scored positions, backward, gradient clipping and an AdamW step. Teacher:
the fixture ``lm-teacher`` (2 x 64 Llama, SmolLM2's vocabulary of 49,152); student: its first layer
(``lm-teacher@layers=1``, built by :func:`audit.recipes.train_lm.build_lm_student`); one batch of the recipe's default
size (:class:`audit.settings.LMTrainSettings`: 8 windows of 64 tokens) from the built-in Shakespeare train
split; forward-KL KD at the default T and w. One intra-op thread (``one_thread``).

Providers (one set-up shared by both): ``ours``, the recipe's loss (:func:`audit.recipes.train_lm.lm_loss`, i.e.
:func:`audit.losses.distillation_loss`: the torch backend on CPU, the fused Triton kernels on CUDA), and
``eager``, the textbook PyTorch KD loss (``F.cross_entropy`` + ``F.kl_div`` of log-softmaxes, times T^2).
Their losses and every parameter gradient from one state are asserted to agree. Each records tokens/s (scored
tokens per step over the median step time) in ``extra_info``; no target is set for this figure.

Measured on the shared 2-core machine (one thread, 504 scored tokens a step, the two providers back to back):
eager 443 tokens/s, ours 483 (1.09x) at load ~4; 159 and 179 (1.12x) at load ~5. Before the torch backend
stopped building full-size masks and label-smoothing terms it did not need, ours was 0.70x of eager.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from audit.load.data.text import IGNORE_INDEX, read_documents
from audit.package import fixtures_path
from audit.settings import LMTrainSettings

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = f"{TEACHER}@layers=1"
SETTINGS = LMTrainSettings(data="shakespeare", model=STUDENT, out="unused", teacher=TEACHER, loss="kd",
                           device="cpu")
DOCUMENTS, ROUNDS, WARMUP = 4, 5, 1  # train scenes read (the batch is their first windows); timed steps
PROVIDERS = ["eager", "ours"]
_rates: dict[str, float] = {}


def eager_kd_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(1-w) CE + w T^2 KL(teacher_T || student_T), mean over positions, in plain PyTorch."""
    t, w = SETTINGS.temperature, SETTINGS.kd_weight
    kl = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                  log_target=True, reduction="batchmean")
    return (1 - w) * F.cross_entropy(logits.float(), targets) + w * t * t * kl


def ours_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    from audit.recipes.train_lm import lm_loss

    return lm_loss(SETTINGS, logits, targets, teacher_logits)


LOSSES = {"ours": ours_loss, "eager": eager_kd_loss}


@pytest.fixture(scope="module")
def setup(one_thread) -> dict:
    """The teacher, the initial student and one batch (input ids, mask, scored-position mask, targets)."""
    from audit.load.causal_lm import load_causal_lm
    from audit.recipes.train_lm import build_lm_student, training_windows

    teacher = load_causal_lm(TEACHER, name="teacher")
    teacher.model.eval()
    student = build_lm_student(STUDENT, teacher, seed=SETTINGS.seed)
    windows = training_windows(read_documents(SETTINGS.data, split=SETTINGS.train_split, limit=DOCUMENTS),
                               teacher.tokenizer, SETTINGS)
    rows = slice(0, SETTINGS.batch_size)
    assert len(windows) >= SETTINGS.batch_size
    keep = windows.targets[rows] != IGNORE_INDEX
    return {"teacher": teacher.model, "student": student.model, "ids": windows.input_ids[rows],
            "mask": windows.attention_mask[rows], "keep": keep, "targets": windows.targets[rows][keep]}


def loss_and_backward(s: dict, student: torch.nn.Module, loss_fn) -> torch.Tensor:
    """The step up to the gradients: teacher forward (no_grad), student forward, loss, backward."""
    with torch.no_grad():
        teacher_logits = s["teacher"](input_ids=s["ids"], attention_mask=s["mask"]).logits[s["keep"]].float()
    logits = student(input_ids=s["ids"], attention_mask=s["mask"]).logits[s["keep"]]  # (P, V)
    loss = loss_fn(logits, s["targets"], teacher_logits)
    loss.backward()
    return loss.detach()


def test_providers_agree(setup):
    """From one state: the same loss, and the same gradient of every student parameter."""
    results = {}
    for name in PROVIDERS:
        student = copy.deepcopy(setup["student"])
        loss = loss_and_backward(setup, student, LOSSES[name])
        results[name] = (loss, {n: p.grad for n, p in student.named_parameters()})
    (loss_ours, grads_ours), (loss_eager, grads_eager) = results["ours"], results["eager"]
    torch.testing.assert_close(loss_ours, loss_eager, rtol=1e-5, atol=0)
    assert grads_ours.keys() == grads_eager.keys()
    for name, grad in grads_ours.items():
        scale = grads_eager[name].abs().max().item()
        torch.testing.assert_close(grad, grads_eager[name], rtol=0, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kd_step(benchmark, setup, provider):
    student = copy.deepcopy(setup["student"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=SETTINGS.lr, weight_decay=SETTINGS.weight_decay)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_and_backward(setup, student, LOSSES[provider])
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    losses = []
    benchmark.pedantic(lambda: losses.append(step()), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    tokens = int(setup["keep"].sum())
    rate = tokens / benchmark.stats.stats.median
    _rates[provider] = rate
    benchmark.extra_info.update(tokens_per_second=round(rate, 1), tokens_per_step=tokens,
                                windows=SETTINGS.batch_size, max_length=SETTINGS.max_length,
                                vocab=int(setup["student"].config.vocab_size),
                                student_layers=int(setup["student"].config.num_hidden_layers),
                                threads=torch.get_num_threads(), device="cpu", first_loss=round(losses[0], 4))
    if provider != "eager" and "eager" in _rates:
        benchmark.extra_info["speedup_vs_eager"] = round(rate / _rates["eager"], 2)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
