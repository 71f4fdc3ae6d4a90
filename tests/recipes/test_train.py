"""The training recipe on a tiny model: it learns, it resumes exactly, LS/KD reach their minimisers, bad input; and
the one training loop both recipes fill (:func:`audit.recipes.training_run.fit`) on a toy model."""

import json

import pytest
import torch
from audit_cli import cli

from audit.errors import AuditError
from audit.load.models import Predictions, load_model, save_predictions
from audit.recipes import training_run
from audit.recipes.train import TrainSettings, build_classifier_student, train
from audit.recipes.training_run import TrainingBatch, batch_slice, fit
from audit.run.distributed import ProcessGroup

GOOD = ["great", "wonderful", "superb", "lovely", "brilliant", "delightful"]
BAD = ["awful", "terrible", "dreadful", "boring", "horrible", "dull"]
TINY = dict(model="tiny:hidden=32,layers=1", batch_size=16, lr=3e-3, max_length=16, device="cpu", warmup=0.0)


def _write_split(folder, split, n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        positive = bool(torch.randint(0, 2, (1,), generator=g))
        words = GOOD if positive else BAD
        picks = torch.randint(0, len(words), (2,), generator=g).tolist()
        rows.append({"id": f"{split}-{i}", "text": f"the film was {words[picks[0]]} and {words[picks[1]]}",
                     "label": "positive" if positive else "negative"})
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("separable")
    _write_split(folder, "train", 256, seed=0)
    _write_split(folder, "dev", 64, seed=1)
    return str(folder)


def test_tiny_model_learns_a_separable_task(separable, tmp_path):
    record = train(TrainSettings(data=separable, out=str(tmp_path / "run"), epochs=3, **TINY), progress=False)
    assert record["dev"]["accuracy"] >= 0.95
    assert (tmp_path / "run" / "config.json").exists()
    assert load_model(str(tmp_path / "run")).label_names == ["negative", "positive"]


def test_resumed_run_equals_uninterrupted(separable, tmp_path):
    settings = dict(data=separable, epochs=1, checkpoint_every=5, **TINY)
    whole = train(TrainSettings(out=str(tmp_path / "whole"), **settings), progress=False)
    assert train(TrainSettings(out=str(tmp_path / "cut"), **settings), progress=False, stop_after=7) == {"stopped_at": 7}
    resumed = train(TrainSettings(out=str(tmp_path / "cut"), **settings), progress=False)
    assert resumed["steps"] == whole["steps"]
    a = load_model(str(tmp_path / "whole")).model.state_dict()
    b = load_model(str(tmp_path / "cut")).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_ls_student_reaches_the_smoothed_target(separable, tmp_path):
    """The LS minimiser softmax(z*) = q': on a learnable task the gold probability tends to 1 - a + a/K."""
    record = train(TrainSettings(data=separable, out=str(tmp_path / "ls"), loss="ls", label_smoothing=0.2, epochs=8,
                                 **TINY), progress=False)
    assert record["dev"]["maxprob_mean"] == pytest.approx(0.9, abs=0.02)


def test_pure_kd_student_reaches_the_teacher(separable, tmp_path):
    """Pure KD (w=1) has the minimiser softmax(z*) = softmax(v): the student copies a fixed teacher."""
    data = [json.loads(line) for line in open(f"{separable}/train.jsonl")]
    # a teacher that is 80% sure of the true class on every example
    logits = torch.tensor([[0.0, 1.386] if r["label"] == "positive" else [1.386, 0.0] for r in data])
    teacher = tmp_path / "teacher.safetensors"
    save_predictions(Predictions("teacher", logits, [r["id"] for r in data], ["negative", "positive"]), teacher)
    record = train(TrainSettings(data=separable, out=str(tmp_path / "kd"), loss="kd", teacher=str(teacher),
                                 kd_weight=1.0, temperature=1.0, epochs=8, **TINY), progress=False)
    assert record["dev"]["maxprob_mean"] == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize("options, message", [
    (dict(loss="kd"), "--teacher"),
    (dict(loss="kd", teacher="x", temperature=0.0), "temperature > 0"),
    (dict(loss="ls", label_smoothing=1.0), r"\[0, 1\)"),
    (dict(loss="mse"), "--loss"),
])
def test_bad_settings(separable, tmp_path, options, message):
    with pytest.raises(AuditError, match=message):
        train(TrainSettings(data=separable, out=str(tmp_path / "x"), **{**TINY, **options}), progress=False)


def test_teacher_with_other_labels(separable, tmp_path):
    data = [json.loads(line) for line in open(f"{separable}/train.jsonl")]
    teacher = tmp_path / "teacher.safetensors"
    save_predictions(Predictions("t", torch.zeros(len(data), 2), [r["id"] for r in data], ["cat", "dog"]), teacher)
    with pytest.raises(AuditError, match="same label set"):
        train(TrainSettings(data=separable, out=str(tmp_path / "kd"), loss="kd", teacher=str(teacher), **TINY),
              progress=False)


def _refused(code: int, err: str, *needles: str) -> None:
    """The house style of a refusal: exit 2 and one line ``kd-audit: error: expected ...`` naming ``needles``, no
    traceback (other stderr lines, e.g. datasets' progress, are not the refusal's)."""
    errors = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and errors[0].startswith("kd-audit: error: expected"), err
    assert all(needle in errors[0] for needle in needles), errors[0]


def _checkpoint(folder, label_names):
    """A tiny random classifier over ``label_names`` saved as a Hugging Face checkpoint in ``folder``."""
    model = build_classifier_student("tiny:hidden=32,layers=1", label_names, seed=0)
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return str(folder)


def _cli_args(options: dict) -> list[str]:
    return [x for key, value in options.items() for x in (key, value)] + ["--no-progress"]


@pytest.mark.parametrize("kind", ["checkpoint", "logits"])
def test_teacher_with_other_labels_is_refused_before_anything_is_written(separable, tmp_path, capsys, kind):
    """Issue 26: the refusal left run.json behind, and the rerun with the right teacher was then refused as a
    different run."""
    rows = [json.loads(line) for line in open(f"{separable}/train.jsonl")]
    if kind == "checkpoint":
        wrong = _checkpoint(tmp_path / "three", ["a", "b", "c"])
    else:
        wrong = str(tmp_path / "cats.safetensors")
        save_predictions(Predictions("t", torch.zeros(len(rows), 2), [r["id"] for r in rows], ["cat", "dog"]), wrong)
    right = tmp_path / "teacher.safetensors"
    logits = torch.tensor([[0.0, 1.0] if r["label"] == "positive" else [1.0, 0.0] for r in rows])
    save_predictions(Predictions("t", logits, [r["id"] for r in rows], ["negative", "positive"]), right)
    out = tmp_path / "run"
    options = {"--data": separable, "--model": TINY["model"], "--out": str(out), "--loss": "kd", "--epochs": "0.25",
               "--batch-size": "16", "--max-length": "16", "--device": "cpu"}
    code, _, err = cli(capsys, "train", *_cli_args({**options, "--teacher": wrong}))
    _refused(code, err, "teacher over the data's 2 labels ['negative', 'positive']", "same label set")
    assert not out.exists()
    code, _, err = cli(capsys, "train", *_cli_args({**options, "--teacher": str(right)}))
    assert code == 0, err
    assert json.loads((out / "training_record.json").read_text())["settings"]["teacher"] == str(right)


def test_student_head_over_other_labels_is_refused_in_one_line(tmp_path, capsys):
    """Issue 26: a 2-label student checkpoint on 3-label data (with a 3-class teacher) got transformers'
    "ignore_mismatched_sizes ... look at the above report"; now one line names both label sets and the fix."""
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": "abc"[i % 3], "split": "train" if i < 12 else "dev"})
                            + "\n" for i in range(18)))
    student = _checkpoint(tmp_path / "two", ["negative", "positive"])
    teacher = _checkpoint(tmp_path / "three", ["a", "b", "c"])
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", *_cli_args({"--data": str(data), "--model": student, "--out": str(out),
                                                   "--loss": "kd", "--teacher": teacher, "--device": "cpu"}))
    _refused(code, err, "3 labels ['a', 'b', 'c']", "2 labels ['negative', 'positive']", "without a classification head")
    assert "ignore_mismatched_sizes" not in err and not out.exists()


