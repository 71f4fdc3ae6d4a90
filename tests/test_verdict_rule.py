"""The verdict rule on the command line: the measured default, the older fixed rule for comparison, and the
thresholds one by one (the stored report pins the default's verdicts: tests/expected/compare-default.json)."""

from __future__ import annotations

import json

import pytest
from audit_cli import cli


def _verdicts(capsys, tmp_path, *options) -> dict[str, str]:
    code, _, err = cli(capsys, "--json", str(tmp_path / "r.json"), "--no-progress", "--bootstrap", "200", *options)
    assert code == 0, err
    return {p["student"]: p["verdict"] for p in json.loads((tmp_path / "r.json").read_text())["pairs"]}


def test_the_fixed_rule_gives_the_older_verdicts_and_the_measured_one_its_own(capsys, tmp_path, one_thread):
    fixed = _verdicts(capsys, tmp_path, "--verdict-rule", "fixed")
    assert fixed == {"student-ce": "inconclusive", "student-ls": "moves_away", "student-kd": "inherits"}
    measured = _verdicts(capsys, tmp_path)
    assert measured == {"student-ce": "moves_away", "student-ls": "moves_away", "student-kd": "inconclusive"}
    # a band wide enough for the KD student's shift, the measured correlation threshold: it inherits again
    assert _verdicts(capsys, tmp_path, "--shift-band", "0.25")["student-kd"] == "inherits"
    assert set(_verdicts(capsys, tmp_path, "--min-clusters", "5000").values()) == {"insufficient"}


@pytest.mark.parametrize("option, value, says", [("--shift-band", "0", "--shift-band > 0"),
                                                  ("--min-correlation", "1", "--min-correlation in [-1, 1)"),
                                                  ("--min-clusters", "1", "--min-clusters >= 2"),
                                                  ("--verdict-rule", "strict", "--verdict-rule measured or fixed")])
def test_bad_thresholds_are_one_line_errors(capsys, tmp_path, option, value, says):
    code, out, err = cli(capsys, "--json", str(tmp_path / "r.json"), "--no-progress", option, value)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()
