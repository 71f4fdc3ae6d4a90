"""Shared benchmark fixtures, and the target check every benchmark uses.

Two kinds of assertion live in the benchmarks:

- **values** (a provider's loss, gradient or metric against the reference): plain ``assert``; a mismatch
  always fails, wherever the benchmark runs;
- **targets** (speed, memory, as ``docs/BENCHMARKS.md`` and the issues state them): through the
  ``targets`` fixture. ``--kd-targets=enforce`` (the default; ``tox -e bench``) fails a benchmark that
  misses one; ``--kd-targets=report`` (``.ci/run``, on a noisy shared machine) turns a missed *speed*
  target into a :class:`TargetMissed` warning and a line in the closing summary. Memory targets do not
  depend on the machine's load and are enforced in both modes. A target is checked only on the machine
  it is for (:data:`MACHINES`); elsewhere it is recorded as not applicable.

Every checked target is recorded in the benchmark's ``extra_info["targets"]`` (name, measured, limit,
met, applies), so the JSON says what was asked of each figure. The thread count and the alternation of the
providers a CPU figure is timed with are ``bench/fair.py``'s.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict

import pytest
from kd_targets import MACHINES, Target, TargetMissed

MODES = ("enforce", "report")
_MISSED = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kd-targets", choices=MODES, default=os.environ.get("KD_TARGETS", "enforce"),
        help="enforce: a missed speed or memory target fails its benchmark (tox -e bench); report: a missed "
             "speed target is a warning (.ci/run). Value mismatches fail in both. Default $KD_TARGETS or enforce.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MISSED] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    missed = config.stash.get(_MISSED, [])
    if missed:
        terminalreporter.write_sep("=", "speed targets missed (reported, not enforced: --kd-targets=report)")
        for line in missed:
            terminalreporter.write_line(line)


@pytest.fixture
def targets(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``targets(benchmark, Target(...), ...)``: record each target in ``benchmark.extra_info["targets"]``,
    then fail on the missed ones that apply here (or warn, for speed targets under ``--kd-targets=report``)."""
    mode = request.config.getoption("--kd-targets")

    def check(benchmark, *items: Target) -> None:
        failures = []
        for item in items:
            applies = MACHINES[item.machine]()
            benchmark.extra_info.setdefault("targets", []).append(
                {**asdict(item), "met": item.met, "applies": applies})
            if not applies or item.met:
                continue
            if mode == "report" and item.kind == "speed":
                line = f"{request.node.nodeid}: {item.describe()}"
                request.config.stash[_MISSED].append(line)
                warnings.warn(TargetMissed(line), stacklevel=2)
            else:
                failures.append(item.describe())
        assert not failures, "missed: " + "; ".join(failures)

    return check
