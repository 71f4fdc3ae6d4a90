"""Loading every model kind: HF folders, predictions files of every format, and each bad input."""

import json

import numpy as np
import pytest
import torch

from audit.cli import FIXTURES
from audit.errors import AuditError
from audit.load.models import Predictions, TextClassifier, load_model, save_predictions

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, float("-inf")]])
IDS = ["a", "b", "c"]


def test_hf_folder_loads_as_text_classifier():
    model = load_model(str(FIXTURES / "teacher"))
    assert isinstance(model, TextClassifier)
    assert model.name == "teacher"
    assert model.label_names == ["negative", "positive"]
    assert next(model.model.parameters()).dtype == torch.float32  # stored fp16, loaded fp32


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt", ".parquet", ".jsonl"])
def test_predictions_round_trip(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    if suffix == ".npy":
        np.save(path, LOGITS.numpy())
    elif suffix == ".safetensors":
        save_predictions(Predictions("model", LOGITS, IDS, ["x", "y", "z"]), path)
    elif suffix == ".pt":
        torch.save({"logits": LOGITS, "ids": IDS}, path)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": IDS, "logits": LOGITS.tolist()}), path)
    else:  # JSON has no -inf: a masked class is written as a very negative logit
        expected = LOGITS.nan_to_num(neginf=-1e4)
        path.write_text("".join(json.dumps({"id": i, "logits": row}) + "\n" for i, row in zip(IDS, expected.tolist())))
    predictions = load_model(str(path))
    assert isinstance(predictions, Predictions)
    assert predictions.name == "model"
    torch.testing.assert_close(predictions.logits, LOGITS if suffix != ".jsonl" else expected)
    if suffix != ".npy":
        assert predictions.ids == IDS
    if suffix == ".safetensors":
        assert predictions.label_names == ["x", "y", "z"]


def _expect(message_part: str, spec: str, **kwargs):
    with pytest.raises(AuditError, match=message_part):
        load_model(spec, **kwargs)


def test_missing_path():
    _expect("no such file or folder", "no/such/./path")


def test_folder_without_config(tmp_path):
    _expect("config.json", str(tmp_path))


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    _expect("weights", str(tmp_path))


def test_truncated_weights(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "student-ce", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _expect("truncated or corrupt", str(folder))


def test_pickle_weights_refused_unless_allowed(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "student-ce", folder)
    model = load_model(str(folder))
    (folder / "model.safetensors").unlink()
    torch.save(model.model.state_dict(), folder / "pytorch_model.bin")
    _expect("--allow-pickle", str(folder))
    loaded = load_model(str(folder), allow_pickle=True)
    torch.testing.assert_close(loaded.model.classifier.weight, model.model.classifier.weight)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions(tmp_path, bad):
    logits = LOGITS.clone()
    logits[1, 1] = bad
    np.save(tmp_path / "p.npy", logits.numpy())
    _expect("NaN or inf in row 1", str(tmp_path / "p.npy"))


def test_pickled_pt_predictions_refused(tmp_path):
    torch.save({"logits": LOGITS, "extra": object.__new__(Predictions)}, tmp_path / "p.pt")
    _expect("--allow-pickle", str(tmp_path / "p.pt"))


def test_unreadable_predictions(tmp_path):
    (tmp_path / "p.npy").write_bytes(b"not numpy")
    _expect("readable predictions file", str(tmp_path / "p.npy"))


def test_one_dimensional_predictions(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros(3, dtype=np.float32))
    _expect(r"shape \(N, K\)", str(tmp_path / "p.npy"))


def test_uncached_hub_id_fails_cleanly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _expect("could not load the Hugging Face model", "kd-audit-test/no-such-model")


@pytest.mark.parametrize("spec", ["distilbert-base-uncased-finetuned-sst-2-english", "gpt2"])
def test_a_plain_hub_id_is_looked_up_as_a_namespaced_one_is(monkeypatch, spec):
    """Issue 26: a legacy hub id without an owner said "no such file or folder" where ``owner/name`` said the Hub
    is out of reach and to use the local cache."""
    from audit.load.models import looks_like_hub_id

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert looks_like_hub_id(spec)
    with pytest.raises(AuditError, match=rf"could not load the Hugging Face model '{spec}' .*no file or folder of that "
                                         "name here.*local cache") as err:
        load_model(spec)
    assert "check the path" not in str(err.value)
    assert not any(looks_like_hub_id(s) for s in ("logits.json", "./model", "/abs/model", "a/b/c", "-x"))


def test_a_classifier_with_layers_is_told_that_only_causal_lms_are_cut():
    """Issue 26: ``fixtures/teacher@layers=1`` was sent to the causal-LM loader, whose advice (--kind classifier)
    looped back to a message calling the BERT classifier "the causal LM"."""
    spec = f"{FIXTURES / 'teacher'}@layers=1"
    with pytest.raises(AuditError, match=r"@layers=1 cuts the layers of causal LMs only; drop @layers=1 to audit .*"
                                         r"teacher, or train a cut student \(python -m audit train --model "):
        load_model(spec)


@pytest.mark.parametrize("content, ids", [
    ("[[2.0, -1.0], [0.5, 0.25]]", None),  # a JSON array of logit rows (issue 26: pyarrow's "changed from object")
    ('[{"id": "a", "logits": [2.0, -1.0]}, {"id": "b", "logits": [0.5, 0.25]}]', ["a", "b"]),
    ('{"logits": [[2.0, -1.0], [0.5, 0.25]], "ids": ["a", "b"]}', ["a", "b"]),
    ('{"id": "a", "logits": [2.0, -1.0]}\n{"id": "b", "logits": [0.5, 0.25]}\n', ["a", "b"]),  # JSON lines
])
def test_json_predictions_in_every_shape_a_user_writes(tmp_path, content, ids):
    path = tmp_path / "model.json"
    path.write_text(content)
    predictions = load_model(str(path))
    torch.testing.assert_close(predictions.logits, torch.tensor([[2.0, -1.0], [0.5, 0.25]]))
    assert predictions.ids == ids
    lines = tmp_path / "rows.jsonl"
    lines.write_text("[2.0, -1.0]\n[0.5, 0.25]\n")  # JSON lines of bare rows
    torch.testing.assert_close(load_model(str(lines)).logits, predictions.logits)


@pytest.mark.parametrize("content, message", [
    ("[[1, 2], [3]]", "same number of logits on every row"),
    ('[[1, "x"], [3, 4]]', "expected numbers as logits .* got 'x' at row 0"),
    ("[1, 2]", r"JSON array of logit rows \(\[\[...\], ...\]\) or of objects"),
    ('[{"logits": [1, 2]}, {"score": [3, 4]}]', "'logits' key in every object .* at row 1"),
    ('{"scores": [[1, 2]]}', "'logits' key in the JSON object"),
])
def test_json_predictions_that_are_not_logits_are_one_line(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_text(content)
    _expect(message, str(path))


def test_a_topk_file_is_not_taken_for_classifier_logits(tmp_path):
    from audit.reduce.topk import topk_from_logits, write_topk_logits

    ids, logprobs = topk_from_logits(torch.randn(4, 10), 3)
    path = write_topk_logits(tmp_path / "top3.safetensors", ids, logprobs, torch.zeros(4), torch.arange(4) + 1)
    _expect("got a top-k logits file .*pass it as --teacher of a token audit", str(path))
