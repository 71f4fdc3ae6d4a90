"""Reports shared by the report tests: a real compare report from synthetic logits, a label-free one,
and a real replicate report: the summary of the session's tiny replication (``tiny_replication`` in
tests/conftest.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from audit.compare import CompareSettings, compare_predictions
from audit.load.models import Predictions


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


@pytest.fixture(scope="session")
def _replicate_once(tiny_replication) -> dict:
    out, _, _ = tiny_replication
    return json.loads((out / "summary.json").read_text())  # the report as `audit report` reads it


@pytest.fixture
def replicate_report(_replicate_once: dict) -> dict:
    return copy.deepcopy(_replicate_once)
