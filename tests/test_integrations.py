"""KDAuditCallback (audit.integrations) in real training runs on CPU: a plain transformers.Trainer, TRL's
GKDTrainer and TRL's DistillationTrainer, each training the fixture student (fixtures/lm-student) for a few steps
on Shakespeare.

The logged numbers are checked against the teacher's and the trained student's own logits, reduced in float64
numpy here (not by the audit's code), on held-out documents short enough to be one window each (every next
token scored once).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cli import cli
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from audit.errors import AuditError, AuditWarning
from audit.integrations import PREFIX, KDAuditCallback
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import read_documents
from audit.package import fixtures_path
from audit.report.schema import PAIR_VERDICTS, load_report
from audit.report.training import METRICS

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = str(fixtures_path() / "lm-student")
MAX_LENGTH = 64  # above every held-out document's tokens: one window each
N_BINS = 15
KEYS = [PREFIX + m for m in METRICS]

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(STUDENT)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[str, list[str]]:
    """A jsonl file of 12 two-line passages of the dev split (the audit's data), and their texts."""
    text = read_documents("shakespeare:dev", limit=1).texts[0]
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 30]
    texts = [f"{a}\n{b}" for a, b in zip(lines[0:24:2], lines[1:24:2])]
    path = tmp_path_factory.mktemp("held-out") / "dev.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path), texts


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """Lines of a training-split play (the trainers' data)."""
    text = read_documents("shakespeare:train", limit=1).texts[0]
    return [line.strip() for line in text.splitlines() if len(line.strip()) > 20][:160]


@pytest.fixture(scope="module")
def teacher():
    return load_causal_lm(TEACHER).model


def reference(teacher: torch.nn.Module, student: torch.nn.Module, tokenizer, texts: list[str]) -> dict[str, float]:
    """The callback's numbers from both models' logits on every next token of ``texts``, in float64 numpy."""
    kl, kl_reverse, shift, agree, confidence, correct = [], [], [], [], [], []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            z_t = teacher(input_ids=ids).logits[0, :-1].double().numpy()
            z_s = student(input_ids=ids).logits[0, :-1].double().numpy()
        log_t = z_t - np.logaddexp.reduce(z_t, axis=1, keepdims=True)
        log_s = z_s - np.logaddexp.reduce(z_s, axis=1, keepdims=True)
        p_t, p_s = np.exp(log_t), np.exp(log_s)
        kl.append((p_t * (log_t - log_s)).sum(1))
        kl_reverse.append((p_s * (log_s - log_t)).sum(1))
        shift.append(-(p_s * log_s).sum(1) + (p_t * log_t).sum(1))
        agree.append(p_t.argmax(1) == p_s.argmax(1))
        confidence.append(p_s.max(1))
        correct.append(p_s.argmax(1) == ids[0, 1:].numpy())
    confidence, correct = np.concatenate(confidence), np.concatenate(correct)
    bins = np.minimum((confidence * N_BINS).astype(int), N_BINS - 1)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
              for b in range(N_BINS) if (bins == b).any())
    return {"kl": np.concatenate(kl).mean(), "kl_reverse": np.concatenate(kl_reverse).mean(),
            "entropy_shift": np.concatenate(shift).mean(), "agreement": np.concatenate(agree).mean(), "ece": ece}


