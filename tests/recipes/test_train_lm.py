"""The causal-LM recipe on the tiny Shakespeare fixture teacher: every loss and divergence trains a tiny student on
CPU (its loss falls), a seed gives the same weights, a killed run resumes to them, bad input is one line (exit 2)
and writes nothing; its steps are the one training loop's, and its dev audit is the auditor's numbers without the
auditor."""

import json

import numpy as np
import pytest
import torch
from audit_cli import cli as _cli
from safetensors.torch import load_file

from audit.package import fixtures_path
from audit.recipes.train_lm import train_lm
from audit.settings import LMTrainSettings

TEACHER = str(fixtures_path() / "lm-teacher")
LINES = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles",
         "And by opposing end them. To die, to sleep;", "No more; and by a sleep to say we end"]
TINY = dict(model="tiny-llama:hidden=32,layers=1", teacher=TEACHER, max_length=16, batch_size=2, lr=1e-2,
            warmup=0.0, device="cpu", eval_limit=1)

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A table with a train split (6 short documents) and a dev split (2)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        order = torch.randperm(len(LINES), generator=g).tolist()
        rows.append({"id": str(i), "text": " ".join(LINES[j] for j in order), "split": "train" if i < 6 else "dev"})
    path = tmp_path_factory.mktemp("text") / "verse.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ARMS = {
    "ce": dict(loss="ce"),
    "ls": dict(loss="ls", label_smoothing=0.2),
    "kd forward-kl": dict(loss="kd", kd_weight=0.5, temperature=2.0),
    "kd reverse-kl": dict(loss="kd", divergence="reverse-kl", kd_weight=1.0, temperature=1.0),
    "kd jsd": dict(loss="kd", divergence="jsd", beta=0.5, kd_weight=1.0, temperature=1.0),
}


