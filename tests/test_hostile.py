"""Hostile input across the commands: nothing lost, nothing silently wrong, one line and exit 2, nothing written.

Each test stands for a class of failure (issue 10), not one example: data loss (cache clear, outputs over
inputs), silently wrong numbers (no tokenizer, a random head, damaged cache shards, stale weight hashes,
undefined correlations, label names that do not fit), and tracebacks or partial files (output paths, bad
options, non-UTF-8 data, malformed saved reports, refused training runs, an unusable cache, the pytest plugin).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cli import cli

from audit.cli import DEFAULT_DATA, FIXTURES
from audit.compare import CompareSettings, compare
from audit.errors import AuditError
from audit.load.models import Predictions, save_predictions
from audit.outputs import write_files
from audit.run.cache import MARKER, PredictionStore, cache_root, clear_cache, file_sha256

TEACHER = str(FIXTURES / "teacher")
STUDENT = str(FIXTURES / "student-kd")
DATA = str(DEFAULT_DATA)
FAST = ["--limit", "24", "--bootstrap", "20", "--no-progress", "--no-cache"]

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")




def assert_refused(code: int, err: str, pattern: str) -> None:
    import re

    errors = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), errors[0]


def logits_file(path: Path, logits: torch.Tensor, label_names=None) -> str:
    save_predictions(Predictions(path.stem, logits, None, label_names), path)
    return str(path)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- data loss ---------------------------------------------------------------------------------------------


def test_cache_clear_deletes_only_what_the_cache_wrote(capsys):
    store = PredictionStore.open({"k": 1}, name="m", num_classes=2)
    store.add(0, torch.tensor([0, 1]), torch.zeros(2, 2))
    store.flush()
    root = cache_root()
    (root / "notes.txt").write_text("mine")
    (root / "photos").mkdir()
    (root / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    (store.folder / "keep.txt").write_text("mine too")
    code, out, _ = cli(capsys, "cache", "clear")
    assert code == 0 and "removed 1 cached predictions" in out and "left 3 paths" in out
    assert (root / "notes.txt").read_text() == "mine" and (root / "photos" / "a.jpg").exists()
    assert (store.folder / "keep.txt").exists()
    assert not list(store.folder.glob("shard-*")) and not (store.folder / "manifest.json").exists()


def test_cache_clear_refuses_a_folder_that_is_not_a_cache(capsys):
    root = cache_root()
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("years of work")
    code, _, err = cli(capsys, "cache", "clear")
    assert_refused(code, err, "kd-audit prediction cache")
    assert (root / "thesis.tex").read_text() == "years of work"


def test_an_empty_cache_clears_to_nothing(capsys):
    PredictionStore.open({"k": 2}, name="m", num_classes=2)
    assert (cache_root() / MARKER).exists()
    assert clear_cache() == (1, 0)
    assert not cache_root().exists()


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_an_output_never_overwrites_an_input(tmp_path, capsys, option):
    data = tmp_path / "d.jsonl"
    shutil.copy(DATA, data)
    before = data.read_bytes()
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(data),
                       option, str(data), *FAST)
    assert_refused(code, err, "separate from the inputs")
    assert data.read_bytes() == before


def test_outputs_never_write_into_or_over_a_logits_input(tmp_path, capsys):
    logits = tmp_path / "logits"
    logits.mkdir()
    teacher = logits_file(logits / "teacher.safetensors", torch.randn(5, 2))
    student = logits_file(logits / "student.safetensors", torch.randn(5, 2))
    before = tree(logits)
    for option in ("--save-logits", "--plots"):
        code, _, err = cli(capsys, "compare", "--teacher", teacher, "--student", student, option, str(logits), *FAST)
        assert_refused(code, err, "separate from the inputs")
    code, _, err = cli(capsys, "compare", "--teacher", teacher, "--student", student, "--json",
                       str(logits / "teacher.safetensors"), *FAST)
    assert_refused(code, err, "separate from the inputs")
    assert tree(logits) == before


def test_train_overwrite_never_deletes_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = cli(capsys, "train", "--data", DATA, "--model", "tiny:hidden=32,layers=1", "--out", str(out),
                       "--overwrite", "--no-progress")
    assert_refused(code, err, "never deletes files it did not write")
    assert tree(out) == {"thesis.tex": b"years of work"}


# ---- silently wrong numbers --------------------------------------------------------------------------------


def test_a_checkpoint_without_tokenizer_files_is_refused_or_given_one(tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(TEACHER, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    code, _, err = cli(capsys, "compare", "--teacher", str(folder), "--student", STUDENT, "--data", DATA, *FAST)
    assert_refused(code, err, "tokenizer files")
    code, _, err = cli(capsys, "compare", "--teacher", str(folder), "--student", STUDENT, "--data", DATA,
                       "--tokenizer", TEACHER, "--json", str(tmp_path / "r.json"), *FAST)
    assert code == 0, err
    with_own = json.loads((tmp_path / "r.json").read_text())
    cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--json",
        str(tmp_path / "own.json"), *FAST)
    own = json.loads((tmp_path / "own.json").read_text())
    assert with_own["models"]["no-tokenizer"]["nll"] == pytest.approx(own["models"]["teacher"]["nll"], abs=1e-6)


def test_a_checkpoint_without_a_trained_head_is_refused(tmp_path, capsys):
    from transformers import AutoModel

    folder = tmp_path / "encoder"
    AutoModel.from_pretrained(TEACHER).save_pretrained(folder)  # the body alone: no classifier weights
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(TEACHER) / name, folder / name)
    code, _, err = cli(capsys, "compare", "--teacher", str(folder), "--student", STUDENT, "--data", DATA, *FAST)
    assert_refused(code, err, "without .* weights .*classifier")
    code, _, err = cli(capsys, "compare", "--teacher", str(folder), "--student", STUDENT, "--data", DATA,
                       "--allow-missing-weights", *FAST)
    assert code == 0, err


def test_a_damaged_cache_shard_is_dropped_and_recomputed(capsys):
    settings = CompareSettings(limit=64, n_bootstrap=20, progress=False, batch_size=8)
    first = compare(TEACHER, [STUDENT], DATA, settings=settings)
    shards = sorted(cache_root().rglob("shard-*.safetensors"))
    assert shards
    for shard in shards:  # flip one bit in the logits' bytes of every shard
        raw = bytearray(shard.read_bytes())
        raw[-5] ^= 0x10
        shard.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="damaged cache shard"):
        second = compare(TEACHER, [STUDENT], DATA, settings=settings)
    uncached = compare(TEACHER, [STUDENT], DATA, settings=CompareSettings(**{**settings.__dict__, "cache": False}))
    for report in (second, uncached):
        assert report["models"] == first["models"] and report["pairs"] == first["pairs"]


def test_a_truncated_manifest_or_memo_is_rebuilt_with_a_warning(tmp_path):
    store = PredictionStore.open({"k": 3}, name="m", num_classes=2)
    store.add(0, torch.tensor([0]), torch.ones(1, 2))
    store.flush()
    (store.folder / "manifest.json").write_text('{"key": ')
    with pytest.warns(UserWarning, match="unreadable cache manifest"):
        reopened = PredictionStore.open({"k": 3}, name="m", num_classes=2)
    assert reopened.cached_batches() == set()  # shards of an entry whose manifest was lost are not trusted
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc")
    file_sha256(weights)
    (cache_root() / "file-hashes.json").write_text("\x00garbage")
    with pytest.warns(UserWarning, match="unreadable hash memo"):
        assert file_sha256(weights) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_weights_replaced_with_the_same_size_and_mtime_get_a_new_hash(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    first = file_sha256(weights)
    stat = weights.stat()
    weights.write_bytes(b"b" * 64)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the mtime restored, as a copy tool may do
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_sha256(weights) != first


def test_constant_confidences_give_null_correlations_with_a_reason(tmp_path, capsys):
    same = torch.tensor([[2.0, -1.0]]).repeat(30, 1)
    teacher = logits_file(tmp_path / "teacher.safetensors", same)
    student = logits_file(tmp_path / "student.safetensors", same + 0.5 * torch.randn(30, 2))
    out = tmp_path / "r.json"
    code, stdout, err = cli(capsys, "compare", "--teacher", teacher, "--student", student, "--json", str(out), *FAST)
    assert code == 0, err
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    pair = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))["pairs"][0]
    for key in ("corr_entropy_pearson", "corr_entropy_spearman", "corr_maxprob_pearson", "corr_maxprob_spearman"):
        assert pair[key]["value"] is None and pair[key]["ci"] is None and "constant" in pair[key]["reason"]
    assert pair["kl"]["value"] is not None
    assert pair["verdict"] == "inconclusive" and "undefined" in pair["verdict_reason"]
    assert "undefined" in stdout


@pytest.mark.parametrize("names, message", [(["a", "b", "c"], "2 label names for 2 logit columns"),
                                            (["a", "a"], "distinct label names")])
def test_label_names_that_do_not_fit_the_logits_are_refused(tmp_path, capsys, names, message):
    teacher = logits_file(tmp_path / "t.safetensors", torch.randn(4, 2), names)
    student = logits_file(tmp_path / "s.safetensors", torch.randn(4, 2))
    code, _, err = cli(capsys, "compare", "--teacher", teacher, "--student", student, *FAST)
    assert_refused(code, err, message)


def test_nan_weights_name_the_model(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-teacher"
    shutil.copytree(TEACHER, folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if "classifier.weight" in k)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    code, _, err = cli(capsys, "compare", "--teacher", str(folder), "--student", STUDENT, "--data", DATA, *FAST)
    assert_refused(code, err, "finite logits from nan-teacher.*weights hold NaN")


# ---- tracebacks and partial files -------------------------------------------------------------------------


def _output_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    return {
        "json is a folder": (["--json", str(a_dir)], "file path for --json"),
        "html is a folder": (["--html", str(a_dir)], "file path for --html"),
        "plots is a file": (["--plots", str(a_file)], "folder for --plots"),
        "save-logits is a file": (["--save-logits", str(a_file)], "folder for --save-logits"),
        "parent is a file": (["--json", str(a_file / "r.json")], "folder above --json"),
        "proc": (["--json", "/proc/kd-audit.json"], "writable place for --json"),
        "same path twice": (["--json", str(tmp_path / "r"), "--html", str(tmp_path / "r")], "different paths"),
    }


@pytest.mark.parametrize("case", ["json is a folder", "html is a folder", "plots is a file", "save-logits is a file",
                                  "parent is a file", "proc", "same path twice"])
def test_bad_output_paths_are_refused_before_any_work(tmp_path, capsys, case):
    extra, message = _output_cases(tmp_path)[case]
    before = tree(tmp_path)
    code, _, err = cli(capsys, "compare", "--teacher", "nope/missing-model", "--student", STUDENT, "--data", DATA,
                       *extra, *FAST)
    assert_refused(code, err, message)  # checked before the (missing) teacher is even looked at
    assert tree(tmp_path) == before


def test_writing_is_all_or_nothing(tmp_path):
    good, blocker = tmp_path / "good.json", tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    with pytest.raises(AuditError, match="nothing was written"):
        write_files({good: b"{}", tmp_path / "plots" / "a.png": b"png", blocker / "b.png": b"png"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize("args, message", [
    (["--max-length", "0"], "--max-length >= 1"),
    (["--max-length", "-1"], "--max-length >= 1"),
    (["--bins", "1e9"], "valid integer"),
    (["--bins", "1000000000"], "--bins between 1 and 10000"),
    (["--bins", "500"], "at most the number of examples"),
    (["--bootstrap", "100000000"], "--bootstrap between 1 and 100000"),
    (["--teacher"], "requires an argument"),
])
def test_bad_options_are_one_line(tmp_path, capsys, args, message):
    base = ["compare", "--student", STUDENT, "--data", DATA, "--json", str(tmp_path / "r.json"), *FAST]
    if args != ["--teacher"]:
        base += ["--teacher", TEACHER]
    code, _, err = cli(capsys, *base, *args)
    assert_refused(code, err, message)
    assert not (tmp_path / "r.json").exists()


def test_max_length_beyond_the_model_is_clamped_with_a_note(tmp_path, capsys):
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA,
                       "--max-length", "100000", "--json", str(tmp_path / "r.json"), *FAST)
    assert code == 0, err
    assert "kd-audit: warning: --max-length 100000 is more than teacher has positions for; using 512" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_data_that_is_not_utf8_names_the_byte_offset(tmp_path, capsys, suffix):
    path = tmp_path / f"d{suffix}"
    head = {".jsonl": b'{"text": "fine", "label": 0}\n{"text": "caf', ".csv": b"text,label\ncaf",
            ".tsv": b"text\tlabel\ncaf"}[suffix]
    path.write_bytes(head + b"\xe9 noir" + (b'", "label": 1}\n' if suffix == ".jsonl" else b",1\n"))
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(path), *FAST)
    assert_refused(code, err, f"not UTF-8 at byte offset {len(head)}")


def _saved_report(tmp_path: Path, capsys) -> dict:
    teacher = logits_file(tmp_path / "teacher.safetensors", torch.randn(20, 2, generator=torch.Generator().manual_seed(1)))
    student = logits_file(tmp_path / "student.safetensors", torch.randn(20, 2, generator=torch.Generator().manual_seed(2)))
    code, _, err = cli(capsys, "compare", "--teacher", teacher, "--student", student, "--json",
                       str(tmp_path / "r.json"), *FAST)
    assert code == 0, err
    return json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["models"]["teacher"].pop("entropy_mean"), "models/teacher: 'entropy_mean' is a required"),
    (lambda r: r["pairs"][0].__setitem__("kl", "big"), "pairs/0/kl"),
    (lambda r: r.__setitem__("pairs", {}), "pairs"),
    (lambda r: r["data"].__setitem__("n", -3), "data/n"),
    (lambda r: r.__setitem__("schema", "kd-audit/compare/9"), "schema"),
])
def test_report_validates_a_saved_report_against_its_schema(tmp_path, capsys, damage, message):
    report = _saved_report(tmp_path, capsys)
    code, _, err = cli(capsys, "report", str(tmp_path / "r.json"), "--html", str(tmp_path / "a.html"))
    assert code == 0, err
    damage(report)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    code, _, err = cli(capsys, "report", str(bad), "--html", str(tmp_path / "b.html"))
    assert_refused(code, err, message)
    assert not (tmp_path / "b.html").exists()


def test_report_refuses_a_bare_nan(tmp_path, capsys):
    report = _saved_report(tmp_path, capsys)
    report["pairs"][0]["kl"]["value"] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(report))  # Python writes NaN, which is not JSON
    code, _, err = cli(capsys, "report", str(path))
    assert_refused(code, err, "NaN is not JSON")


@pytest.fixture
def train_data(tmp_path):
    path = tmp_path / "splits.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2, "split": "train" if i < 8 else "dev"}) + "\n"
                            for i in range(12)))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny:hidden=abc"], r"tiny\[:hidden=H"),
    (["--model", "tiny:width=64"], r"tiny\[:hidden=H"),
    (["--max-length", "0"], "--max-length >= 2"),
    (["--loss", "kd"], "--teacher with --loss kd"),
    (["--data", "vader-films"], "vader-movies"),
])
def test_a_refused_training_run_leaves_nothing_behind(tmp_path, capsys, train_data, args, message):
    out = tmp_path / "run"
    base = {"--data": train_data, "--model": "tiny:hidden=32,layers=1"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code, _, err = cli(capsys, "train", *[x for kv in base.items() for x in kv], "--out", str(out), "--no-progress",
                       *[a for a in args if a not in base and a not in base.values()])
    assert_refused(code, err, message)
    assert not out.exists()


def test_train_without_a_dev_split_is_refused_before_training(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2, "split": "train"}) + "\n" for i in range(8)))
    code, _, err = cli(capsys, "train", "--data", str(data), "--model", "tiny:hidden=32,layers=1", "--out",
                       str(tmp_path / "run"), "--no-progress")
    assert_refused(code, err, "dev")
    assert not (tmp_path / "run").exists()


def test_train_out_that_is_a_file(tmp_path, capsys, train_data):
    out = tmp_path / "run"
    out.write_text("x")
    code, _, err = cli(capsys, "train", "--data", train_data, "--model", "tiny:hidden=32,layers=1", "--out", str(out),
                       "--no-progress")
    assert_refused(code, err, "folder for --out")
    assert out.read_text() == "x"


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_unusable_cache_folder_runs_uncached_with_a_warning(tmp_path, capsys, monkeypatch, where):
    if where == "file":
        (tmp_path / "cache-file").write_text("x")
        monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache-file"))
    else:
        monkeypatch.setenv("KD_AUDIT_CACHE", "/proc/kd-audit")
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--limit", "8",
                       "--bootstrap", "10", "--no-progress", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert "kd-audit: warning: running without the prediction cache" in err and "Traceback" not in err
    code, out, err = cli(capsys, "cache", "list")
    assert code == 0 and "Traceback" not in err


# ---- top-k teacher files that lie (issue 26) ----------------------------------------------------------------

LM_TEACHER = str(FIXTURES / "lm-teacher")
LM_STUDENT = f"{LM_TEACHER}@layers=1"
LM_FAST = ["--max-length", "32", "--bootstrap", "20", "--no-progress", "--no-cache"]


@pytest.fixture(scope="module")
def lm_docs(tmp_path_factory) -> tuple[Path, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A folder of 3 documents, the LM teacher's top-16 ids and log-probabilities at their scored positions in
    windows of 32 (stride 16), and those positions."""
    from audit.load.causal_lm import load_causal_lm
    from audit.load.data.text import read_documents, tokenize_windows
    from audit.reduce.topk import topk_from_logits

    folder = tmp_path_factory.mktemp("lm-docs")
    for i in range(3):
        (folder / f"scene{i}.txt").write_text("To be, or not to be, that is the question. " * (i + 2))
    teacher = load_causal_lm(LM_TEACHER)
    windows = tokenize_windows(read_documents(str(folder)), teacher.tokenizer, max_length=32)
    with torch.no_grad():
        logits = teacher.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    return folder, topk_from_logits(logits[windows.targets != -100], 16), windows.scored()


