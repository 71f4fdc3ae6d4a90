"""The built-in demo, `python -m audit`, as a new user runs it: a fresh process, imports included.

Target: at most 15 s wall on a 2-core CPU. Timed by :func:`fair.alternate` (one provider: the run) at one named
thread, which the launched process gets through ``OMP_NUM_THREADS``; the target is checked on the median of
:data:`ROUNDS` runs (a CPU speed target: ``--kd-targets`` in ``bench/conftest.py`` says whether a miss fails or
is reported), and a run that fails fails here, always.
"""

from __future__ import annotations

import os
import subprocess
import sys

from fair import alternate
from kd_targets import Target

TARGET_SECONDS, ROUNDS = 15.0, 3


def run_default(cwd) -> None:
    result = subprocess.run([sys.executable, "-m", "audit", "--no-progress", "--no-cache"], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr


def test_default_run(benchmark, tmp_path, targets):
    measured = alternate(benchmark, {"default run": lambda: run_default(tmp_path)}, rounds=ROUNDS, warmup=0)
    benchmark.extra_info.update(target_seconds=TARGET_SECONDS, cpu_count=os.cpu_count())
    targets(benchmark, Target(f"median wall time of {ROUNDS}", measured.median("default run"), TARGET_SECONDS, " s"))