@pytest.mark.parametrize("arm", ARMS)
def test_each_loss_trains_and_its_loss_falls(arm, text, tmp_path):
    record = train_lm(LMTrainSettings(data=text, out=str(tmp_path / "run"), steps=12, **TINY, **ARMS[arm]),
                      progress=False)
    losses = record["loss_history"]["values"]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses
    assert record["dev"]["role"] == "student" and record["dev"]["n"] > 0
    assert 0 < record["dev"]["perplexity"] < 49_152 and record["dev_pair"]["kl"]["value"] > 0
    saved = json.loads((tmp_path / "run" / "training_record.json").read_text())
    assert saved["settings"]["loss"] == ARMS[arm]["loss"]
    assert (tmp_path / "run" / "model.safetensors").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def _weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_same_seed_same_weights_and_resume_equals_uninterrupted(text, tmp_path):
    settings = dict(data=text, steps=6, checkpoint_every=2, loss="kd", divergence="jsd", kd_weight=0.5, **TINY)
    whole = train_lm(LMTrainSettings(out=str(tmp_path / "whole"), **settings), progress=False)
    again = train_lm(LMTrainSettings(out=str(tmp_path / "again"), **settings), progress=False)
    stopped = train_lm(LMTrainSettings(out=str(tmp_path / "cut"), **settings), progress=False, stop_after=3)
    assert stopped["stopped_at"] == 3 and (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed = train_lm(LMTrainSettings(out=str(tmp_path / "cut"), **settings), progress=False)
    assert whole["loss_history"]["values"] == again["loss_history"]["values"]
    assert resumed["loss_history"] == {"first_step": 3, "values": whole["loss_history"]["values"][3:]}
    a = _weights(tmp_path / "whole")
    for other in (_weights(tmp_path / "again"), _weights(tmp_path / "cut")):
        assert a.keys() == other.keys()
        for key in a:
            torch.testing.assert_close(a[key], other[key], rtol=0, atol=0, msg=key)
    assert resumed["dev"]["nll"] == whole["dev"]["nll"]


def test_a_cut_of_the_teacher_trains_through_the_cli(text, tmp_path, capsys):
    code, out, err = _cli(capsys, "train", "--data", text, "--model", f"{TEACHER}@layers=1", "--teacher", TEACHER,
                          "--out", str(tmp_path / "cut"), "--loss", "kd", "--divergence", "reverse-kl", "--steps", "3",
                          "--max-length", "16", "--stride", "8", "--batch-size", "2", "--device", "cpu",
                          "--no-progress")
    assert code == 0, err
    assert "dev perplexity" in out
    record = json.loads((tmp_path / "cut" / "training_record.json").read_text())
    assert record["settings"]["divergence"] == "reverse-kl" and record["settings"]["stride"] == 8
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["num_hidden_layers"] == 1


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_embeddings_trains_the_layers_only(text, tmp_path, capsys, freeze):
    args = ["train", "--data", text, "--model", f"{TEACHER}@layers=1", "--teacher", TEACHER, "--out",
            str(tmp_path / "cut"), "--steps", "3", "--max-length", "16", "--batch-size", "2", "--lr", "1e-2",
            "--device", "cpu", "--no-progress"]
    code, _, err = _cli(capsys, *args, *(["--freeze-embeddings"] if freeze else []))
    assert code == 0, err
    teacher = load_file(f"{TEACHER}/model.safetensors")
    student = load_file(str(tmp_path / "cut" / "model.safetensors"))
    embeddings, layer = "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(student[embeddings], teacher[embeddings]) == freeze
    assert not torch.equal(student[layer], teacher[layer])
    record = json.loads((tmp_path / "cut" / "training_record.json").read_text())
    assert record["settings"]["freeze_embeddings"] == freeze


def test_bad_input_is_one_line_and_writes_nothing(text, tmp_path, capsys, other_tokenizer_lm):
    short_dev = tmp_path / "short-dev.jsonl"  # refused by the dev audit at the end of training, before issue 26
    rows = [json.loads(line) for line in open(text)]
    short_dev.write_text("".join(json.dumps({**r, "text": "To"} if r["split"] == "dev" else r) + "\n" for r in rows))
    tiny = ["--model", "tiny-llama:hidden=32,layers=1"]
    cases = {
        "other tokenizer": (["--model", other_tokenizer_lm], "share teacher's tokenizer"),
        "divergence without kd": ([*tiny, "--divergence", "jsd"], "--divergence only with --loss kd"),
        "beta above 1": ([*tiny, "--loss", "kd", "--divergence", "jsd", "--beta", "1.5"], "--beta in [0, 1]"),
        "beta below 0": ([*tiny, "--loss", "kd", "--beta", "-0.1"], "--beta in [0, 1]"),
        "layers beyond the model": (["--model", f"{TEACHER}@layers=3"], "1 <= k <= 2"),
        "ls factor 1": ([*tiny, "--loss", "ls", "--label-smoothing", "1.0"], "--label-smoothing in [0, 1)"),
        "ls factor negative": ([*tiny, "--loss", "ls", "--label-smoothing", "-0.1"], "--label-smoothing in [0, 1)"),
        "dev document of one token": ([*tiny, "--data", str(short_dev)], "at least 2 tokens in every document"),
        "bad tiny spec": (["--model", "tiny-llama:hidden=30"], "multiple of 16"),
        "no teacher": ([*tiny, "--teacher", ""], "expected --teacher"),
    }
    for case, (args, message) in cases.items():
        base = ["--data", text, "--teacher", TEACHER]
        code, _, err = _cli(capsys, "train", *base, *args, "--out", str(tmp_path / "out"), "--steps", "2",
                            "--max-length", "16", "--device", "cpu", "--no-progress")
        lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (case, err)
        assert not (tmp_path / "out").exists(), case


def test_shared_teacher_logits_run_the_teacher_once_per_step(text, tmp_path):
    from audit.load.causal_lm import load_causal_lm
    from audit.recipes.train_lm import TeacherLogits

    teacher = load_causal_lm(TEACHER, name="teacher")
    calls = []
    teacher.model.register_forward_hook(lambda *_: calls.append(1))
    shared = TeacherLogits(teacher, share=True)
    settings = dict(data=text, steps=4, loss="kd", kd_weight=1.0, temperature=1.0, **{**TINY, "teacher": TEACHER})
    records = [train_lm(LMTrainSettings(out=str(tmp_path / d), divergence=d, **settings), teacher=teacher,
                        teacher_logits=shared, audit_dev=False, progress=False) for d in ("forward-kl", "reverse-kl")]
    assert len(calls) == 4 and records[0]["dev"] is None
    alone = train_lm(LMTrainSettings(out=str(tmp_path / "alone"), divergence="reverse-kl", **settings),
                     teacher=teacher, audit_dev=False, progress=False)
    # float16 teacher logits: the losses agree to ~1e-3, not bit for bit
    assert records[1]["loss_history"]["values"] == pytest.approx(alone["loss_history"]["values"], rel=1e-2)


@pytest.mark.distributed
def test_torchrun_follows_the_single_process_trajectory(text, tmp_path, monkeypatch):
    """2 CPU processes (gloo), each a slice of every batch of 3 windows weighted by its tokens: the same weights."""
    import os
    import subprocess
    import sys

    options = ["--data", text, "--model", "tiny-llama:hidden=32,layers=1", "--teacher", TEACHER, "--loss", "kd",
               "--divergence", "jsd", "--steps", "4", "--batch-size", "3", "--lr", "1e-2", "--max-length", "16",
               "--device", "cpu", "--no-progress"]
    env = {**os.environ, "KD_AUDIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "audit", "train", *options, "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = LMTrainSettings(data=text, out=str(tmp_path / "one"), loss="kd", divergence="jsd", steps=4,
                             **{**TINY, "batch_size": 3, "eval_limit": None})
    train_lm(single, progress=False)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "ddp")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)