@pytest.mark.parametrize("lie, message", [
    ("renormalised", "every row summing to 1 within rounding.*renormalised over the top k.*log_softmax over all"),
    ("windows", r"max_length 32 and stride 16 \(the audit's\), got max_length 16 and stride 8.*pass --max-length 16 "
                "--stride 8"),
])
def test_a_topk_teacher_file_that_lies_is_refused(tmp_path, capsys, lm_docs, lie, message):
    """Log-probabilities renormalised over the top 16 gave KL 1.45 for 0.10 and reverse KL 11.4 for 0.09, still
    called lower bounds; a file written from windows of 16/8 was audited at 64/32 without a word."""
    from audit.reduce.topk import write_topk_logits

    docs, (ids, logprobs), scored = lm_docs
    if lie == "renormalised":
        logprobs = torch.log_softmax(logprobs, -1)
    metadata = {"max_length": "16", "stride": "8"} if lie == "windows" else None
    path = write_topk_logits(tmp_path / "teacher-top16.safetensors", ids, logprobs, *scored, metadata=metadata)
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", "--teacher", str(path), "--student", LM_STUDENT, "--data", str(docs),
                       "--json", str(out), *LM_FAST)
    assert_refused(code, err, message)
    assert not out.exists()
    if lie == "windows":  # the fix it names runs
        code, _, err = cli(capsys, "compare", "--teacher", str(path), "--student", LM_STUDENT, "--data", str(docs),
                           "--json", str(out), *LM_FAST[2:], "--max-length", "16", "--stride", "8")
        assert code == 0, err


