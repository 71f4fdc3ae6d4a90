"""Stored reports: the default compare, the calibrated compare and the fixture LM audit give the numbers and
verdicts of ``tests/expected/`` (to 1e-6), so that moving code around cannot move a number.

A report may gain fields; a stored field that disappears or changes fails. Regenerate a stored report only
for an intended change of numbers, with the command in :data:`RUNS` (``--json tests/expected/NAME.json``), then
write the checkout's path in it as ``<root>`` (paths are compared with the checkout's path as ``<root>``, so
that the test passes in any clone).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from audit_cli import cli

EXPECTED = Path(__file__).parent / "expected"
ROOT = str(Path(__file__).resolve().parents[1])
RUNS = {
    "compare-default": [],
    "compare-calibrated": ["--model-cis", "--calibrate", "--bootstrap", "200"],
    "lm-fixture": ["compare", "--teacher", "fixtures/lm-teacher", "--student", "fixtures/lm-student", "--data",
                   "shakespeare:test", "--limit", "4", "--max-length", "128", "--bootstrap", "200"],
}
# when, how fast and with what it ran, not what it found
NOT_NUMBERS = {"created", "versions", "cache", "schema_changes", "timing", "forward_seconds", "tokens_per_second"}


def differences(expected, actual, where: str = "") -> list[str]:
    """Where ``actual`` departs from ``expected``: a missing field, another string or verdict, a number off by
    more than 1e-6 (relative above 1). Fields only ``actual`` has are allowed."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {type(actual).__name__}"]
        out = []
        for key, value in expected.items():
            if key in NOT_NUMBERS:
                continue
            if key not in actual:
                out.append(f"{where}.{key}: missing")
            else:
                out.extend(differences(value, actual[key], f"{where}.{key}"))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected a list of {len(expected)}, got {actual!r:.80}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) or (isinstance(expected, int) and isinstance(actual, float)):
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return [f"{where}: expected {expected}, got {actual!r}"]
        ok = math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)
        return [] if ok else [f"{where}: expected {expected}, got {actual}"]
    if isinstance(expected, str) and isinstance(actual, str):
        expected, actual = expected.replace(ROOT, "<root>"), actual.replace(ROOT, "<root>")
    return [] if expected == actual else [f"{where}: expected {expected!r:.80}, got {actual!r:.80}"]


def test_differences_catches_what_a_regression_would_change():
    stored = {"models": {"t": {"ece": 0.1, "verdict": "inherits", "ci": [0.1, 0.2]}}, "created": "then"}
    assert differences(stored, {**stored, "created": "now", "extra": 1}) == []
    assert differences(stored, {"models": {"t": {"ece": 0.1 + 1e-8, "verdict": "inherits", "ci": [0.1, 0.2]}}}) == []
    assert differences(stored, {"models": {"t": {"ece": 0.1 + 1e-5, "verdict": "inherits", "ci": [0.1, 0.2]}}})
    assert differences(stored, {"models": {"t": {"ece": 0.1, "verdict": "moves_away", "ci": [0.1, 0.2]}}})
    assert differences(stored, {"models": {"t": {"ece": 0.1, "ci": [0.1, 0.2]}}}) == [".models.t.verdict: missing"]
    assert differences(stored, {"models": {"t": {"ece": 0.1, "verdict": "inherits", "ci": [0.1]}}})


@pytest.mark.parametrize("name", RUNS)
def test_the_report_equals_the_stored_one(name, tmp_path, monkeypatch, capsys, one_thread):
    """Run uncached: the models really run."""
    monkeypatch.chdir(ROOT)
    code, _, err = cli(capsys, *RUNS[name], "--json", str(tmp_path / "report.json"), "--no-progress", "--no-cache")
    assert code == 0, err
    actual = json.loads((tmp_path / "report.json").read_text())
    expected = json.loads((EXPECTED / f"{name}.json").read_text())
    found = differences(expected, actual)
    assert not found, f"{len(found)} differences from tests/expected/{name}.json, e.g.\n" + "\n".join(found[:20])
