"""audit.stats.claims: the catalogue against CLAIMS.md, the verdict rule, the targets, and the claims table
as pytest prints it (tests/conftest.py, run in a nested session)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditError
from audit.stats.claims import (
    CLAIMS,
    CORRELATION_DELTA,
    RANK_CORRELATION_DELTA,
    ClaimResult,
    TableRow,
    direction_survives,
    distilled_targets,
    entropy_delta,
    format_table,
    overall_verdicts,
    smoothed_targets,
    table_rows,
    verdict,
)

CLAIMS_MD = Path(__file__).resolve().parents[2] / "docs" / "CLAIMS.md"
CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def test_catalogue_matches_claims_md():
    ids = re.findall(r"^\| (P\d+|C\d[a-z]) \|", CLAIMS_MD.read_text(), flags=re.MULTILINE)
    assert [c.id for c in CLAIMS.values() if c.kind != "exploratory"] == ids
    assert {c.id for c in CLAIMS.values() if c.kind == "math"} == {i for i in ids if i.startswith("P")}


@pytest.mark.parametrize(
    ("estimate", "ci", "direction", "delta", "expected"),
    [
        (0.3, (0.1, 0.5), 1, 0.0, "holds"),
        (-0.3, (-0.5, -0.1), 1, 0.0, "fails"),
        (0.2, (-0.1, 0.5), 1, 0.0, "inconclusive"),
        (0.25, (0.0, 0.5), 1, 0.0, "inconclusive"),  # touching zero is not "the whole interval on one side"
        (-0.3, (-0.5, -0.1), -1, 0.0, "holds"),
        (0.3, (0.1, 0.5), -1, 0.0, "fails"),
        (-0.25, (-0.5, 0.0), -1, 0.0, "inconclusive"),
        # with a band of +-0.05 (CLAIMS.md: "negligible" is a CI wholly inside it)
        (0.01, (-0.04, 0.05), 1, 0.05, "negligible"),  # the band is closed
        (-0.01, (-0.02, -0.005), 1, 0.05, "negligible"),  # wholly below zero, but too small to matter
        (0.0, (0.0, 0.0), -1, 0.0, "negligible"),
        (0.04, (0.02, 0.07), 1, 0.05, "inconclusive"),  # above zero, estimate inside the band, CI leaves it
        (0.05, (0.02, 0.08), 1, 0.05, "inconclusive"),  # estimate on the band's edge is not outside it
        (0.06, (0.02, 0.09), 1, 0.05, "holds"),  # above zero, estimate outside the band
        (-0.06, (-0.09, -0.02), 1, 0.05, "fails"),
        (0.06, (-0.01, 0.09), 1, 0.05, "inconclusive"),  # estimate outside the band, CI crosses zero
        (-0.2, (-0.3, -0.1), -1, 0.05, "holds"),
    ],
)
def test_verdict(estimate, ci, direction, delta, expected):
    assert verdict(estimate, ci, direction, delta=delta) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), st.floats(0, 1e6))
def test_verdict_mirrors_with_direction(values, delta):
    low, estimate, high = sorted(values)
    assert verdict(estimate, (low, high), -1, delta=delta) == verdict(-estimate, (-high, -low), +1, delta=delta)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=3, max_size=3), st.floats(0, 10))
def test_verdict_is_the_rule_of_claims_md(values, delta):
    """Each verdict against the rule's own words: "negligible" iff the CI is inside the band; "holds" /
    "fails" iff the CI is on one side of zero with the estimate outside the band; the four partition."""
    low, estimate, high = sorted(values)
    got = verdict(estimate, (low, high), +1, delta=delta)
    inside = -delta <= low and high <= delta
    outside = estimate > delta or estimate < -delta
    assert (got == "negligible") == inside
    assert (got == "holds") == (not inside and low > 0 and outside)
    assert (got == "fails") == (not inside and high < 0 and outside)


@pytest.mark.parametrize(
    ("estimate", "ci", "direction", "delta"),
    [(0.0, (1.0, -1.0), 1, 0.0), (2.0, (0.0, 1.0), 1, 0.0), (math.nan, (0.0, 1.0), 1, 0.0),
     (0.5, (0.0, math.inf), 1, 0.0), (0.5, (0.0, 1.0), 0, 0.0), (0.5, (0.0, 1.0), 1, -0.1),
     (0.5, (0.0, 1.0), 1, math.nan)],
)
def test_verdict_rejects_bad_input(estimate, ci, direction, delta):
    with pytest.raises(AuditError, match="expected"):
        verdict(estimate, ci, direction, delta=delta)


def test_deltas_of_claims_md():
    assert entropy_delta(2) == pytest.approx(0.0069, abs=5e-5)
    assert entropy_delta(3) == pytest.approx(0.01 * 1.0986, abs=1e-6)
    assert (CORRELATION_DELTA, RANK_CORRELATION_DELTA) == (0.02, 0.1)
    with pytest.raises(AuditError, match="expected at least 2 classes"):
        entropy_delta(1)


def test_claim_result():
    result = ClaimResult.from_interval("C2a", "spearman", -0.3, (-0.6, -0.05), delta=0.1, detail="5 teachers")
    assert (result.verdict, result.figure, result.delta) == ("fails", "spearman=-0.3 [-0.6, -0.05] delta 0.1", 0.1)
    assert ClaimResult.from_interval("C2b", "gap", 0.01, (-0.01, 0.02), delta=0.02).verdict == "negligible"
    with pytest.raises(AuditError, match="claim id"):
        ClaimResult("C9", "holds", "x", 0.0)
    with pytest.raises(AuditError, match="verdict"):
        ClaimResult("C1a", "true", "x", 0.0)


def test_targets():
    labels = torch.tensor([0, 2])
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)  # a = 0.3, K = 3
    torch.testing.assert_close(smoothed_targets(labels, 3, 0.3), expected)
    uniform = torch.full((2, 3), 1 / 3, dtype=torch.float32)
    torch.testing.assert_close(distilled_targets(labels, uniform, 0.3), expected)
    for call in (
        lambda: smoothed_targets(labels, 3, 1.5),
        lambda: distilled_targets(labels, uniform, -0.1),
        lambda: distilled_targets(torch.tensor([0, 3]), uniform, 0.3),
        lambda: distilled_targets(labels[:1], uniform, 0.3),
    ):
        with pytest.raises(AuditError, match="expected"):
            call()


def test_table_rows():
    outcomes = {
        "P1": [("test_p1", "passed")],
        "P2": [("test_p2a", "passed"), ("test_p2b", "failed")],
        "P3": [("test_p3", "error")],
        "P4": [("test_p4", "skipped")],
        "C1b": [("test_c1b", "failed")],
    }
    results = [("test_c1a", ClaimResult("C1a", "holds", "d", 0.2, (0.1, 0.3))),
               ("test_c2a", ClaimResult("C2a", "inconclusive", "rho", 0.1, (-0.2, 0.4))),
               ("test_c2a", ClaimResult("C2a", "fails", "rho", -0.5, (-0.8, -0.1))),
               ("test_c2b", ClaimResult("C2b", "negligible", "gap", 0.0, (-0.01, 0.01)))]
    rows = {(r.claim_id, r.verdict) for r in table_rows(outcomes, results)}
    assert {("P1", "holds"), ("P2", "fails"), ("P3", "error"), ("P4", "not run"), ("P5", "not run"),
            ("C1a", "holds"), ("C1b", "error"), ("C1c", "not run"), ("C2a", "inconclusive"),
            ("C2a", "fails"), ("C2b", "negligible")} <= rows
    # one row per claim, two for C2a; the exploratory X1 only where a check recorded it
    assert len(table_rows(outcomes, results)) == len(CLAIMS) - 1 + 1
    assert ("X1", "holds") in {(r.claim_id, r.verdict) for r in table_rows(
        outcomes, [("test_x1", ClaimResult("X1", "holds", "rho", 0.9, (0.5, 1.0)))])}
    assert table_rows(outcomes)[1].test == "test_p2a (+1)"


def test_format_table_cuts_long_cells_but_not_figures():
    row = TableRow("C2b", "s" * 80, "t" * 40, "holds", "f" * 50)
    line = format_table([row], width=80)[1]
    assert ("s" * 29 + "~") in line and ("t" * 33 + "~") in line and line.endswith("f" * 50)
    for label in ("negligible", "inconclusive"):  # every verdict is shown whole
        assert f" {label} " in format_table([TableRow("C1a", "s", "t", label, "f")], width=80)[1]


def test_format_table_says_an_empirical_fails_is_a_finding_not_a_failed_test():
    """A passing test may record an empirical claim failing on its small synthetic data; the table says once,
    under it, that such a "fails" is a finding; a math claim's "fails" (a test that failed) gets no such note."""
    finding = TableRow("C2b", "per-example correlation", "test_c2b", "fails", "gap=-0.1 [-0.2, -0.05] delta 0.02")
    exploratory = TableRow("X1", "T* rises with the teacher's", "test_x1", "fails", "rho=-0.5 [-0.9, -0.1]")
    math_failure = TableRow("P8", "optimal gap", "test_p8", "fails", "tol 1e-8")
    holds = TableRow("C1a", "LS higher entropy", "test_c1a", "holds", "d=0.2 [0.1, 0.3]")
    lines = format_table([math_failure, holds, finding, exploratory], width=80)
    table, note = lines[:5], " ".join(lines[5:])
    assert len(table[1:]) == 4 and "finding" not in " ".join(table)
    assert note.startswith("note: C2b, X1 fails ") and "not a failed test" in note and "P8" not in note
    assert all(len(line) <= 80 for line in lines[5:])
    for rows in ([math_failure, holds], [holds]):  # no empirical "fails": no note
        assert len(format_table(rows, width=80)) == 1 + len(rows)