# ---- messages that name the cause and a fix that works (issue 26) -------------------------------------------


@pytest.mark.parametrize("kind", [[], ["--kind", "classifier"], ["--kind", "lm"]])
def test_a_classifier_cut_with_layers_is_told_to_drop_it(tmp_path, capsys, kind):
    """``--teacher fixtures/teacher@layers=1`` advised --kind classifier, which then called the BERT classifier
    "the causal LM"."""
    code, _, err = cli(capsys, "compare", "--teacher", f"{TEACHER}@layers=1", "--student", STUDENT, "--data", DATA,
                       "--json", str(tmp_path / "r.json"), *kind, *FAST)
    assert_refused(code, err, "@layers=1.*cuts causal LMs only|cuts the layers of causal LMs only; drop @layers=1")
    assert "the causal LM" not in err and "with --kind classifier" not in err
    assert not (tmp_path / "r.json").exists()


def test_layers_zero_names_the_layers_there_are(tmp_path, capsys, lm_docs):
    code, _, err = cli(capsys, "compare", "--teacher", LM_TEACHER, "--student", f"{LM_TEACHER}@layers=0", "--data",
                       str(lm_docs[0]), *LM_FAST)
    assert_refused(code, err, r"1 <= k <= 2 .*got @layers=0; pass @layers=1 to @layers=2")
    assert "fewer" not in err