def test_another_run_replaces_this_one_only_with_overwrite(text, tmp_path):
    from audit.errors import AuditError

    first = train_lm(LMTrainSettings(data=text, out=str(tmp_path / "run"), steps=2, **TINY), progress=False,
                     audit_dev=False)
    other = LMTrainSettings(data=text, out=str(tmp_path / "run"), steps=2, loss="ls", **TINY)
    with pytest.raises(AuditError, match="--overwrite"):
        train_lm(other, progress=False, audit_dev=False)
    second = train_lm(other, overwrite=True, progress=False, audit_dev=False)
    assert first["settings"]["loss"] == "ce" and second["settings"]["loss"] == "ls"
    assert json.loads((tmp_path / "run" / "training_record.json").read_text())["settings"]["loss"] == "ls"


def write_teacher_topk(path, text: str, k: int, *, max_length: int = 16, stride: int = 15, limit: int | None = None,
                       metadata: dict | None = None) -> str:
    """The fixture teacher's top k at the scored positions of the train split's windows, as a top-k file."""
    from audit.load.causal_lm import load_causal_lm
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.reduce.topk import topk_from_logits, write_topk_logits

    teacher = load_causal_lm(TEACHER, name="teacher")
    windows = tokenize_windows(read_documents(text, split="train", limit=limit), teacher.tokenizer,
                               max_length=max_length, stride=stride)
    with torch.no_grad():
        logits = teacher.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    ids, logprobs = topk_from_logits(logits[windows.targets != -100], k)
    if metadata is None:
        metadata = {"max_length": str(max_length), "stride": str(stride)}
    return str(write_topk_logits(path, ids.int(), logprobs, *windows.scored(), metadata=metadata))


@pytest.fixture(scope="module")
def topk8(text, tmp_path_factory):
    return write_teacher_topk(tmp_path_factory.mktemp("topk") / "teacher-top8.safetensors", text, 8)


def test_a_top_k_file_over_the_whole_vocabulary_gives_the_full_kd_loss(text, tmp_path):
    """k = V: the first step's loss is the float64 full-logits KD loss of the initial student, the teacher never
    runs in training, and the trajectory is that of a run that runs it."""
    from scipy.special import log_softmax, rel_entr

    from audit.load.causal_lm import load_causal_lm
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.recipes.train_lm import build_lm_student

    teacher = load_causal_lm(TEACHER, name="teacher")
    vocab = teacher.model.config.vocab_size
    path = write_teacher_topk(tmp_path / "teacher-all.safetensors", text, vocab, limit=1)
    windows = tokenize_windows(read_documents(text, split="train", limit=1), teacher.tokenizer, max_length=16,
                               stride=15)
    # one batch of every window: each step sees the same positions, whatever the order
    settings = dict(data=text, steps=3, loss="kd", kd_weight=0.5, temperature=1.0, train_limit=1,
                    **{**TINY, "batch_size": len(windows)})
    calls = []
    hook = teacher.model.register_forward_hook(lambda *_: calls.append(1))
    record = train_lm(LMTrainSettings(out=str(tmp_path / "topk"), teacher_topk=path, **settings), teacher=teacher,
                      audit_dev=False, progress=False)
    hook.remove()
    assert calls == []

    student = build_lm_student(TINY["model"], teacher, seed=0)
    keep = windows.targets != -100
    with torch.no_grad():
        s, t = (m(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits[keep].double().numpy()
                for m in (student.model, teacher.model))
    log_p, log_q = log_softmax(s, -1), log_softmax(t, -1)
    ce = -log_p[np.arange(len(log_p)), windows.targets[keep].numpy()]
    kl = rel_entr(np.exp(log_q), np.exp(log_p)).sum(-1)
    expected = float((0.5 * ce + 0.5 * kl).mean())
    assert record["loss_history"]["values"][0] == pytest.approx(expected, rel=1e-5)

    full = train_lm(LMTrainSettings(out=str(tmp_path / "full"), **settings), teacher=teacher, audit_dev=False,
                    progress=False)
    assert record["loss_history"]["values"] == pytest.approx(full["loss_history"]["values"], rel=1e-4)


def test_a_top_8_file_trains_through_the_cli(text, topk8, tmp_path, capsys):
    code, out, err = _cli(capsys, "train", "--data", text, "--model", "tiny-llama:hidden=32,layers=1", "--teacher",
                          TEACHER, "--teacher-topk", topk8, "--loss", "kd", "--temperature", "1", "--kd-weight", "0.5",
                          "--steps", "12", "--max-length", "16", "--batch-size", "2", "--lr", "1e-2", "--device",
                          "cpu", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "training_record.json").read_text())
    losses = record["loss_history"]["values"]
    assert record["settings"]["teacher_topk"] == topk8
    assert all(np.isfinite(losses)) and sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses


