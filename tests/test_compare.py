"""The pure core of the auditor: per-model summary, label alignment, matching saved logits to data."""

import pytest
import torch

from audit.compare import compare_predictions
from audit.errors import AuditError
from audit.load.data import TextData
from audit.load.labels import align_labels, data_labels, match_to_data
from audit.load.models import Predictions
from audit.stats.summary import summarize_model


def test_summary_of_a_perfect_confident_model():
    labels = torch.tensor([0, 1, 2, 1])
    logits = 50.0 * torch.nn.functional.one_hot(labels, 3).float()
    s = summarize_model(logits, labels)
    assert s["accuracy"] == 1.0 and s["ece"] == pytest.approx(0.0, abs=1e-6)
    assert s["entropy_mean"] == pytest.approx(0.0, abs=1e-6) and s["nll"] == pytest.approx(0.0, abs=1e-6)
    assert s["entropy_incorrect"] is None and s["maxprob_correct"] == pytest.approx(1.0)
    assert sum(s["reliability"]["count"]) == 4 and s["reliability"]["accuracy"][0] is None  # empty bin -> null


def test_summary_of_a_uniform_model():
    s = summarize_model(torch.zeros(10, 4), torch.arange(10) % 4)
    assert s["entropy_normalized"] == pytest.approx(1.0)
    assert s["maxprob_mean"] == pytest.approx(0.25) and s["margin_mean"] == pytest.approx(0.0)
    assert s["brier"] == pytest.approx(0.75)  # (1 - 1/4)^2 + 3 (1/4)^2


def test_summary_without_labels_has_only_label_free_numbers():
    s = summarize_model(torch.randn(5, 2), None)
    assert "ece" not in s and "entropy_mean" in s


def test_align_labels_permutes_columns_by_name():
    teacher = Predictions("t", torch.tensor([[1.0, 2.0, 3.0]]), label_names=["a", "b", "c"])
    student = Predictions("s", torch.tensor([[3.0, 1.0, 2.0]]), label_names=["c", "a", "b"])
    aligned, names = align_labels([teacher, student])
    assert names == ["a", "b", "c"]
    torch.testing.assert_close(aligned[1].logits, teacher.logits)
    assert student.logits.tolist() == [[3.0, 1.0, 2.0]] and student.label_names == ["c", "a", "b"]  # not mutated


def test_align_labels_refuses_different_sets_and_sizes():
    with pytest.raises(AuditError, match="label set"):
        align_labels([Predictions("t", torch.zeros(1, 2), label_names=["a", "b"]),
                      Predictions("s", torch.zeros(1, 2), label_names=["a", "z"])])
    with pytest.raises(AuditError, match="same number of classes"):
        align_labels([Predictions("t", torch.zeros(1, 2)), Predictions("s", torch.zeros(1, 3))])
    with pytest.raises(AuditError, match="2 label names for 2 logit columns"):
        align_labels([Predictions("t", torch.zeros(1, 2), label_names=["a", "b", "c"])])
    with pytest.raises(AuditError, match="distinct label names"):
        align_labels([Predictions("t", torch.zeros(1, 2), label_names=["a", "a"])])


def test_data_labels_by_name_and_range():
    data = TextData("d", ["x", "y"], ["0", "1"], [0, 1], ["pos", "neg"])
    assert data_labels(data, ["neg", "pos"], 2).tolist() == [1, 0]
    with pytest.raises(AuditError, match="among the models' labels"):
        data_labels(data, ["neg", "neutral"], 2)
    with pytest.raises(AuditError, match=r"\[0, 2\)"):
        data_labels(TextData("d", ["x"], ["0"], [2], None), None, 2)


def test_match_to_data_reorders_by_id():
    data = TextData("d", ["x", "y", "z"], ["c", "a", "b"], None, None)
    saved = Predictions("p", torch.tensor([[0.0], [1.0], [2.0], [9.0]]), ids=["a", "b", "c", "extra"])
    assert match_to_data(saved, data).logits.squeeze(1).tolist() == [2.0, 0.0, 1.0]


def test_compare_predictions_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    t, s = Predictions("t", torch.randn(200, 3)), Predictions("s", torch.randn(200, 3))
    labels = torch.randint(0, 3, (200,))
    a = compare_predictions(t, [s], labels)
    b = compare_predictions(t, [s], labels)
    assert a["pairs"][0]["kl"] == b["pairs"][0]["kl"]
    with pytest.raises(AuditError, match="distinct model names"):
        compare_predictions(t, [Predictions("t", torch.randn(200, 3))], labels)