def test_a_topk_file_as_a_student_is_told_it_is_a_teacher(tmp_path, capsys, lm_docs):
    """It said "check the path" for a file that exists."""
    from audit.reduce.topk import write_topk_logits

    docs, (ids, logprobs), scored = lm_docs
    path = write_topk_logits(tmp_path / "top16.safetensors", ids, logprobs, *scored)
    code, _, err = cli(capsys, "compare", "--teacher", LM_TEACHER, "--student", str(path), "--data", str(docs),
                       *LM_FAST)
    assert_refused(code, err, "a top-k logits file, which stands in for a teacher only.*as --teacher")
    assert "check the path" not in err
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", str(path), "--data", DATA, *FAST)
    assert_refused(code, err, "got a top-k logits file.*pass it as --teacher of a token audit")
    code, _, err = cli(capsys, "compare", "--teacher", str(path), "--student", LM_STUDENT, "--data", str(docs),
                       "--json", str(tmp_path / "r.json"), *LM_FAST)  # where it belongs
    assert code == 0, err


def test_a_plain_hub_id_is_looked_up_as_a_namespaced_one(capsys, monkeypatch):
    """``distilbert-base-uncased-finetuned-sst-2-english`` said "no such file or folder" where its namespaced name
    said the Hub is out of reach and to use the local cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec in ("distilbert-base-uncased-finetuned-sst-2-english",
                 "distilbert/distilbert-base-uncased-finetuned-sst-2-english"):
        code, _, err = cli(capsys, "compare", "--teacher", spec, "--student", STUDENT, "--data", DATA, *FAST)
        assert_refused(code, err, f"could not load the Hugging Face model '{spec}'.*hub id that is in the local cache")
        assert "no such file or folder" not in err


def test_a_data_folder_without_the_split_suggests_the_split_it_has(tmp_path, capsys, monkeypatch):
    """A folder with only train.jsonl wrote into ~/.cache/huggingface/datasets and did not suggest --split train."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    folder = tmp_path / "movies"
    folder.mkdir()
    shutil.copy(DATA, folder / "train.jsonl")
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(folder),
                       "--json", str(out), *FAST)
    assert_refused(code, err, r"expected a test split in the folder .*movies, got only train \(train.jsonl\); "
                              "pass --split train")
    assert not out.exists()
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(folder),
                       "--split", "train", "--json", str(out), *FAST)
    assert code == 0, err
    assert not (tmp_path / "hf").exists()  # read without the datasets cache, refused or not
    assert sorted(p.name for p in folder.iterdir()) == ["train.jsonl"]