CLAIM_TESTS = '''
import pytest
from audit.stats.claims import ClaimResult

@pytest.mark.claims
def test_holds():
    """P2: passes."""

@pytest.mark.claims
def test_broken():
    """P3: fails."""
    assert False

@pytest.mark.claims
def test_empirical(record_claim):
    """C1a: records a figure."""
    record_claim(ClaimResult.from_interval("C1a", "entropy LS-ERM", 0.25, (0.125, 0.5), delta=0.0069))
'''


@pytest.fixture
def nested(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    claims: the claim suite\n")
    return pytester


def test_claims_table_is_printed(nested: pytest.Pytester):
    nested.makepyfile(test_claims_table=CLAIM_TESTS)  # not test_claims: that module is this file
    result = nested.runpytest("-p", "no:kd_audit", "-m", "claims")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.re_match_lines(
        [r"=+ claims \(docs/CLAIMS\.md\) =+", r"P1 .* not run", r"P2 .* test_holds +holds +tol 1e-10",
         r"P3 .* test_broken +fails", r"C1a .* test_empirical +holds +entropy LS-ERM=0\.25 \[0\.125, 0\.5\] delta 0\.0069"]
    )


FINDING_TESTS = '''
import pytest
from audit.stats.claims import ClaimResult

@pytest.mark.claims
def test_finding(record_claim):
    """C2b: records a claim that fails on synthetic data; the test itself passes."""
    record_claim(ClaimResult.from_interval("C2b", "gap", -0.25, (-0.5, -0.125), delta=0.02))
'''


def test_claims_table_says_fails_rows_of_passing_tests_are_findings(nested: pytest.Pytester):
    nested.makepyfile(test_findings=FINDING_TESTS)
    result = nested.runpytest("-p", "no:kd_audit", "-m", "claims")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"=+ claims \(docs/CLAIMS\.md\) =+", r"C2b .* test_finding +fails +gap=-0\.25",
                                  r"note: C2b fails "])
    note = " ".join(result.stdout.str().split("note: C2b fails ", 1)[1].split())
    assert "a finding about that data, not a failed test" in note


