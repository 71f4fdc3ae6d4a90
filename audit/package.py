"""What the installed package carries besides code: its version (package metadata) and the built-in fixtures.

The fixtures (the demo's teacher, students and evaluation data) live at the top-level ``fixtures/`` folder of the
repository and ship inside the wheel as the data package ``audit._fixtures`` (``setup.py`` maps one onto the
other), so the same lookup finds them in a wheel install, an editable install and an sdist build.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path

from audit.errors import AuditError

DISTRIBUTION = "kd-audit"
FIXTURES_PACKAGE = "audit._fixtures"


def version() -> str:
    """The installed distribution's version, from its metadata (``pyproject.toml`` at build time).

    Raises:
        AuditError: kd-audit is imported from a folder without being installed (no metadata).
    """
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise AuditError(f"expected the {DISTRIBUTION} distribution to be installed, got none (audit imported "
                         "from a bare folder); pip install . (or pip install -e . in a checkout)") from None


def fixtures_path() -> Path:
    """The folder of the built-in fixtures: ``teacher/``, ``student-*/`` and ``vader-movies-test.jsonl``.

    Found through :mod:`importlib.resources`, so it is ``site-packages/audit/_fixtures`` in a wheel install
    and the checkout's ``fixtures/`` in an editable one.

    Raises:
        AuditError: the package data is missing (an editable install made before the fixtures were package
            data) or not on the file system (a zipped install).
    """
    try:
        root = importlib.resources.files(FIXTURES_PACKAGE)
    except ModuleNotFoundError:
        raise AuditError(f"expected the built-in fixtures as the package {FIXTURES_PACKAGE}, got none; reinstall "
                         "kd-audit (pip install ., or pip install -e . in a checkout)") from None
    if not isinstance(root, Path):
        raise AuditError(f"expected the built-in fixtures on the file system, got {type(root).__name__} {root}; "
                         "install kd-audit unzipped (pip install)")
    return root