def test_a_json_array_of_logits_is_read(tmp_path, capsys):
    """It got pyarrow's "JSON parse error: Column() changed from object to array"."""
    rows = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    (tmp_path / "teacher.json").write_text(json.dumps(rows.tolist()))
    (tmp_path / "student.json").write_text(json.dumps([{"logits": r} for r in (0.5 * rows).tolist()]))
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", "--teacher", str(tmp_path / "teacher.json"), "--student",
                       str(tmp_path / "student.json"), "--json", str(out), *FAST)
    assert code == 0, err
    assert json.loads(out.read_text())["models"]["teacher"]["n"] == 12
    (tmp_path / "bad.json").write_text(json.dumps([[1.0, 2.0], "three"]))
    code, _, err = cli(capsys, "compare", "--teacher", str(tmp_path / "bad.json"), "--student",
                       str(tmp_path / "student.json"), *FAST)
    assert_refused(code, err, "JSON array of logit rows")
    assert "changed from object to array" not in err


# ---- one checkpoint under two names (issue 26) ---------------------------------------------------------------


def test_a_renamed_or_repeated_checkpoint_hits_its_cache_entry(tmp_path, capsys):
    """The manifest stored the display name and the key did not: ``--name``, or a checkpoint audited against itself,
    warned "whose manifest does not match its key; recomputing it"."""
    cached = [a for a in FAST if a != "--no-cache"]
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA,
                       "--json", str(tmp_path / "a.json"), *cached)
    assert code == 0, err
    for extra in (["--name", "big", "--name", "small"], ["--student", TEACHER]):
        code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA,
                           "--json", str(tmp_path / "b.json"), *extra, *cached)
        assert code == 0, err
        assert "does not match its key" not in err and "warning" not in err, err
    renamed = json.loads((tmp_path / "b.json").read_text())
    assert renamed["models"]["teacher#2"]["nll"] == json.loads((tmp_path / "a.json").read_text())["models"]["teacher"]["nll"]


