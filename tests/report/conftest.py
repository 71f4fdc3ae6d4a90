"""Reports shared by the report tests: a real compare report from synthetic logits, a label-free one,
and a small hand-made replicate report of the ``"kd-audit/replicate/1"`` shape."""

from __future__ import annotations

import copy

import pytest
import torch

from audit.compare import CompareSettings, compare_predictions
from audit.models import Predictions


def _compare_report(with_labels: bool) -> dict:
    # K = 3 puts every max probability at >= 1/3, so the reliability bins below 1/3 are empty.
    g = torch.Generator().manual_seed(0)
    n, k = 400, 3
    labels = torch.randint(0, k, (n,), generator=g)
    teacher = torch.randn(n, k, generator=g) + 2.5 * torch.nn.functional.one_hot(labels, k)
    students = [
        Predictions("student-kd", 1.3 * teacher + 0.3 * torch.randn(n, k, generator=g)),
        Predictions("student <ls> & \"co\"", 0.4 * teacher + 0.8 * torch.randn(n, k, generator=g)),
    ]
    settings = CompareSettings(n_bins=15, n_bootstrap=50, seed=0)
    return compare_predictions(Predictions("teacher", teacher), students, labels if with_labels else None,
                               settings=settings, data_info={"name": "synthetic"})


@pytest.fixture(scope="session")
def _compare_once() -> dict:
    return _compare_report(with_labels=True)


@pytest.fixture
def compare_report(_compare_once: dict) -> dict:
    return copy.deepcopy(_compare_once)


@pytest.fixture(scope="session")
def unlabeled_report() -> dict:
    return _compare_report(with_labels=False)


def _arm(arm: str, method: str, setup: str, entropies: list[float], accuracies: list[float],
         teacher: str | None = None, teacher_temperature: float = 1.0) -> dict:
    mean_h, mean_a = sum(entropies) / len(entropies), sum(accuracies) / len(accuracies)
    return {
        "arm": arm, "method": method, "setup": setup, "teacher": teacher, "teacher_temperature": teacher_temperature,
        "entropy": {"value": mean_h, "ci": [min(entropies), max(entropies)]},
        "accuracy": {"value": mean_a, "ci": [min(accuracies), max(accuracies)]},
        "per_seed": [{"seed": s, "entropy": h, "accuracy": a, "ece": 0.01 * (s + 1)}
                     for s, (h, a) in enumerate(zip(entropies, accuracies, strict=True))],
    }


def _replicate_report() -> dict:
    return {
        "schema": "kd-audit/replicate/1",
        "task": "vader-movies",
        "profile": "tiny",
        "seeds": [0, 1, 2],
        "settings": {"steps": 200, "lr": 0.001, "ls_alpha": 0.1, "kd_temperature": 2.0},
        "versions": {"kd-audit": "0.1.0", "torch": "2.13.0"},
        "arms": [
            _arm("big ERM (teacher)", "erm", "-", [0.21, 0.25, 0.23], [0.90, 0.91, 0.89]),
            _arm("small ERM", "erm", "-", [0.30, 0.34, 0.32], [0.85, 0.86, 0.84]),
            _arm("small LS a=0.1", "ls", "-", [0.61, 0.66, 0.64], [0.85, 0.85, 0.86]),
            _arm("small KD", "kd", "standard", [0.18, 0.22, 0.20], [0.87, 0.88, 0.86], teacher="big ERM (teacher)"),
            _arm("small KD tau2", "kd", "inheritance", [0.28, 0.31, 0.30], [0.86, 0.87, 0.86],
                 teacher="big ERM (teacher)", teacher_temperature=2.0),
        ],
        "claims": [
            {"claim": "C1a", "statement": "LS raises entropy over ERM", "verdict": "holds",
             "statistic": "entropy difference (LS - ERM)", "value": 0.32, "ci": [0.27, 0.36],
             "detail": "3 seeds, paired"},
            {"claim": "C1b", "statement": "KD lowers entropy below ERM & LS", "verdict": "inconclusive",
             "statistic": "entropy difference (KD - ERM)", "value": -0.12, "ci": [-0.2, 0.01],
             "detail": "CI crosses 0 <check>"},
        ],
        "claim_verdicts": {"C1a": "holds", "C1b": "inconclusive"},
        "inheritance": {"teacher_entropy": [0.10, 0.20, 0.35, 0.50], "student_entropy": [0.12, 0.19, 0.30, 0.47],
                        "spearman": {"value": 1.0, "ci": [0.8, 1.0]}},
    }


@pytest.fixture(scope="session")
def _replicate_once() -> dict:
    return _replicate_report()


@pytest.fixture
def replicate_report(_replicate_once: dict) -> dict:
    return copy.deepcopy(_replicate_once)
