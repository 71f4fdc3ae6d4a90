"""kd-audit's pytest plugin (registered by the ``pytest11`` entry point when kd-audit is installed).

- ``--kd-audit-report PATH``: write every :mod:`audit.testing` check made in the run, with its numbers, as JSON.
- ``kd_audit_pair``: a session fixture evaluating the teacher/student pair named by the ini options
  ``kd_audit_teacher``, ``kd_audit_student`` and ``kd_audit_data`` (or the same command-line options)
  once per session, for the ``assert_*`` helpers to reuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

SCHEMA = "kd-audit/assertions/1"
PAIR_OPTIONS = ("teacher", "student", "data")


@dataclass
class AuditPair:
    """A teacher and a student evaluated once on the same data (``Predictions`` and ``TextData``)."""

    teacher: object
    student: object
    data: object


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kd-audit")
    group.addoption("--kd-audit-report", metavar="PATH", default=None,
                    help="write every kd-audit assertion made in this run, with its numbers, as JSON")
    for option in PAIR_OPTIONS:
        group.addoption(f"--kd-audit-{option}", default=None, help=f"{option} spec for the kd_audit_pair fixture")
        parser.addini(f"kd_audit_{option}", f"{option} spec for the kd_audit_pair fixture")


@pytest.fixture(scope="session")
def kd_audit_pair(pytestconfig: pytest.Config) -> AuditPair:
    from audit.compare import CompareSettings, load_eval_data, predict

    specs = {o: pytestconfig.getoption(f"--kd-audit-{o}") or pytestconfig.getini(f"kd_audit_{o}") for o in PAIR_OPTIONS}
    missing = [o for o, spec in specs.items() if not spec]
    if missing:
        raise pytest.UsageError(f"expected kd_audit_{missing[0]} in the pytest ini options or --kd-audit-{missing[0]}, "
                                "got none; name the teacher, student and data the kd_audit_pair fixture loads")
    settings = CompareSettings(progress=False)
    data = load_eval_data(specs["data"], settings)
    return AuditPair(predict(specs["teacher"], data, settings=settings),
                     predict(specs["student"], data, settings=settings), data)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--kd-audit-report")
    if path is None:
        return
    from audit.testing import RECORDS

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"schema": SCHEMA, "checks": RECORDS}, indent=2))
