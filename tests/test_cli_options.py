"""Every option of `compare`, `train` and `replicate` either acts in the run it is given to or is named in a
warning (or refused where it can only be a mistake): one run per kind of audit with every option that has no
effect there, and the table of where each option acts checked against the commands' real options."""

from __future__ import annotations

import numpy as np
import pytest
from audit_cli import cli
from typer.main import get_command

from audit.cli import app
from audit.package import fixtures_path
from audit.settings import OPTION_AUDITS, LMTrainSettings, TrainSettings, unused_loss_options

FIXTURES = fixtures_path()
DATA = str(FIXTURES / "vader-movies-test.jsonl")
# compare's options that act in every audit, and those that are not settings (models, data, outputs)
EVERYWHERE = {"split", "text_column", "limit", "bins", "bootstrap", "seed", "kind", "model_cis", "calibrate",
              "calibration_data", "progress", "cache", "verdict_rule", "shift_band", "min_correlation", "min_clusters"}
NOT_SETTINGS = {"teacher", "student", "data", "name", "json_path", "save_logits", "plots", "html"}
# --generate and how it samples: token audits only, refused elsewhere (tests/test_compare_generate.py)
GENERATION = {"generate", "max_new_tokens", "temperature", "top_p"}
# a value other than the default for each option that acts in some audits only
VALUES = {"text_pair_column": ["--text-pair-column", "other"], "label_column": ["--label-column", "label"],
          "id_column": ["--id-column", "id"], "allow_pickle": ["--allow-pickle"], "tokenizer": ["--tokenizer", "tok"],
          "allow_missing_weights": ["--allow-missing-weights"], "trust_remote_code": ["--trust-remote-code"],
          "device": ["--device", "cpu"], "dtype": ["--dtype", "fp32"], "batch_size": ["--batch-size", "4"],
          "max_length": ["--max-length", "32"], "stride": ["--stride", "8"], "prompt_column": ["--prompt-column", "p"],
          "completion_column": ["--completion-column", "c"], "limit_tokens": ["--limit-tokens", "1000"]}


def options(command: str) -> set[str]:
    return {p.name for p in get_command(app).commands[command].params}


def test_every_compare_option_is_placed():
    assert options("compare") == set(OPTION_AUDITS) | EVERYWHERE | NOT_SETTINGS | GENERATION
    assert set(VALUES) == set(OPTION_AUDITS)


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text("To be, or not to be, that is the question. " * (i + 2))
    return str(folder)


def specs(audit: str, tmp_path, docs: str) -> list[str]:
    if audit == "classifier":
        return ["--teacher", str(FIXTURES / "teacher"), "--student", str(FIXTURES / "student-kd"), "--data", DATA,
                "--limit", "8"]
    if audit == "lm":
        return ["--teacher", str(FIXTURES / "lm-teacher"), "--student", str(FIXTURES / "lm-student"), "--data", docs]
    n = sum(1 for _ in open(DATA))
    rng = np.random.default_rng(0)
    for name in ("t", "s"):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(n, 2)).astype(np.float32))
    return ["--teacher", str(tmp_path / "t.npy"), "--student", str(tmp_path / "s.npy"), "--data", DATA]


@pytest.mark.parametrize("audit", ["classifier", "logits", "lm"])
def test_options_without_effect_are_warned_about_by_name(audit, tmp_path, capsys, docs, one_thread, monkeypatch):
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache"))
    idle = [name for name, audits in OPTION_AUDITS.items() if audit not in audits]
    given = [arg for name in idle for arg in VALUES[name]]
    code, _, err = cli(capsys, "compare", *specs(audit, tmp_path, docs), "--bootstrap", "20", "--no-progress",
                       *given, "--calibration-data", DATA)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("kd-audit: warning:")
                and "every verdict is insufficient" not in line]  # the fixture data's size, not an option
    for name in idle:
        flag = VALUES[name][0]
        assert any(f"{flag} has no effect" in line for line in warnings), (flag, warnings)
    assert any("--calibration-data has no effect without --calibrate" in line for line in warnings)
    assert len(warnings) == len(idle) + 1  # nothing that acts is warned about


def test_save_logits_of_a_token_audit_is_refused_before_any_work(tmp_path, capsys, docs):
    code, _, err = cli(capsys, "compare", "--teacher", str(FIXTURES / "lm-teacher"), "--student",
                       str(FIXTURES / "lm-student"), "--data", str(tmp_path / "missing.txt"), "--save-logits",
                       str(tmp_path / "logits"), "--no-progress")
    assert code == 2 and "--save-logits only for classifiers" in err  # refused before the missing data is read
    assert not (tmp_path / "logits").exists()


def test_model_cis_without_labels_is_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("t", "s"):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(12, 3)).astype(np.float32))
    code, _, err = cli(capsys, "compare", "--teacher", str(tmp_path / "t.npy"), "--student", str(tmp_path / "s.npy"),
                       "--model-cis", "--bootstrap", "20", "--no-progress")
    assert code == 0, err
    assert "--model-cis has no effect without labels" in err


