"""compare's calibration section: the new estimators per model, --model-cis, and --calibrate (temperature scaling
fitted on held-out data, the T* ratio, whether the verdict survives), on the built-in pair."""

import json

import numpy as np
import pytest
import torch
from audit_cli import cli
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from audit.cli import DEFAULT_CALIBRATION_DATA, DEFAULT_DATA, FIXTURES, main
from audit.compare import predict
from audit.load.data import load_data
from audit.report.schema import PAIR_VERDICTS
from audit.settings import CompareSettings

TEACHER, STUDENT = str(FIXTURES / "teacher"), str(FIXTURES / "student-kd")

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")




def scipy_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the mean NLL of softmax(logits / T), by scipy on log T (independent of audit.stats.temperature)."""
    def nll(log_t: float) -> float:
        return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded", options={"xatol": 1e-10}).x))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrate") / "r.json"
    try:
        main(["compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(DEFAULT_DATA), "--limit", "300",
              "--calibrate", "--calibration-data", str(DEFAULT_CALIBRATION_DATA), "--bootstrap", "100",
              "--no-progress", "--no-cache", "--json", str(out)])
    except SystemExit as stop:
        assert stop.code == 0
    return json.loads(out.read_text())


def test_fitted_temperatures_are_the_nll_minimisers_on_the_calibration_data(calibrated):
    dev = load_data(str(DEFAULT_CALIBRATION_DATA))
    labels = np.array(dev.labels)
    for name, spec in (("teacher", TEACHER), ("student-kd", STUDENT)):
        logits = predict(spec, dev, settings=CompareSettings(progress=False, cache=False)).logits.double().numpy()
        assert calibrated["models"][name]["temperature"] == pytest.approx(scipy_temperature(logits, labels), rel=1e-4)


def test_scaling_keeps_accuracy_and_is_measured_on_the_test_data(calibrated):
    test = load_data(str(DEFAULT_DATA), limit=300)
    labels = torch.tensor(test.labels)
    for name, spec in (("teacher", TEACHER), ("student-kd", STUDENT)):
        model = calibrated["models"][name]
        assert model["calibrated"]["accuracy"] == pytest.approx(model["accuracy"], abs=1e-6)
        logits = predict(spec, test, settings=CompareSettings(progress=False, cache=False)).logits.double()
        nll = -torch.log_softmax(logits / model["temperature"], -1)[torch.arange(len(labels)), labels].mean()
        assert model["calibrated"]["nll"] == pytest.approx(float(nll), rel=1e-6)
        assert model["calibrated"]["nll"] < model["nll"]  # the demo models are over-confident (T* > 1)


def test_the_pair_reports_the_temperature_ratio_and_the_verdict_after_scaling(calibrated):
    pair = calibrated["pairs"][0]
    ratio = pair["temperature_ratio"]
    t, s = calibrated["models"]["teacher"]["temperature"], calibrated["models"]["student-kd"]["temperature"]
    assert ratio["ratio"] == pytest.approx(s / t, rel=1e-9)
    assert ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1] and ratio["n_resamples"] == 100
    assert pair["calibrated"]["verdict"] in PAIR_VERDICTS
    assert pair["calibrated"]["verdict_survives"] == (pair["calibrated"]["verdict"] == pair["verdict"])
    assert calibrated["calibration"]["n"] == 1057


def test_every_model_reports_the_bin_free_and_debiased_estimators(calibrated):
    for model in calibrated["models"].values():
        for key in ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks"):
            assert 0 <= model[key] <= 1, key


def test_model_cis_give_an_interval_for_every_number(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", str(DEFAULT_DATA),
                       "--limit", "200", "--bootstrap", "30", "--model-cis", "--no-progress", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    model = report["models"]["teacher"]
    assert set(model["ci"]) >= {"accuracy", "nll", "brier", "entropy", "ece", "mce", "ece_adaptive", "smece",
                                "ece_debiased", "ece_sweep", "ece_toplabel", "ks"}
    for key in ("accuracy", "nll"):  # means: the estimate lies inside its percentile interval
        lo, hi = model["ci"][key]
        assert lo < model[key] < hi, key
    for key in ("ece", "smece", "ks"):  # calibration errors are biased upwards: only a real interval is asserted
        lo, hi = model["ci"][key]
        assert 0 <= lo < hi <= 1, key
    difference = report["pairs"][0]["calibration_difference"]
    assert difference["ece"]["difference"] == pytest.approx(model["ece"] - report["models"]["student-kd"]["ece"])


def test_calibrate_bad_input_is_one_line(tmp_path, capsys):
    one_class = tmp_path / "one.jsonl"
    one_class.write_text("".join(json.dumps({"text": f"fine film {i}", "label": "positive"}) + "\n" for i in range(9)))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"t {i}", "label": ["cat", "dog"][i % 2]}) + "\n" for i in range(9)))
    logits = tmp_path / "t.npy"
    np.save(logits, np.random.default_rng(0).normal(size=(1057, 2)).astype(np.float32))
    cases = [
        (["--teacher", TEACHER, "--data", str(DEFAULT_DATA)], "--calibration-data"),
        (["--teacher", TEACHER, "--data", str(DEFAULT_DATA), "--calibration-data", str(one_class)], "2 classes"),
        (["--teacher", TEACHER, "--data", str(DEFAULT_DATA), "--calibration-data", str(other)], "calibration labels"),
        (["--teacher", str(logits), "--data", str(DEFAULT_DATA), "--calibration-data", str(DEFAULT_CALIBRATION_DATA)],
         "logits files"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, "compare", *args, "--student", STUDENT, "--calibrate", "--limit", "50",
                           "--bootstrap", "20", "--no-progress", "--json", str(tmp_path / "out" / "r.json"))
        lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
        assert not (tmp_path / "out").exists()
