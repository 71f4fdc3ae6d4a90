"""On-policy (GKD-style) distillation in ``audit train`` (audit.recipes.train_lm, ``--lmbda``) and the training
callback's audit as its dev evaluation, on the fixture pair (fixtures/lm-teacher, fixtures/lm-student) on CPU.

With lmbda 1 the first step's loss is checked against a float64 loss written here: the initial student and the
teacher run on each prompt + the student's sampled reply alone, the soft term on the reply's tokens only. With
lmbda 0 nothing is sampled. ``audit train`` writes the callback's step report into OUT/kd_audit, whose numbers are
``compare``'s on the saved student, and ``audit report OUT`` renders it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from audit_cli import cli
from scipy.special import log_softmax

from audit.compare import compare_lm
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import read_documents
from audit.package import fixtures_path
from audit.recipes import train_lm as recipe
from audit.recipes.train_lm import DEV_BOOTSTRAP, REPORT_ONLY, sampling_seed, train_lm
from audit.run.generate import generate_completions
from audit.settings import CompareSettings, LMTrainSettings

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = str(fixtures_path() / "lm-student")
LINES = ["Who's there?", "Nay, answer me: stand, and unfold yourself.", "Long live the king!", "Bernardo?", "He.",
         "You come most carefully upon your hour.", "'Tis now struck twelve; get thee to bed, Francisco.",
         "For this relief much thanks: 'tis bitter cold,", "And I am sick at heart.", "Have you had quiet guard?",
         "Not a mouse stirring.", "Well, good night."]
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def teacher():
    return load_causal_lm(TEACHER, name="teacher")


@pytest.fixture
def pairs(tmp_path) -> str:
    """12 short prompt/reply rows (q, a), 10 train and 2 dev."""
    rows = [{"q": f"FRANCISCO: {LINES[i]}\n", "a": f"BERNARDO: {LINES[(i + 1) % len(LINES)]}",
             "split": "dev" if i in (3, 8) else "train"} for i in range(len(LINES))]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def sampled(monkeypatch) -> list[tuple[list[list[int]], list[list[int]]]]:
    """Every (prompts, completions) the recipe samples, through the real generation function."""
    calls = []

    def spy(lm, prompts, **options):
        completions = generate_completions(lm, prompts, **options)
        calls.append((prompts, completions))
        return completions

    monkeypatch.setattr(recipe, "generate_completions", spy)
    return calls


def settings(pairs: str, tmp_path, **options) -> LMTrainSettings:
    return LMTrainSettings(**{"data": pairs, "model": STUDENT, "teacher": TEACHER, "out": str(tmp_path / "run"),
                              "loss": "kd", "prompt_column": "q", "completion_column": "a", "steps": 1,
                              "batch_size": 64, "max_length": 48, "lr": 1e-2, "warmup": 0.0, "device": "cpu",
                              **options})


def float64_soft_term(teacher, prompts, completions, *, beta: float, temperature: float) -> float:
    """T^2 JSD_beta(teacher_T, student_T) = T^2 [beta KL(t || m) + (1 - beta) KL(s || m)], m = beta t + (1 - beta) s,
    averaged over every reply token, each prompt + reply run alone through the initial fixture student."""
    student = load_causal_lm(STUDENT).model.eval()
    terms = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            x = torch.tensor([prompt + completion])
            at = np.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)  # the logits that predict the reply
            s, t = (m(input_ids=x).logits[0].double().numpy()[at] / temperature for m in (student, teacher.model))
            p_s, p_t = np.exp(log_softmax(s, -1)), np.exp(log_softmax(t, -1))
            m = beta * p_t + (1 - beta) * p_s
            kl_t = np.sum(p_t * (np.log(p_t) - np.log(m)), -1)
            kl_s = np.sum(p_s * (np.log(p_s) - np.log(m)), -1)
            terms.append(temperature ** 2 * (beta * kl_t + (1 - beta) * kl_s))
    return float(np.concatenate(terms).mean())


def test_with_lmbda_1_the_loss_is_the_soft_term_on_the_students_own_replies(teacher, pairs, tmp_path, sampled):
    run = settings(pairs, tmp_path, lmbda=1.0, max_new_tokens=6, divergence="jsd", beta=0.3, temperature=2.0)
    record = train_lm(run, teacher=teacher, progress=False, audit_dev=False)
    assert len(sampled) == 1
    prompts, completions = sampled[0]
    # every training document's prompt, in document order, tokenised as the data's prompt column
    train = [json.loads(line) for line in open(pairs) if json.loads(line)["split"] == "train"]
    assert prompts == [teacher.tokenizer(row["q"])["input_ids"] for row in train]
    assert all(1 <= len(c) <= 6 for c in completions) and any(len(c) > 1 for c in completions)
    # the student's own samples, seeded from the step: the initial student samples the same again
    again = generate_completions(load_causal_lm(STUDENT), prompts, max_new_tokens=6, temperature=1.0, top_p=1.0,
                                 seed=sampling_seed(run, 0), device=CPU, dtype=torch.float32, batch_size=len(prompts))
    assert again == completions
    expected = float64_soft_term(teacher, prompts, completions, beta=0.3, temperature=2.0)
    assert record["loss_history"]["values"][0] == pytest.approx(expected, rel=1e-5)
    assert record["on_policy"]["steps"] == 1 and record["on_policy"]["lmbda"] == 1.0
    assert record["settings"]["lmbda"] == 1.0
    key = json.loads((tmp_path / "run" / "run.json").read_text())
    assert key["lmbda"] == 1.0 and key["max_new_tokens"] == 6


def test_with_lmbda_0_nothing_is_sampled(teacher, pairs, tmp_path, sampled):
    record = train_lm(settings(pairs, tmp_path, steps=3, batch_size=2), teacher=teacher, progress=False,
                      audit_dev=False)
    assert sampled == [] and record["on_policy"] is None and len(record["loss_history"]["values"]) == 3
    key = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "lmbda" not in key and "max_new_tokens" not in key  # the key of the same run before --lmbda existed


def test_a_long_prompt_keeps_its_end_so_prompt_and_reply_fit_a_window(teacher, pairs, tmp_path, sampled):
    run = settings(pairs, tmp_path, lmbda=1.0, max_new_tokens=12, max_length=16, batch_size=3)
    record = train_lm(run, teacher=teacher, progress=False, audit_dev=False)
    prompts, _ = sampled[0]
    full = [teacher.tokenizer(json.loads(line)["q"])["input_ids"] for line in open(pairs)
            if json.loads(line)["split"] == "train"]
    assert all(len(p) <= 4 for p in prompts) and all(any(f[-len(p):] == p for f in full) for p in prompts)
    assert record["on_policy"]["prompts_cut"] == sum(len(f) > 4 for f in full) > 0


@pytest.mark.parametrize("args, message", [
    (["--loss", "kd", "--lmbda", "1.5"], "expected --lmbda in [0, 1]"),
    (["--loss", "kd", "--lmbda", "-0.1"], "expected --lmbda in [0, 1]"),
    (["--loss", "ce", "--lmbda", "0.5"], "expected --lmbda with --loss kd"),
    (["--loss", "kd", "--lmbda", "0.5", "--teacher-topk", "missing.safetensors", "--temperature", "1"],
     "expected --lmbda with --loss kd and a teacher that runs"),
    (["--loss", "kd", "--lmbda", "0.5", "--max-new-tokens", "48"], "expected --max-new-tokens in [1, 47]"),
    (["--loss", "kd", "--lmbda", "0.5", "--text-data"], "expected prompt/completion or chat data with --lmbda"),
])
def test_bad_on_policy_options_are_one_line_and_write_nothing(pairs, tmp_path, capsys, args, message):
    if "--text-data" in args:  # plain text: nothing to reply to
        args = [a for a in args if a != "--text-data"]
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "a.txt").write_text(" ".join(LINES))
        data, columns = str(tmp_path / "docs"), []
    else:
        data, columns = pairs, ["--prompt-column", "q", "--completion-column", "a"]
    code, _, err = cli(capsys, "train", "--data", data, "--model", STUDENT, "--teacher", TEACHER, *columns, *args,
                       "--steps", "1", "--max-length", "48", "--device", "cpu", "--out", str(tmp_path / "run"),
                       "--no-progress")
    lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_train_writes_the_callbacks_step_report_and_report_draws_it(pairs, tmp_path, capsys, sampled):
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "train", "--data", pairs, "--model", STUDENT, "--teacher", TEACHER,
                            "--prompt-column", "q", "--completion-column", "a", "--loss", "kd", "--lmbda", "0.5",
                            "--max-new-tokens", "8", "--steps", "4", "--batch-size", "2", "--max-length", "48",
                            "--seed", "1", "--device", "cpu", "--out", str(out), "--no-progress")
    assert code == 0, err
    record = json.loads((out / "training_record.json").read_text())
    steps = record["on_policy"]["steps"]
    assert len(sampled) == steps and 0 < steps < 4  # seed 1: on-policy at some steps, not all
    files = sorted(p.name for p in (out / "kd_audit").iterdir())
    assert files == ["step-000004.json"]
    report = json.loads((out / "kd_audit" / files[0]).read_text())
    assert report["training"]["step"] == 4 and report["settings"]["n_bootstrap"] == DEV_BOOTSTRAP

    def brief(entry):
        return {k: v for k, v in entry.items() if k not in REPORT_ONLY}

    assert record["dev"] == brief(report["models"]["student"]) and record["dev_pair"] == brief(report["pairs"][0])
    assert record["dev_data"] == report["data"] and record["dev_data"]["n_sequences"] == 2
    # the numbers are compare's on the saved student
    plain = compare_lm(TEACHER, [str(out)], read_documents(pairs, split="dev", prompt_column="q",
                                                           completion_column="a"),
                       names=["teacher", "student"], settings=CompareSettings(
                           max_length=48, device="cpu", n_bootstrap=DEV_BOOTSTRAP, seed=1, progress=False,
                           cache=False))
    for key in ("kl", "kl_reverse", "entropy_shift", "agreement"):
        assert report["pairs"][0][key]["value"] == pytest.approx(plain["pairs"][0][key]["value"], rel=1e-5), key
    assert record["dev"]["perplexity"] == pytest.approx(plain["models"]["student"]["perplexity"], rel=1e-5)
    assert "dev perplexity" in stdout

    code, stdout, err = cli(capsys, "report", str(out))
    assert code == 0, err
    assert "kd-audit over training" in stdout and "teacher -> student" in stdout
    row = next(line for line in stdout.splitlines() if line.strip("│ ").startswith("4 "))
    assert f"{report['pairs'][0]['kl']['value']:.4f}" in row and f"{report['pairs'][0]['kl_reverse']['value']:.4f}" in row