# ---- the pytest plugin -------------------------------------------------------------------------------------


def _inner_pytest(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_pair.py").write_text("def test_pair(kd_audit_pair):\n    assert kd_audit_pair.teacher\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), *options],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "KD_AUDIT_CACHE": str(tmp_path / "cache")})


@pytest.mark.parametrize("options, message", [
    (["--kd-audit-teacher", "missing/./teacher", "--kd-audit-student", STUDENT, "--kd-audit-data", DATA],
     "kd_audit_teacher to be an existing path"),
    (["--kd-audit-teacher", TEACHER, "--kd-audit-student", STUDENT], "expected kd_audit_data"),
    (["--kd-audit-report", "/proc/report.json"], "writable place for --kd-audit-report"),
])
def test_plugin_misuse_is_a_one_line_usage_error(tmp_path, options, message):
    result = _inner_pytest(tmp_path, *options)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert message in output and "Traceback" not in output and "def kd_audit_pair" not in output, output


# ---- fuzz: every draw is a valid report or one line and exit 2 -------------------------------------------


def _outcome_is_clean(code: int, err: str, out: Path) -> None:
    if code == 0:
        report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
        assert report["schema"] == "kd-audit/compare/1"
    else:
        assert_refused(code, err, "expected|could not")
        assert not out.exists()