def test_output_folder_of_a_different_run(separable, tmp_path):
    out = str(tmp_path / "run")
    train(TrainSettings(data=separable, out=out, epochs=0.25, **TINY), progress=False)
    with pytest.raises(AuditError, match="--overwrite"):
        train(TrainSettings(data=separable, out=out, epochs=0.25, seed=1, **TINY), progress=False)
    record = train(TrainSettings(data=separable, out=out, epochs=0.25, seed=1, **TINY), overwrite=True, progress=False)
    assert record["settings"]["seed"] == 1


def test_every_step_of_the_recipe_is_a_step_of_the_one_loop(separable, tmp_path, monkeypatch):
    sliced = []
    real = training_run.batch_slice
    monkeypatch.setattr(training_run, "batch_slice", lambda rows, *a: sliced.append(len(rows)) or real(rows, *a))
    record = train(TrainSettings(data=separable, out=str(tmp_path / "run"), epochs=0.25, **TINY), progress=False)
    assert record["steps"] == 4 and sliced == [16] * 4


class _Toy(torch.nn.Module):
    """A linear model with dropout (the generator must resume too), saved as a state dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.dropout = torch.nn.Linear(3, 1), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.linear(self.dropout(x))

    def save_pretrained(self, out) -> None:
        torch.save(self.state_dict(), out / "toy.pt")


class _Tokenizer:
    def save_pretrained(self, out, **options) -> None:
        (out / "tokenizer.json").write_text("{}")


def _fit_toy(out, stop_after=None):
    x = torch.linspace(-1, 1, 30).reshape(10, 3)
    y = x.sum(1, keepdim=True)
    model, modes = _Toy(), []

    def loss(forward, batch: TrainingBatch):
        return torch.nn.functional.mse_loss(forward(x[batch.rows]), y[batch.rows])

    def record(trained):
        modes.append(model.training)
        return {"steps": trained.steps, "first_step": trained.first_step, "losses": trained.losses}

    settings = TrainSettings(data="-", model="-", out=str(out), epochs=2, batch_size=4, lr=0.05, warmup=0.2,
                             checkpoint_every=2)
    out.mkdir(exist_ok=True)
    trained = fit(settings, model, loss, examples=10, parameters=list(model.parameters()), tokenizer=_Tokenizer(),
                  record=record, group=ProcessGroup(), progress=False, stop_after=stop_after)
    return trained, model, modes


def test_fit_resumes_to_the_uninterrupted_run_and_saves_once_finished(tmp_path):
    whole, model, modes = _fit_toy(tmp_path / "whole")
    assert whole.steps == 6 and len(whole.losses) == 6 and whole.stopped_at is None and modes == [False]
    assert json.loads((tmp_path / "whole" / "training_record.json").read_text()) == whole.record
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["tokenizer.json", "toy.pt",
                                                                     "training_record.json"]
    cut, _, modes = _fit_toy(tmp_path / "cut", stop_after=3)
    assert (cut.stopped_at, cut.record, modes) == (3, None, [])
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint.pt"]
    resumed, resumed_model, _ = _fit_toy(tmp_path / "cut")
    assert resumed.first_step == 3 and cut.losses + resumed.losses == whole.losses
    for key, value in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key


@pytest.mark.parametrize("world", [2, 3, 7])
def test_slice_weights_make_the_averaged_gradient_the_batch_mean(world):
    """Each row stands for ``terms[row]`` loss terms; the world's mean of weighted slice means is the batch's mean,
    a process with an empty slice (7 processes, 5 rows) running one row at weight 0."""
    terms = torch.tensor([3, 1, 4, 1, 5])
    values = torch.tensor([2.0, -1.0, 0.5, 4.0, 1.5])  # each row's per-term loss
    rows = torch.arange(5)
    averaged = 0.0
    for rank in range(world):
        mine, weight = batch_slice(rows, ProcessGroup(rank, world, rank), lambda r: int(terms[r].sum()))
        assert len(mine) >= 1
        averaged += weight * float((terms[mine] * values[mine]).sum() / terms[mine].sum()) / world
    assert averaged == pytest.approx(float((terms * values).sum() / terms.sum()))
