"""kd-audit's pytest plugin (registered by the ``pytest11`` entry point when kd-audit is installed).

- ``--kd-audit-report PATH``: write every :mod:`audit.testing` check made in the run, with its numbers, as JSON.
- ``kd_audit_pair``: a session fixture evaluating the teacher/student pair named by the ini options
  ``kd_audit_teacher``, ``kd_audit_student`` and ``kd_audit_data`` (or the same command-line options)
  once per session, for the ``assert_*`` helpers to reuse.

Installed, the plugin loads in every pytest session of the environment, so its hooks import the library (and so
torch) inside their functions, only when a kd-audit option or fixture is used.
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


def _pair_specs(config: pytest.Config) -> dict[str, str | None]:
    return {o: config.getoption(f"--kd-audit-{o}") or config.getini(f"kd_audit_{o}") or None for o in PAIR_OPTIONS}


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before any test runs, a report path that cannot be written and a model path that does not exist."""
    from audit.errors import AuditError
    from audit.load.models import looks_like_hub_id
    from audit.outputs import Output, check_outputs

    path = config.getoption("--kd-audit-report", default=None)
    specs = _pair_specs(config)
    try:
        if path is not None:
            check_outputs([Output(Path(path), "file", "--kd-audit-report")], [s for s in specs.values() if s])
    except AuditError as err:
        raise pytest.UsageError(f"kd-audit: {err}") from None
    for option in ("teacher", "student"):
        spec = specs[option]
        if spec and not Path(spec).exists() and not looks_like_hub_id(spec):
            raise pytest.UsageError(f"kd-audit: expected kd_audit_{option} to be an existing path or a hub id, got "
                                    f"{spec!r}; fix the ini option or --kd-audit-{option}")


@pytest.fixture(scope="session")
def kd_audit_pair(pytestconfig: pytest.Config) -> AuditPair:
    from audit.compare import CompareSettings, load_eval_data, predict
    from audit.errors import AuditError

    specs = _pair_specs(pytestconfig)
    missing = [o for o, spec in specs.items() if not spec]
    if missing:
        pytest.exit(f"kd-audit: expected kd_audit_{missing[0]} in the pytest ini options or --kd-audit-{missing[0]}, "
                    "got none; name the teacher, student and data the kd_audit_pair fixture loads",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    settings = CompareSettings(progress=False)
    try:
        data = load_eval_data(specs["data"], settings)
        return AuditPair(predict(specs["teacher"], data, settings=settings),
                         predict(specs["student"], data, settings=settings), data)
    except AuditError as err:
        pytest.exit(f"kd-audit: {err}", returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--kd-audit-report")
    if path is None:
        return
    from audit.outputs import write_files
    from audit.testing import RECORDS

    write_files({Path(path): json.dumps({"schema": SCHEMA, "checks": RECORDS}, indent=2).encode()})