def test_fuzzed_data_files(tmp_path_factory, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    value = st.one_of(st.text(max_size=30), st.integers(-3, 3), st.none(), st.floats(allow_nan=True),
                      st.booleans(), st.lists(st.integers(), max_size=2))
    row = st.dictionaries(st.sampled_from(["text", "label", "id", "sentence", "x"]), value, max_size=4)
    raw = st.one_of(st.binary(max_size=60), st.just(b"\xff\xfe{}\n"), st.just(b""))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rows=st.lists(row, max_size=6), garbage=raw, suffix=st.sampled_from([".jsonl", ".csv", ".json"]),
           huge=st.booleans())
    def check(rows, garbage, suffix, huge):
        folder = tmp_path_factory.mktemp("fuzz")
        path = folder / f"d{suffix}"
        if suffix == ".csv":
            keys = sorted({k for r in rows for k in r}) or ["text"]
            body = ",".join(keys) + "\n" + "".join(",".join(json.dumps(r.get(k)) for k in keys) + "\n" for r in rows)
            path.write_bytes(body.encode() + garbage)
        elif suffix == ".json":
            path.write_bytes(json.dumps(rows).encode() + garbage)
        else:
            path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + garbage)
        if huge and rows:
            with path.open("a") as f:
                f.write(json.dumps({"text": "word " * 20_000, "label": 0}) + "\n")
        out = folder / "r.json"
        code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(path),
                           "--json", str(out), "--bootstrap", "10", "--no-progress", "--no-cache", "--max-length", "32")
        _outcome_is_clean(code, err, out)

    check()


def test_fuzzed_logits_files(tmp_path_factory, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    special = st.sampled_from([0.0, 1e30, -1e30, math.inf, -math.inf, math.nan, 3.0])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(n=st.integers(0, 6), k=st.integers(0, 4), student_k=st.integers(1, 4), specials=st.lists(special, max_size=4),
           fmt=st.sampled_from([".npy", ".safetensors", ".jsonl", ".pt"]))
    def check(n, k, student_k, specials, fmt):
        folder = tmp_path_factory.mktemp("fuzz-logits")
        teacher = np.random.default_rng(n).normal(size=(n, k)).astype(np.float32)
        for i, v in enumerate(specials):
            if teacher.size:
                teacher.flat[i % teacher.size] = v
        path = folder / f"teacher{fmt}"
        if fmt == ".npy":
            np.save(path, teacher)
        elif fmt == ".jsonl":
            path.write_text("".join(json.dumps({"logits": [float(x) for x in r]}) + "\n" for r in teacher.tolist()))
        elif fmt == ".pt":
            torch.save({"logits": torch.from_numpy(teacher)}, path)
        else:
            from safetensors.torch import save_file

            save_file({"logits": torch.from_numpy(teacher)}, str(path))
        student = logits_file(folder / "student.safetensors", torch.randn(n, student_k) if n else torch.randn(1, student_k))
        out = folder / "r.json"
        code, _, err = cli(capsys, "compare", "--teacher", str(path), "--student", student, "--json", str(out),
                           "--bootstrap", "10", "--no-progress")
        _outcome_is_clean(code, err, out)

    check()
