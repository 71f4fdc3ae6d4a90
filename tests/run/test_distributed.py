"""Data-parallel compare and train: 2 CPU processes (gloo) under torchrun / accelerate against one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from audit.compare import CompareSettings, compare
from audit.errors import AuditError
from audit.load.data import load_data
from audit.load.models import load_model
from audit.recipes.train import TrainSettings, build_classifier_student, train
from audit.run.adapters import batch_plan
from audit.run.distributed import ProcessGroup, broadcast, gather_rows, on_main, process_group

LABELS = ["negative", "positive"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
TRAIN = dict(model="tiny:hidden=32,layers=1,dropout=0", loss="kd", epochs=1, batch_size=16, lr=3e-3, max_length=16,
             device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_pair):
    """Two tiny classifiers saved as checkpoints, 50 real movie sentences, and a small train/dev folder."""
    root = tmp_path_factory.mktemp("distributed")
    for model in ("teacher", "student"):
        (root / model).symlink_to(tiny_pair / model)
    sentences = load_data("vader-movies", split="dev", limit=90)
    rows = [{"id": i, "text": t, "label": sentences.label_names[y]}
            for i, t, y in zip(sentences.ids, sentences.texts, sentences.labels)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    (root / "folder").mkdir()
    (root / "folder" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:70]))
    (root / "folder" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[70:]))
    return root


def _without_time(report: dict) -> dict:
    """The report without when it ran and how fast (the token audit's ``timing`` and per-model speeds)."""
    speed = ("forward_seconds", "tokens_per_second")
    out = {k: v for k, v in report.items() if k not in ("created", "timing")}
    out["models"] = {name: {k: v for k, v in m.items() if k not in speed} for name, m in report["models"].items()}
    return out


def _launch(launcher: list[str], args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD_AUDIT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([*launcher, "-m", "audit", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_single_process_group_is_the_identity():
    group = process_group()
    assert group == ProcessGroup() and group.is_main and not group.distributed
    values = torch.tensor([[1.0, -2.0], [3.0, float("-inf")]])
    torch.testing.assert_close(gather_rows(torch.tensor([1, 0]), values, 2, group), values.flip(0))
    assert broadcast({"a": 1}, group) == {"a": 1} and on_main(lambda: 7, group) == 7
    with pytest.raises(AuditError, match="boom"):
        on_main(lambda: (_ for _ in ()).throw(AuditError("boom")), group)


@pytest.mark.parametrize("n, size, window", [(1, 4, 8), (50, 16, 8192), (103, 8, 20), (40, 64, 16)])
def test_batch_plan_covers_every_row_once_and_deals_whole_batches(n, size, window):
    plan = batch_plan(n, size, window)
    assert sum(b for _, b in plan) == n and all(1 <= b <= size for _, b in plan)
    starts = sorted({lo for lo, _ in plan})
    assert starts == list(range(0, n, window))
    for lo in starts:  # every window is cut into its own batches
        assert sum(b for w, b in plan if w == lo) == min(window, n - lo)


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate"])
def test_launched_compare_equals_single_process(setup, tmp_path, monkeypatch, launcher):
    args = ["compare", "--teacher", str(setup / "teacher"), "--student", str(setup / "student"), "--data",
            str(setup / "data.jsonl"), "--bootstrap", "200", "--no-progress", "--json", str(tmp_path / "dist.json")]
    result = _launch(launcher, args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kd-audit compare") == 1  # rank 1 prints nothing
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "single-cache"))
    single = compare(str(setup / "teacher"), [str(setup / "student")], str(setup / "data.jsonl"),
                     settings=CompareSettings(n_bootstrap=200, progress=False, cache=False))
    launched = json.loads((tmp_path / "dist.json").read_text())
    assert _without_time(launched) == _without_time(json.loads(json.dumps(single)))


@pytest.mark.distributed
def test_launched_compare_error_exits_2_on_every_rank(setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "text": "meh", "label": "neutral"}) + "\n")
    result = _launch(TORCHRUN, ["compare", "--teacher", str(setup / "teacher"), "--student", str(setup / "student"),
                                "--data", str(bad), "--no-progress"], tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("kd-audit: error: expected data labels among the models' labels") == 2
    assert result.stderr.count("exitcode  : 2") >= 1 and "exitcode  : 1 " not in result.stderr
    assert "/audit/" not in result.stderr  # no traceback from kd-audit's code, only the launcher's summary


@pytest.mark.distributed
def test_torchrun_train_follows_the_single_process_trajectory(setup, tmp_path, monkeypatch):
    """KD from a checkpoint teacher, 5 steps with a last batch of 6 rows: weights allclose, same dev report."""
    options = ["--data", str(setup / "folder"), "--model", TRAIN["model"], "--loss", "kd", "--teacher",
               str(setup / "teacher"), "--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--max-length", "16",
               "--device", "cpu", "--no-progress"]
    result = _launch(TORCHRUN, ["train", *options, "--out", str(tmp_path / "ddp")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "single-cache"))
    single = train(TrainSettings(data=str(setup / "folder"), out=str(tmp_path / "one"), teacher=str(setup / "teacher"),
                                 **TRAIN), progress=False)
    ddp = json.loads((tmp_path / "ddp" / "training_record.json").read_text())
    assert ddp["steps"] == single["steps"] == 5
    a = load_model(str(tmp_path / "one")).model.state_dict()
    b = load_model(str(tmp_path / "ddp")).model.state_dict()
    untrained = build_classifier_student(TRAIN["model"], LABELS, seed=0).model.state_dict()
    assert max(float((a[k] - untrained[k]).abs().max()) for k in a) > 1e-3  # it did train
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    assert ddp["dev"]["accuracy"] == single["dev"]["accuracy"]
    assert ddp["dev"]["entropy_mean"] == pytest.approx(single["dev"]["entropy_mean"], abs=1e-5)


@pytest.mark.distributed
def test_launched_lm_compare_equals_single_process(tmp_path, monkeypatch):
    """The token-level audit: ranks share the batches of windows, gather the columns, and write one report."""
    from audit.package import fixtures_path

    teacher = str(fixtures_path() / "lm-teacher")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"d{i}.txt").write_text("Shall I compare thee to a summer's day? Thou art more lovely. " * (i + 1))
    args = ["compare", "--teacher", teacher, "--student", f"{teacher}@layers=1", "--data", str(docs), "--max-length",
            "24", "--batch-size", "2", "--bootstrap", "100", "--no-progress", "--json", str(tmp_path / "dist.json")]
    result = _launch(TORCHRUN, args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "single-cache"))
    single = compare(teacher, [f"{teacher}@layers=1"], str(docs),
                     settings=CompareSettings(max_length=24, batch_size=2, n_bootstrap=100, progress=False, cache=False))
    launched = json.loads((tmp_path / "dist.json").read_text())
    assert launched["data"]["unit"] == "token" and launched["models"]["lm-teacher"]["n_sequences"] == 5
    assert _without_time(launched) == _without_time(json.loads(json.dumps(single)))
