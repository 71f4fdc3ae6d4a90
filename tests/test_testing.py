"""audit.testing helpers and the pytest plugin, run by an inner pytest on the fixtures: passing and failing."""

import json

from audit.cli import DEFAULT_DATA, FIXTURES

INI = f"""
[pytest]
kd_audit_teacher = {FIXTURES / "teacher"}
kd_audit_student = {FIXTURES / "student-kd"}
kd_audit_data = {DEFAULT_DATA}
"""

USER_TESTS = '''
import pytest
from audit.testing import (assert_agreement_at_least, assert_ece_at_most, assert_entropy_shift_within,
                           assert_inherits_confidence)

def test_agreement_passes(kd_audit_pair):
    numbers = assert_agreement_at_least(kd_audit_pair.teacher, kd_audit_pair.student, kd_audit_pair.data, 0.5)
    assert 0.5 <= numbers["agreement"]["value"] <= 1

def test_agreement_fails(kd_audit_pair):
    assert_agreement_at_least(kd_audit_pair.teacher, kd_audit_pair.student, kd_audit_pair.data, 1.01)

def test_ece_passes(kd_audit_pair):
    assert_ece_at_most(kd_audit_pair.student, kd_audit_pair.data, 1.0)

def test_ece_fails(kd_audit_pair):
    assert_ece_at_most(kd_audit_pair.student, kd_audit_pair.data, 0.0)

def test_shift_passes(kd_audit_pair):
    assert_entropy_shift_within(kd_audit_pair.teacher, kd_audit_pair.student, kd_audit_pair.data, -1.0, 1.0)

def test_shift_fails(kd_audit_pair):
    assert_entropy_shift_within(kd_audit_pair.teacher, kd_audit_pair.student, kd_audit_pair.data, 0.5, 1.0)

def test_a_model_inherits_its_own_confidence(kd_audit_pair):
    assert_inherits_confidence(kd_audit_pair.teacher, kd_audit_pair.teacher, kd_audit_pair.data)

def test_specs_work_too():
    assert_inherits_confidence("{teacher}", "{student}", "{data}", min_correlation=0.99)
'''


def test_plugin_fixtures_helpers_and_report(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TESTS.format(teacher=FIXTURES / "teacher", student=FIXTURES / "student-ce",
                                                    data=DEFAULT_DATA))
    report = pytester.path / "kd-audit.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--kd-audit-report={report}")
    result.assert_outcomes(passed=4, failed=4)
    result.stdout.fnmatch_lines([
        "*agreement of student-kd with teacher is 0.* (95% CI [[]0.*, 0.*[]]) < 1.01*",
        "*ECE of student-kd is 0.* > 0.0 on 1057 examples*",
        "*entropy shift of student-kd from teacher is *nats, not within [[]0.5, 1.0[]]*",
        "*student-ce does not inherit teacher's confidence*Spearman(entropy)*",
    ])
    checks = json.loads(report.read_text())
    assert checks["schema"] == "kd-audit/assertions/1"
    assert [c["passed"] for c in checks["checks"]] == [True, False, True, False, True, False, True, False]


def test_pair_fixture_without_options(pytester):
    pytester.makepyfile(test_user="def test_x(kd_audit_pair):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*expected kd_audit_teacher in the pytest ini options*"])
    assert result.ret != 0
