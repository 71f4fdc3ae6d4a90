"""The real command on the fixtures: the default run, the JSON schema, and every bad input of the issue."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from audit.cli import DEFAULT_DATA, FIXTURES, app
from audit.load.models import Predictions, save_predictions
from audit.report.schema import PAIR_VERDICTS

TEACHER = str(FIXTURES / "teacher")
STUDENT = str(FIXTURES / "student-kd")
DATA = str(DEFAULT_DATA)
FAST = ["--limit", "40", "--bootstrap", "50", "--no-progress"]
MODEL_KEYS = {"role", "n", "accuracy", "nll", "brier", "entropy_mean", "maxprob_mean", "ece", "mce", "ece_adaptive",
              "ece_classwise"}
PAIR_KEYS = {"teacher", "student", "agreement", "kl", "entropy_shift", "corr_entropy_pearson", "corr_entropy_spearman",
             "corr_maxprob_pearson", "corr_maxprob_spearman", "verdict"}


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_default_run_as_a_user_runs_it(tmp_path):
    """`python -m audit` with no arguments: the built-in pair, a real report, exit 0."""
    result = subprocess.run([sys.executable, "-m", "audit", "--json", str(tmp_path / "r.json")], capture_output=True,
                            text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert result.returncode == 0, result.stderr
    for text in ("Confidence and calibration per model", "Teacher -> student", "Which way each student moved",
                 "student-kd", "student-ls", "student-ce", "Verdict"):
        assert text in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["models"]["teacher"]["n"] == sum(1 for _ in open(DEFAULT_DATA))
    assert result.stderr.strip().splitlines()[-1] == f"kd-audit: wrote {tmp_path / 'r.json'}"


def test_json_schema(tmp_path):
    out = tmp_path / "report.json"
    result = run("compare", "--teacher", TEACHER, "--student", STUDENT, "--student", str(FIXTURES / "student-ls"),
                 "--data", DATA, "--json", str(out), *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema"] == "kd-audit/compare/1"
    assert set(report["models"]) == {"teacher", "student-kd", "student-ls"}
    assert report["models"]["teacher"]["role"] == "teacher"
    for model in report["models"].values():
        assert MODEL_KEYS <= set(model)
        assert model["n"] == 40
    assert len(report["pairs"]) == 2
    for pair in report["pairs"]:
        assert PAIR_KEYS <= set(pair)
        assert pair["verdict"] in PAIR_VERDICTS
        for key in PAIR_KEYS - {"teacher", "student", "verdict"}:
            lo, hi = pair[key]["ci"]
            assert lo <= pair[key]["value"] <= hi or np.isclose(lo, hi)
    assert report["students"][0]["a"] == "student-kd"


def test_save_logits_then_compare_without_models(tmp_path):
    first = tmp_path / "first.json"
    assert run("compare", "--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--save-logits",
               str(tmp_path / "logits"), "--json", str(first), *FAST).exit_code == 0
    second = tmp_path / "second.json"
    result = run("compare", "--teacher", str(tmp_path / "logits" / "teacher.safetensors"), "--student",
                 str(tmp_path / "logits" / "student-kd.safetensors"), "--data", DATA, "--json", str(second), *FAST)
    assert result.exit_code == 0, result.output
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    for name in ("teacher", "student-kd"):
        for key in MODEL_KEYS - {"role"}:
            assert a["models"][name][key] == pytest.approx(b["models"][name][key], abs=1e-6)
    assert a["pairs"][0]["kl"]["value"] == pytest.approx(b["pairs"][0]["kl"]["value"], abs=1e-6)
    assert a["pairs"][0]["kl"]["ci"] == pytest.approx(b["pairs"][0]["kl"]["ci"], abs=1e-6)


def _predictions_file(tmp_path, name, n, label_names=None, ids=None, bad=None):
    logits = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    if bad is not None:
        logits[0, 0] = bad
    path = tmp_path / f"{name}.safetensors"
    if bad is None:
        save_predictions(Predictions(name, logits, ids, label_names), path)
    else:
        path = tmp_path / f"{name}.npy"
        np.save(path, logits.numpy())
    return str(path)


def _broken_copy(tmp_path, how):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "student-ce", folder)
    weights = folder / "model.safetensors"
    if how == "no-config":
        (folder / "config.json").unlink()
    elif how == "no-weights":
        weights.unlink()
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "pickle":
        weights.rename(folder / "pytorch_model.bin")
    return str(folder)


def _data_file(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _csv_header_only(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\n")
    return str(path)


BAD_INPUTS = {
    "missing path": (lambda t: ["--teacher", "nope/./missing", "--student", STUDENT, "--data", DATA], "no such file"),
    "folder without config": (lambda t: ["--teacher", _broken_copy(t, "no-config"), "--student", STUDENT, "--data",
                                         DATA], "config.json"),
    "folder without weights": (lambda t: ["--teacher", _broken_copy(t, "no-weights"), "--student", STUDENT, "--data",
                                          DATA], "weights"),
    "truncated weights": (lambda t: ["--teacher", _broken_copy(t, "truncated"), "--student", STUDENT, "--data", DATA],
                          "truncated or corrupt"),
    "pickle weights": (lambda t: ["--teacher", _broken_copy(t, "pickle"), "--student", STUDENT, "--data", DATA],
                       "--allow-pickle"),
    "different label sets": (lambda t: ["--teacher", _predictions_file(t, "a", 3, ["neg", "pos"]), "--student",
                                        _predictions_file(t, "b", 3, ["cat", "dog"])], "label set"),
    "missing column": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--label-column",
                                  "stars"], "stars"),
    "labels out of range": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data",
                                       _data_file(t, [{"text": "fine", "label": 0}, {"text": "bad", "label": 7}])],
                            r"labels in \[0, 2\)"),
    "empty data": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data", _csv_header_only(t)], "at least one example.*0 rows"),
    "NaN in predictions": (lambda t: ["--teacher", _predictions_file(t, "a", 3, bad=float("nan")), "--student",
                                      _predictions_file(t, "b", 3)], "NaN or inf"),
    "count mismatch": (lambda t: ["--teacher", _predictions_file(t, "a", 7), "--student", _predictions_file(t, "b", 7),
                                  "--data", DATA], "rows of logits"),
    "ids mismatch": (lambda t: ["--teacher", _predictions_file(t, "a", 2, ids=["x", "y"]), "--student",
                                _predictions_file(t, "b", 2, ids=["x", "y"]), "--data", DATA], "none for"),
    "limit 0": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--limit", "0"], "--limit"),
    "unknown device": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data", DATA, "--device", "tpu"],
                       "device"),
    "unknown built-in": (lambda t: ["--teacher", TEACHER, "--student", STUDENT, "--data", "vader-films"],
                         "vader-movies"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    make_args, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    args = ["compare", *make_args(tmp_path), "--json", str(out / "r.json"), "--save-logits", str(out / "logits"),
            "--no-progress"]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(("kd-audit: error: expected", "kd-audit: error: could not")), result.stderr
    assert "Traceback" not in result.output
    import re

    assert re.search(message, result.stderr), result.stderr
    assert not out.exists()


def test_data_list_shows_licence_and_citation():
    result = CliRunner().invoke(app, ["data", "list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for name in ("vader-movies", "vader-tweets", "vader-amazon", "vader-nyt", "bbc-news"):
        assert name in result.stdout
    assert "MIT" in result.stdout and "Hutto" in result.stdout