def test_loss_options_the_loss_never_reads():
    classifier = TrainSettings(data="d", model="m", out="o", loss="ce", label_smoothing=0.2, temperature=4.0,
                               kd_weight=0.9, teacher="t")
    assert [m.split()[0] for m in unused_loss_options(classifier)] == [
        "--label-smoothing", "--temperature", "--kd-weight", "--teacher"]
    assert unused_loss_options(TrainSettings(data="d", model="m", out="o", loss="kd", teacher="t", temperature=4.0)) == []
    lm = LMTrainSettings(data="d", model="m", out="o", teacher="t", loss="kd", beta=0.2, divergence="reverse-kl")
    assert unused_loss_options(lm) == ["--beta has no effect with --divergence reverse-kl (only with jsd)"]
    assert unused_loss_options(LMTrainSettings(data="d", model="m", out="o", teacher="t", loss="kd", beta=0.2,
                                               divergence="jsd")) == []


def test_train_warns_before_training(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", str(tmp_path / "missing"), "--model", "tiny", "--out",
                       str(tmp_path / "run"), "--label-smoothing", "0.3", "--no-progress")
    assert "kd-audit: warning: --label-smoothing has no effect with --loss ce" in err
    assert code == 2  # then the missing data is refused


def test_replicate_refuses_outputs_the_lm_grid_does_not_write(tmp_path, capsys):
    code, _, err = cli(capsys, "replicate", "--task", "shakespeare", "--out", str(tmp_path / "r"), "--html",
                       str(tmp_path / "r.html"), "--no-progress")
    assert code == 2 and "--html" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["compare", "train", "replicate", "report"])
def test_help_is_readable_at_80_columns(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines())
    for name in options(command):
        param = next(p for p in get_command(app).commands[command].params if p.name == name)
        for flag in param.opts:
            assert flag in out, flag  # never cut to "--allow-missing-we…"


# train: options every student reads, those of causal-LM students only (refused for a classifier), the
# classifier's own (warned about for an LM), and those a loss may leave unread (unused_loss_options)
TRAIN_EVERY = {"data", "model", "out", "loss", "epochs", "batch_size", "lr", "max_length", "train_limit", "seed",
               "device", "overwrite", "progress"}
TRAIN_LM_ONLY = {"divergence": ["--divergence", "jsd"], "beta": ["--beta", "0.3"], "steps": ["--steps", "5"],
                 "stride": ["--stride", "8"], "teacher_topk": ["--teacher-topk", "top.safetensors"],
                 "freeze_embeddings": ["--freeze-embeddings"], "prompt_column": ["--prompt-column", "p"],
                 "completion_column": ["--completion-column", "c"], "lmbda": ["--lmbda", "0.5"],
                 "max_new_tokens": ["--max-new-tokens", "8"]}
TRAIN_CLASSIFIER_ONLY = {"head_lr": ["--head-lr", "1e-3"]}
TRAIN_BY_LOSS = {"label_smoothing", "teacher", "temperature", "kd_weight"}
# replicate: options the LM grid (--task shakespeare) refuses; every other one acts in both grids
REPLICATE_CLASSIFIER_ONLY = {"eval_task": ["--eval-task", "vader-tweets"], "jobs": ["--jobs", "2"],
                             "plots": ["--plots", "figs"], "html": ["--html", "r.html"]}
REPLICATE_EVERY = {"task", "out", "profile", "seeds", "device", "bootstrap", "progress"}


def test_every_train_and_replicate_option_is_placed():
    assert options("train") == TRAIN_EVERY | set(TRAIN_LM_ONLY) | set(TRAIN_CLASSIFIER_ONLY) | TRAIN_BY_LOSS
    assert options("replicate") == REPLICATE_EVERY | set(REPLICATE_CLASSIFIER_ONLY)


@pytest.mark.parametrize("name", sorted(TRAIN_LM_ONLY))
def test_an_lm_only_train_option_is_refused_for_a_classifier(name, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", str(tmp_path / "missing"), "--model", "tiny", "--out",
                       str(tmp_path / "run"), *TRAIN_LM_ONLY[name], "--no-progress")
    assert code == 2 and f"expected {TRAIN_LM_ONLY[name][0]} only for causal-LM students" in err
    assert not (tmp_path / "run").exists()


def test_a_classifier_only_train_option_is_warned_about_for_an_lm(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", str(tmp_path / "missing"), "--model", "tiny-llama", "--teacher",
                       str(FIXTURES / "lm-teacher"), "--out", str(tmp_path / "run"), *TRAIN_CLASSIFIER_ONLY["head_lr"],
                       "--no-progress")
    assert "kd-audit: warning: --head-lr has no effect on a causal-LM student" in err
    assert code == 2 and not (tmp_path / "run").exists()  # then the missing data is refused


@pytest.mark.parametrize("name", sorted(REPLICATE_CLASSIFIER_ONLY))
def test_a_classifier_grid_option_is_refused_for_the_lm_grid(name, tmp_path, capsys):
    value = REPLICATE_CLASSIFIER_ONLY[name]
    args = [value[0], str(tmp_path / value[1])] if name in ("plots", "html") else value
    code, _, err = cli(capsys, "replicate", "--task", "shakespeare", "--out", str(tmp_path / "r"), *args,
                       "--no-progress")
    assert code == 2 and value[0] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