def saved(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh student with ``model``'s weights: what a checkpoint saved now loads as, without the trainer's wrappers
    (its mixed-precision autocast)."""
    copy = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def audits(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if PREFIX + "kl" in entry]


def check_logged(trainer, out: Path, steps: list[int]) -> list[dict]:
    """The callback's log entries: at ``steps``, every key finite, the verdict a verdict, one report file each."""
    logged = audits(trainer)
    assert [e["step"] for e in logged] == steps
    for entry in logged:
        assert all(math.isfinite(entry[key]) for key in KEYS), entry
        assert entry[PREFIX + "verdict"] in PAIR_VERDICTS
    assert sorted(p.name for p in (out / "kd_audit").iterdir()) == [f"step-{s:06d}.json" for s in steps]
    for entry in logged:
        report = load_report(out / "kd_audit" / f"step-{entry['step']:06d}.json")  # a valid compare/2 report
        assert report["training"]["step"] == entry["step"]
        assert report["pairs"][0]["kl"]["value"] == pytest.approx(entry[PREFIX + "kl"], rel=1e-12)
    return logged


def blocks(lines: list[str], tokenizer, n: int) -> list[list[int]]:
    """``n`` training blocks of 32 tokens of the lines."""
    ids = tokenizer("\n".join(lines))["input_ids"]
    assert len(ids) >= 32 * n
    return [ids[i:i + 32] for i in range(0, 32 * n, 32)]


def common_args(out: Path, **more) -> dict:
    return {"output_dir": str(out), "max_steps": 4, "eval_strategy": "steps", "eval_steps": 2,
            "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "logging_steps": 1, "use_cpu": True,
            "save_strategy": "no", "disable_tqdm": True, "seed": 0, **more}


def test_trainer_logs_the_audit_of_the_model_it_trains(tmp_path, held_out, lines, tokenizer, teacher, capsys):
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, texts = held_out
    callback = KDAuditCallback(TEACHER, data, max_length=MAX_LENGTH, n_bootstrap=50)
    student = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    before = reference(teacher, student, tokenizer, texts)
    train = blocks(lines, tokenizer, 20)
    out = tmp_path / "run"
    trainer = Trainer(model=student, args=TrainingArguments(**common_args(out, learning_rate=1e-2,
                                                                          report_to=["tensorboard"])),
                      train_dataset=Dataset.from_dict({"input_ids": train[:16], "labels": train[:16]}),
                      eval_dataset=Dataset.from_dict({"input_ids": train[16:], "labels": train[16:]}),
                      processing_class=tokenizer)
    callback.attach(trainer)
    trainer.train()

    logged = check_logged(trainer, out, [2, 4])
    after = reference(teacher, saved(trainer.model), tokenizer, texts)
    for metric in METRICS:  # the live, trained weights were audited: not the checkpoint on disk
        assert logged[-1][PREFIX + metric] == pytest.approx(after[metric], rel=2e-4, abs=1e-6), metric
    assert abs(after["kl"] - before["kl"]) > 100 * 2e-4 * after["kl"]
    assert logged[0][PREFIX + "kl"] != logged[1][PREFIX + "kl"]

    # report_to got them: transformers' TensorBoard callback writes every non-eval key under train/
    events = EventAccumulator(str(next((out / "runs").iterdir()))).Reload()
    scalars = events.Scalars("train/kd_audit/kl")
    assert [s.step for s in scalars] == [2, 4]
    assert [s.value for s in scalars] == pytest.approx([e[PREFIX + "kl"] for e in logged], rel=1e-6)

    code, shown, err = cli(capsys, "report", str(out))
    assert code == 0, err
    rows = [line for line in shown.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["2", "4"]
    assert f"{logged[-1][PREFIX + 'kl']:.4f}" in rows[-1]


def test_gkd_trainer_student_against_itself_has_zero_kl(tmp_path, held_out, lines, tokenizer):
    """The fixture student audited against itself as the teacher while GKD leaves it as it is (learning rate 0):
    zero KL both ways, zero entropy shift, full agreement. The callback is passed in ``callbacks`` without
    ``attach``: it warns once and still fills the log history and the step reports."""
    from datasets import Dataset

    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    data, _ = held_out
    callback = KDAuditCallback(STUDENT, data, max_length=MAX_LENGTH, n_bootstrap=50)
    chats = [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
             for a, b in zip(lines[:40:2], lines[1:40:2])]
    out = tmp_path / "gkd"
    args = GKDConfig(**common_args(out, learning_rate=0.0, report_to=[]), max_new_tokens=8, max_length=32,
                     lmbda=0.5)
    trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32),
                         teacher_model=AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32), args=args,
                         train_dataset=Dataset.from_list(chats[:16]), eval_dataset=Dataset.from_list(chats[16:20]),
                         processing_class=tokenizer, callbacks=[callback])
    with pytest.warns(AuditWarning, match="not attached") as warned:
        trainer.train()
    assert sum("not attached" in str(w.message) for w in warned) == 1
    for entry in check_logged(trainer, out, [2, 4]):
        assert entry[PREFIX + "kl"] == pytest.approx(0, abs=1e-6)
        assert entry[PREFIX + "kl_reverse"] == pytest.approx(0, abs=1e-6)
        assert entry[PREFIX + "entropy_shift"] == pytest.approx(0, abs=1e-6)
        assert entry[PREFIX + "agreement"] == 1.0