def test_no_table_without_claims_tests(nested: pytest.Pytester):
    nested.makepyfile(test_other="def test_plain():\n    pass\n")
    assert "claims (docs/CLAIMS.md)" not in nested.runpytest("-p", "no:kd_audit").stdout.str()


def test_claims_test_must_name_its_claim(nested: pytest.Pytester):
    nested.makepyfile(test_bad='import pytest\n\n@pytest.mark.claims\ndef test_x():\n    """Some claim."""\n')
    result = nested.runpytest("-p", "no:kd_audit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*expected the docstring of claims test*to start with a claim id*"])


def test_overall_verdict_is_the_weakest_check():
    def result(v: str) -> ClaimResult:
        return ClaimResult("C1b", v, "x", 0.0, (0.0, 0.0))

    assert overall_verdicts([result("holds"), result("holds")]) == {"C1b": "holds"}
    assert overall_verdicts([result("holds"), result("negligible")]) == {"C1b": "negligible"}
    assert overall_verdicts([result("negligible"), result("inconclusive")]) == {"C1b": "inconclusive"}
    assert overall_verdicts([result("fails"), result("inconclusive"), result("holds")]) == {"C1b": "fails"}


def test_direction_survives():
    before = {"C1a": "holds", "C1b": "fails", "C1c": "holds", "C2a": "inconclusive", "C2b": "negligible"}
    after = {"C1a": "holds", "C1b": "fails", "C1c": "negligible", "C2a": "holds", "C2b": "holds"}
    assert direction_survives(before, after) == {"C1a": True, "C1b": True, "C1c": False, "C2a": None, "C2b": None}


def test_too_few_clusters_carry_no_claim_verdict():
    """A clear effect from 9 clusters is insufficient, the same from 10 holds (VerdictRule.min_clusters)."""
    assert verdict(0.3, (0.1, 0.5), delta=0.01, n_clusters=9) == "insufficient"
    assert verdict(0.3, (0.1, 0.5), delta=0.01, n_clusters=10) == "holds"
    assert ClaimResult.from_interval("C1a", "H(LS) - H(ERM)", 0.3, (0.1, 0.5), delta=0.01, n_clusters=4).verdict == \
        "insufficient"
    assert overall_verdicts([ClaimResult.from_interval("C1a", "a", 0.3, (0.1, 0.5), delta=0.01, n_clusters=4),
                             ClaimResult.from_interval("C1a", "b", 0.3, (0.1, 0.5), delta=0.01)]) == {"C1a": "insufficient"}
