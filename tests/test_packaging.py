"""The installed package: its version flag, and the built-in fixtures found as package data in a real wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import audit
from audit.package import fixtures_path

REPO = Path(__file__).resolve().parent.parent
# What the source distribution is made of (pyproject.toml, setup.py and MANIFEST.in decide what ships).
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "audit", "fixtures"]


def fixture_files(folder: Path) -> set[str]:
    """Every file a user's audit may read under ``folder``, relative: all but Python, caches and hidden files."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc")
            and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)}


@pytest.mark.parametrize("command", [[sys.executable, "-m", "audit", "--version"],
                                     [str(Path(sys.executable).with_name("kd-audit")), "--version"]],
                         ids=["python -m audit", "kd-audit"])
def test_version_flag_prints_the_installed_version(command, tmp_path):
    """Both entry points print the version the installed metadata carries, which is the source's ``__version__``."""
    if not Path(command[0]).exists():
        pytest.skip(f"no console script next to {sys.executable}; install kd-audit (pip install -e .)")
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kd-audit {audit.__version__}\n"


def test_fixtures_lookup_finds_every_checkout_fixture():
    """In this install (editable: the checkout's ``fixtures/``) the lookup finds every fixture file, and the demo."""
    found = fixture_files(fixtures_path())
    assert found == fixture_files(REPO / "fixtures")
    assert {"vader-movies-test.jsonl", "teacher/config.json", "teacher/model.safetensors",
            "student-kd/model.safetensors", "student-ls/tokenizer.json", "student-ce/config.json"} <= found


@pytest.mark.slow
def test_wheel_ships_every_fixture_and_finds_them(tmp_path):
    """A wheel built from the sources (plus a checkpoint folder added under ``fixtures/``) carries every fixture
    file, no ``build.py``, and ``fixtures_path()`` in the unpacked wheel finds them all. CI runs it (``.ci/run``)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    added = source / "fixtures" / "lm-teacher"
    (added / "tokenizer").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.model"):
        (added / name).write_bytes(b"{}")
    expected = fixture_files(source / "fixtures")
    assert {"lm-teacher/config.json", "lm-teacher/tokenizer/tokenizer.model"} <= expected

    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("kd_audit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.removeprefix("audit/_fixtures/") for name in names if name.startswith("audit/_fixtures/")}
    assert shipped - {"__init__.py"} == expected
    assert not any(name.endswith("build.py") for name in names)

    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    lookup = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from audit.package import fixtures_path; "
                               "print(fixtures_path())", str(unpacked)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, timeout=300)
    assert lookup.returncode == 0, lookup.stderr
    found = Path(lookup.stdout.strip())
    assert found == unpacked / "audit" / "_fixtures"
    assert fixture_files(found) == expected


def test_import_audit_is_light():
    """The pytest plugin imports the package in every pytest session: the package face must not pull torch in."""
    code = ("import sys, audit, audit.pytest_plugin; "
            "print(sorted(m for m in ('torch', 'pyarrow', 'rich', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from audit import CompareSettings, compare

    assert callable(compare) and compare.__name__ == "compare" and CompareSettings().n_bins == 15