def test_distillation_trainer_with_the_teacher_object_it_trains_against(tmp_path, held_out, lines, tokenizer,
                                                                        teacher):
    """TRL 1.16's other distillation trainer (on-policy, ``trl.DistillationTrainer``), with the callback given the
    very teacher object the trainer distils from (its tokenizer then is the trainer's)."""
    from datasets import Dataset

    pytest.importorskip("trl")
    from trl import DistillationConfig, DistillationTrainer

    data, texts = held_out
    trainer_teacher = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32)
    callback = KDAuditCallback(trainer_teacher, data, max_length=MAX_LENGTH, n_bootstrap=50)
    out = tmp_path / "distil"
    args = DistillationConfig(**common_args(out, learning_rate=1e-2, report_to=[]), max_completion_length=8,
                              gradient_checkpointing=False)
    trainer = DistillationTrainer(model=AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32),
                                  teacher_model=trainer_teacher, args=args,
                                  train_dataset=Dataset.from_dict({"prompt": lines[:16]}),
                                  eval_dataset=Dataset.from_dict({"prompt": lines[16:20]}),
                                  processing_class=AutoTokenizer.from_pretrained(STUDENT, padding_side="left"))
    callback.attach(trainer)
    trainer.train()
    logged = check_logged(trainer, out, [2, 4])
    after = reference(teacher, saved(trainer.model), tokenizer, texts)
    for metric in METRICS:
        assert logged[-1][PREFIX + metric] == pytest.approx(after[metric], rel=2e-4, abs=1e-6), metric
    assert load_report(out / "kd_audit" / "step-000004.json")["pairs"][0]["teacher"] == "lm-teacher"


def test_the_audit_leaves_the_model_as_it_found_it(held_out):
    data, _ = held_out
    callback = KDAuditCallback(TEACHER, data, max_length=MAX_LENGTH, n_bootstrap=20)
    model = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.bfloat16)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (True, False):
        model.train(mode)
        report = callback.audit(model)
        assert model.training is mode
        assert all(m.training is mode for m in model.modules())
    assert report["settings"]["dtype"] == "bfloat16"  # run as it trains: never cast to the teacher's fp32
    assert all(torch.equal(v, weights[k]) and v.dtype == torch.bfloat16 for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_a_model_in_two_dtypes_is_refused_before_anything_is_cast(held_out):
    data, _ = held_out
    callback = KDAuditCallback(TEACHER, data, max_length=MAX_LENGTH, n_bootstrap=20)
    model = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    model.model.norm.to(torch.bfloat16)
    with pytest.raises(AuditError, match="one floating dtype") as err:
        callback.audit(model)
    assert "\n" not in str(err.value)
    assert model.model.norm.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.float32


def test_a_teacher_object_in_another_dtype_is_refused_not_cast(held_out, tokenizer):
    """The trainer's own teacher, in bf16 beside an fp32 student: the audit would cast it under the trainer."""
    data, _ = held_out
    shared = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.bfloat16)
    callback = KDAuditCallback(shared, data, max_length=MAX_LENGTH, n_bootstrap=20)
    with pytest.raises(AuditError, match="pass the teacher's path instead"):
        callback.audit(AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32), tokenizer)
    assert all(p.dtype == torch.bfloat16 for p in shared.parameters())


@pytest.mark.parametrize(("options", "message"), [
    ({"limt": 5}, "expected options of audit.settings.CompareSettings, got limt"),
    ({"device": "cpu"}, "device (the model's device)"),
    ({"dtype": "bf16"}, "dtype (the model's dtype)"),
    ({"cache": False}, "cache (never cached"),
    ({"n_bins": 0}, "expected --bins between 1"),
    ({"names": ["a", "b", "c"]}, "at most 2 names"),
])
def test_bad_options_are_one_line_before_any_model_loads(held_out, options, message):
    data, _ = held_out
    with pytest.raises(AuditError) as err:
        KDAuditCallback("no/such/teacher", data, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_teacher_or_data_fails_when_the_callback_is_made(held_out, tmp_path):
    data, _ = held_out
    with pytest.raises(AuditError, match="no such file or folder"):
        KDAuditCallback(str(tmp_path / "missing"), data)
    with pytest.raises(AuditError, match="expected"):
        KDAuditCallback(TEACHER, str(tmp_path / "missing.jsonl"))


def test_training_without_evaluations_warns_that_nothing_is_audited(tmp_path, held_out, lines, tokenizer):
    from datasets import Dataset

    data, _ = held_out
    callback = KDAuditCallback(TEACHER, data, max_length=MAX_LENGTH, n_bootstrap=20)
    train = blocks(lines, tokenizer, 4)
    args = TrainingArguments(**{**common_args(tmp_path / "run", report_to=[]), "eval_strategy": "no", "max_steps": 1})
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32), args=args,
                      train_dataset=Dataset.from_dict({"input_ids": train, "labels": train}))
    callback.attach(trainer)
    with pytest.warns(AuditWarning, match="eval_strategy is 'no'"):
        trainer.train()
    assert audits(trainer) == [] and not (tmp_path / "run" / "kd_audit").exists()
