"""The one packaging step ``pyproject.toml`` cannot state: ship the top-level ``fixtures/`` folder as ``audit._fixtures``.

Everything else (metadata, dependencies, extras, scripts, package data globs) is in ``pyproject.toml``. Here the
audit packages are found on disk as before, the fixtures folder is added under the name ``audit._fixtures``
(one copy in git, at ``fixtures/``), and its modules other than ``__init__.py`` (``fixtures/build.py``, the
script that retrains the checkpoints) stay out of the wheel's import path.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

FIXTURES_PACKAGE = "audit._fixtures"


class BuildPy(build_py):
    """``build_py`` that keeps only ``__init__`` of the fixtures package's Python modules."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package != FIXTURES_PACKAGE:
            return modules
        return [(pkg, module, path) for pkg, module, path in modules if module == "__init__"]


setup(
    packages=[*find_packages(include=["audit", "audit.*"]), FIXTURES_PACKAGE],
    package_dir={FIXTURES_PACKAGE: "fixtures"},
    cmdclass={"build_py": BuildPy},
)
