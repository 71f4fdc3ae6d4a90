"""``compare --generate``: the token audit on the students' own completions (audit.compare.add_on_policy), on the
fixture LM pair on CPU.

The on-policy numbers are checked against a float64 softmax over each model's forward on prompt + completion,
written here; a student identical to the teacher has zero KL on its own text; a student that puts most of its
mass on one token whatever the context (a real model: the fixture student with a bias on the comma's logit)
drifts from the teacher on its own text more than on the reference text. Bad input is checked through the CLI
(one line, exit 2, nothing written).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from audit_cli import cli

from audit.compare import compare, compare_lm
from audit.load.causal_lm import load_causal_lm
from audit.package import fixtures_path
from audit.report.schema import validate_report
from audit.run.generate import generate_completions
from audit.settings import CompareSettings

FIXTURES = fixtures_path()
TEACHER = str(FIXTURES / "lm-teacher")
STUDENT = str(FIXTURES / "lm-student")
LINES = [("To be, or not to be, that is the question:", " Whether 'tis nobler in the mind to suffer"),
         ("My lord, I pray you tell me", " where the king is gone."),
         ("Now is the winter of our discontent", " made glorious summer by this sun of York;"),
         ("O Romeo, Romeo! wherefore art thou", " Romeo? Deny thy father and refuse thy name;"),
         ("Friends, Romans, countrymen, lend me", " your ears; I come to bury Caesar, not to praise him."),
         ("If music be the food of love,", " play on; Give me excess of it, that, surfeiting,"),
         ("All the world's a stage,", " And all the men and women merely players;"),
         ("The quality of mercy is not strain'd;", " It droppeth as the gentle rain from heaven"),
         ("Once more unto the breach, dear friends,", " once more; Or close the wall up with our English dead."),
         ("Is this a dagger which I see before me,", " The handle toward my hand? Come, let me clutch thee."),
         ("What light through yonder window", " breaks? It is the east, and Juliet is the sun."),
         ("Tomorrow, and tomorrow, and tomorrow,", " Creeps in this petty pace from day to day,")]
TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings and arrows "
        "of outrageous fortune, Or to take arms against a sea of troubles And by opposing end them.")

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture
def dialogue(tmp_path) -> str:
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps({"id": f"line{i}", "prompt": p, "completion": c}) + "\n"
                            for i, (p, c) in enumerate(LINES)))
    return str(path)


@pytest.fixture
def docs(tmp_path) -> str:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"scene{i}.txt").write_text(" ".join([TEXT] * (i + 1)))
    return str(folder)


def settings(**options) -> CompareSettings:
    return CompareSettings(**{"max_length": 64, "n_bootstrap": 100, "progress": False, "generate": True,
                              "max_new_tokens": 8, "batch_size": 2, "device": "cpu", "dtype": "fp32", **options})


def comma_copier():
    """The fixture student with +6 on the comma's logit: its top token almost everywhere (max probability 0.95),
    whatever the context."""
    lm = load_causal_lm(STUDENT)
    weight = lm.model.get_input_embeddings().weight
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[lm.tokenizer(",")["input_ids"][0]] = 6.0
    lm.model.lm_head = head
    return dataclasses.replace(lm, name="comma-copier", source="lm-student with +6 on the comma's logit")


def test_the_teacher_as_its_own_student_has_zero_kl_on_its_own_text(dialogue):
    report = compare_lm(TEACHER, [TEACHER], dialogue, settings=settings())
    validate_report(report)
    own = report["pairs"][0]["on_policy"]
    for key in ("kl", "kl_reverse", "entropy_shift"):
        assert own[key]["value"] == pytest.approx(0.0, abs=1e-5), key
    assert own["agreement"]["value"] == 1.0 and own["topk_overlap"]["value"] == 1.0 and own["verdict"] == "inherits"
    assert own["n_sequences"] == len(LINES) and len(own["generations"]) == 10  # the ten most divergent
    student = report["models"]["lm-teacher#2"]["on_policy"]
    assert student["nll"] == pytest.approx(own["teacher_summary"]["nll"], rel=1e-6)
    assert "on_policy" not in report["models"]["lm-teacher"]  # the teacher wrote nothing
    assert report["on_policy"]["n_prompts"] == len(LINES) and report["on_policy"]["prompts"] == "the prompt column"


def test_on_policy_numbers_equal_a_float64_softmax_over_the_completion_tokens(dialogue):
    report = compare_lm(TEACHER, [STUDENT], dialogue, settings=settings())
    teacher, student = load_causal_lm(TEACHER), load_causal_lm(STUDENT)
    prompts = [student.tokenizer(p)["input_ids"] for p, _ in LINES]
    completions = generate_completions(student, prompts, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0,
                                       device=torch.device("cpu"), dtype=torch.float32, batch_size=2)
    kl, kl_reverse, nll_student, nll_teacher, agree = [], [], [], [], []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            ids = torch.tensor([prompt + completion])
            scored = slice(len(prompt) - 1, ids.shape[1] - 1)  # the positions that predict the completion
            log_t = torch.log_softmax(teacher.model(input_ids=ids).logits[0, scored].double(), -1)
            log_s = torch.log_softmax(student.model(input_ids=ids).logits[0, scored].double(), -1)
            target = torch.tensor(completion)
            kl.append((log_t.exp() * (log_t - log_s)).sum(-1))
            kl_reverse.append((log_s.exp() * (log_s - log_t)).sum(-1))
            nll_student.append(-log_s[torch.arange(len(completion)), target])
            nll_teacher.append(-log_t[torch.arange(len(completion)), target])
            agree.append((log_t.argmax(-1) == log_s.argmax(-1)).double())
    own, mine = report["pairs"][0]["on_policy"], report["models"]["lm-student"]["on_policy"]
    assert own["n"] == mine["n"] == sum(map(len, completions))
    assert own["kl"]["value"] == pytest.approx(float(torch.cat(kl).mean()), rel=1e-4)
    assert own["kl_reverse"]["value"] == pytest.approx(float(torch.cat(kl_reverse).mean()), rel=1e-4)
    assert own["agreement"]["value"] == pytest.approx(float(torch.cat(agree).mean()))
    assert mine["nll"] == pytest.approx(float(torch.cat(nll_student).mean()), rel=1e-4)
    assert own["teacher_summary"]["nll"] == pytest.approx(float(torch.cat(nll_teacher).mean()), rel=1e-4)
    assert mine["generation"] == {"prompts": len(LINES), "tokens": own["n"], "ended_at_eos": 0,
                                  "mean_length": own["n"] / len(LINES)}
    # what the student said, most divergent first, by the mean KL of its own tokens
    means = [float(k.mean()) for k in kl]
    shown = own["generations"]
    assert [g["kl"] for g in shown] == pytest.approx(sorted(means, reverse=True)[:10], rel=1e-4)
    worst = max(range(len(LINES)), key=means.__getitem__)
    assert shown[0]["id"] == f"line{worst}" and shown[0]["prompt"] == LINES[worst][0]
    assert shown[0]["completion"] == student.tokenizer.decode(completions[worst], skip_special_tokens=True)
    # the reference view is the plain audit's, untouched
    plain = compare_lm(TEACHER, [STUDENT], dialogue, settings=settings(generate=False, max_new_tokens=64))
    assert report["pairs"][0]["kl"] == plain["pairs"][0]["kl"] and "on_policy" not in plain


def test_a_student_that_copies_one_token_drifts_on_its_own_text(dialogue):
    report = compare_lm(TEACHER, [comma_copier()], dialogue, settings=settings(max_new_tokens=16, n_bootstrap=200))
    validate_report(report)
    pair = report["pairs"][0]
    own = pair["on_policy"]
    model = report["models"]["comma-copier"]
    assert model["maxprob_mean"] > 0.9 and model["on_policy"]["maxprob_mean"] > 0.9  # regardless of context
    assert own["generations"][0]["completion"].count(",") >= 8  # what it wrote: mostly commas
    # on reference text the comma is often the teacher's choice too; after a run of commas it never is
    assert own["agreement"]["ci"][1] < pair["agreement"]["ci"][0]
    assert own["kl_reverse"]["ci"][0] > pair["kl_reverse"]["ci"][1]
    assert own["kl"]["value"] > pair["kl"]["value"]


def test_the_cli_writes_both_views_and_prints_them_within_80_columns(tmp_path, capsys, monkeypatch, docs):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", docs,
                            "--max-length", "32", "--generate", "--max-new-tokens", "8", "--temperature", "0.8",
                            "--top-p", "0.95", "--bootstrap", "50", "--no-progress", "--json", str(out / "r.json"),
                            "--html", str(out / "r.html"))
    assert code == 0, err
    assert "On the students' own text" in stdout and "lm-student diverged most on" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80
    report = json.loads((out / "r.json").read_text())
    validate_report(report)
    assert report["settings"]["temperature"] == 0.8 and report["settings"]["top_p"] == 0.95
    assert "first half of each document's first window" in report["on_policy"]["prompts"]
    tokenizer = load_causal_lm(STUDENT).tokenizer
    texts = {f"scene{i}.txt": " ".join([TEXT] * (i + 1)) for i in range(3)}
    for g in report["pairs"][0]["on_policy"]["generations"]:
        ids = tokenizer(texts[g["id"]])["input_ids"]
        assert g["prompt"] == tokenizer.decode(ids[:min(len(ids), 32) // 2])
    page = (out / "r.html").read_text()
    assert "<h2>On the students' own text</h2>" in page and "lm-student: own text" in page
    code, again, err = cli(capsys, "report", str(out / "r.json"))
    assert code == 0 and "On the students' own text" in again, err


def test_a_second_run_reads_completions_and_columns_from_the_cache(dialogue, monkeypatch):
    from audit.run.adapters import CausalLMAdapter

    first = compare(TEACHER, [STUDENT], dialogue, settings=settings())
    forwards, generations = [], []
    forward, generate = CausalLMAdapter.forward, type(load_causal_lm(STUDENT).model).generate
    monkeypatch.setattr(CausalLMAdapter, "forward", lambda self, *a, **k: forwards.append(1) or forward(self, *a, **k))
    monkeypatch.setattr(type(load_causal_lm(STUDENT).model), "generate",
                        lambda self, *a, **k: generations.append(1) or generate(self, *a, **k))
    second = compare(TEACHER, [STUDENT], dialogue, settings=settings())
    assert forwards == [] and generations == []  # nothing ran: the reference columns, completions and own columns
    assert second["pairs"][0]["on_policy"] == first["pairs"][0]["on_policy"]
    assert second["models"]["lm-student"]["on_policy"] == first["models"]["lm-student"]["on_policy"]
    third = compare(TEACHER, [STUDENT], dialogue, settings=settings(seed=1))
    assert generations and third["pairs"][0]["on_policy"]["kl"] != first["pairs"][0]["on_policy"]["kl"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, dialogue):
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.reduce.topk import topk_from_logits, write_topk_logits

    teacher = load_causal_lm(TEACHER)
    windows = tokenize_windows(read_documents(dialogue), teacher.tokenizer, max_length=32)
    with torch.no_grad():
        logits = teacher.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    topk = write_topk_logits(tmp_path / "top.safetensors", *topk_from_logits(logits[windows.targets != -100], 16),
                             *windows.scored())
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(json.dumps({"prompt": "to be or not " * 700, "completion": " that is"}) + "\n")
    lm = ["--teacher", TEACHER, "--student", STUDENT, "--data", dialogue]
    cases = {
        "top-k teacher": (["--teacher", str(topk), "--student", STUDENT, "--data", dialogue, "--generate"],
                          "cannot score the students' new text"),
        "classifier": (["--teacher", str(FIXTURES / "teacher"), "--student", str(FIXTURES / "student-kd"), "--data",
                        str(FIXTURES / "vader-movies-test.jsonl"), "--limit", "8", "--generate"],
                       "expected a causal-LM teacher and students with --generate"),
        "no new tokens": ([*lm, "--generate", "--max-new-tokens", "0"], "--max-new-tokens >= 1"),
        "beyond the context": ([*lm, "--generate", "--max-new-tokens", "4096"], "below the models' context of 2048"),
        "prompt beyond the context": (["--teacher", TEACHER, "--student", STUDENT, "--data", str(long_prompt),
                                       "--generate"], "leave room for --max-new-tokens 64"),
        "sampling without --generate": ([*lm, "--temperature", "0.7", "--top-p", "0.9"],
                                        "--temperature, --top-p only with --generate"),
        "top-p of zero": ([*lm, "--generate", "--top-p", "0"], "--top-p in (0, 1]"),
    }
    for case, (args, message) in cases.items():
        code, _, err = cli(capsys, "compare", *args, "--max-length", "32", "--bootstrap", "20", "--no-progress",
                           "--json", str(tmp_path / "out" / "r.json"))
        lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (case, err)
        assert "Traceback" not in err and not (tmp_path / "out").exists(), case