def test_a_bad_top_k_file_is_one_line_and_writes_nothing(text, topk8, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(topk8)
    nan, wide, bare = (str(tmp_path / f"{name}.safetensors") for name in ("nan", "wide", "bare"))
    save_file({**tensors, "topk_logprobs": tensors["topk_logprobs"].index_fill(0, torch.tensor([3]), float("nan"))},
              nan, metadata={"max_length": "16", "stride": "15"})
    save_file({**tensors, "topk_ids": tensors["topk_ids"].index_fill(0, torch.tensor([5]), 49_152 + 7)}, wide,
              metadata={"max_length": "16", "stride": "15"})
    save_file(tensors, bare)
    kd = ["--loss", "kd", "--temperature", "1"]
    cases = {
        "other max-length": ([*kd, "--teacher-topk", topk8, "--max-length", "12"], "max_length 12 and stride 11"),
        "other stride": ([*kd, "--teacher-topk", topk8, "--stride", "8"], "max_length 16 and stride 8"),
        "no window metadata": ([*kd, "--teacher-topk", bare], "(its metadata), got {'max_length': None"),
        "other documents": ([*kd, "--teacher-topk", topk8, "--train-limit", "3"], "matching the data's scored"),
        "ids beyond the vocabulary": ([*kd, "--teacher-topk", wide], "expected token ids in [0, 49152)"),
        "nan": ([*kd, "--teacher-topk", nan], "expected finite log-probabilities"),
        "missing file": ([*kd, "--teacher-topk", str(tmp_path / "none.safetensors")], "no such file"),
        "reverse kl": ([*kd, "--teacher-topk", topk8, "--divergence", "reverse-kl"], "--divergence forward-kl with"),
        "jsd": ([*kd, "--teacher-topk", topk8, "--divergence", "jsd"], "--divergence forward-kl with"),
        "temperature 2": (["--loss", "kd", "--teacher-topk", topk8], "--temperature 1 with --teacher-topk"),
        "without kd": (["--loss", "ce", "--teacher-topk", topk8], "--teacher-topk only with --loss kd"),
    }
    for case, (args, message) in cases.items():
        base = ["--data", text, "--teacher", TEACHER, "--model", "tiny-llama:hidden=32,layers=1", "--max-length", "16"]
        code, _, err = _cli(capsys, "train", *base, *args, "--out", str(tmp_path / "out"), "--steps", "2",
                            "--device", "cpu", "--no-progress")
        lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (case, err)
        assert not (tmp_path / "out").exists(), case


@pytest.mark.parametrize("option", [["--divergence", "jsd"], ["--beta", "0.5"], ["--steps", "3"], ["--stride", "8"],
                                    ["--teacher-topk", "topk.safetensors"], ["--freeze-embeddings"]])
def test_lm_only_options_are_refused_for_a_classifier(text, tmp_path, capsys, option):
    code, _, err = _cli(capsys, "train", "--data", text, "--model", "tiny:hidden=32,layers=1", "--out",
                        str(tmp_path / "out"), *option)
    assert code == 2 and err.count("\n") == 1
    assert f"expected {option[0]} only for causal-LM students" in err
    assert not (tmp_path / "out").exists()


def test_every_step_is_a_step_of_the_one_loop_weighted_by_scored_tokens(text, tmp_path, monkeypatch):
    from audit.recipes import training_run

    terms, real = [], training_run.batch_slice
    monkeypatch.setattr(training_run, "batch_slice", lambda rows, group, count: terms.append(count(rows)) or
                        real(rows, group, count))
    record = train_lm(LMTrainSettings(data=text, out=str(tmp_path / "run"), steps=3, **TINY), progress=False,
                      audit_dev=False)
    # 2 windows a batch, 15 scored tokens each but fewer in a document's short last window
    assert len(terms) == record["steps"] == 3 and all(0 < n <= 30 for n in terms) and len(set(terms)) > 1, terms


def test_no_training_module_imports_the_auditor():
    import subprocess
    import sys

    code = ("import sys, audit.recipes.train, audit.recipes.train_lm, audit.recipes.training_run; "
            "print('audit.compare' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr[-2000:]


def test_the_dev_audit_is_the_auditors(text):
    """The record's dev entries from the layers :func:`audit.compare.compare_lm` wraps are its numbers, key for key,
    whatever the loaded teacher's name."""
    from audit.compare import CompareSettings, compare_lm
    from audit.load.causal_lm import CausalLM, load_causal_lm
    from audit.load.data.text import read_documents
    from audit.recipes.train_lm import (
        DEV_BOOTSTRAP,
        REPORT_ONLY,
        build_lm_student,
        dev_audit,
        training_windows,
    )
    from audit.run.distributed import ProcessGroup

    settings = LMTrainSettings(data=text, out="-", seed=3, **TINY)
    teacher = load_causal_lm(TEACHER, name="lm-teacher")
    built = build_lm_student(settings.model, teacher, seed=0).model.eval()
    student = CausalLM("student", built, teacher.tokenizer, settings.model)
    dev = read_documents(text, split="dev")
    windows = training_windows(read_documents(text, split="train"), teacher.tokenizer, settings)
    ours = dev_audit(settings, teacher, student, windows, dev, device=torch.device("cpu"), group=ProcessGroup(),
                     progress=False)
    report = compare_lm(teacher, [student], dev, names=["teacher", "student"], settings=CompareSettings(
        max_length=settings.max_length, device="cpu", n_bootstrap=DEV_BOOTSTRAP, seed=3, progress=False, cache=False))

    def brief(entry):
        return {k: v for k, v in entry.items() if k not in REPORT_ONLY}

    assert ours["dev_data"]["n_sequences"] == 2 and ours["dev"]["ci"]["nll"][0] < ours["dev"]["ci"]["nll"][1]
    assert json.dumps(ours["dev"]) == json.dumps(brief(report["models"]["student"]))
    assert json.dumps(ours["dev_teacher"]) == json.dumps(brief(report["models"]["teacher"]))
    assert json.dumps(ours["dev_pair"]) == json.dumps(brief(report["pairs"][0]))
    assert json.dumps(ours["dev_data"]) == json.dumps(report["data"])


def test_the_dev_audit_leaves_the_student_in_its_trained_dtype(text, monkeypatch):
    """On a GPU the audit runs in bf16; the student saved after it must keep the dtype it was trained in."""
    from audit.load.causal_lm import CausalLM, load_causal_lm
    from audit.load.data.text import read_documents
    from audit.recipes import train_lm as recipe
    from audit.run.distributed import ProcessGroup

    monkeypatch.setattr(recipe, "resolve_dtype", lambda dtype, device: torch.bfloat16)
    settings = LMTrainSettings(data=text, out="-", seed=3, **TINY)
    teacher = load_causal_lm(TEACHER)
    student = CausalLM("student", recipe.build_lm_student(settings.model, teacher, seed=0).model.eval(),
                       teacher.tokenizer, settings.model)
    windows = recipe.training_windows(read_documents(text, split="train"), teacher.tokenizer, settings)
    record = recipe.dev_audit(settings, teacher, student, windows, read_documents(text, split="dev"),
                              device=torch.device("cpu"), group=ProcessGroup(), progress=False)
    assert record["dev"]["n"] > 0
    assert {p.dtype for p in student.model.parameters()} == {torch.float32}
