"""The built-in demo, `python -m audit`, as a new user runs it: a fresh process, imports included.

Target: at most 15 s wall on a 2-core CPU. The wall time of each round is the benchmark's figure; the
target is asserted on the median so a CI run with a slower default fails here, not in a timed test.
"""

from __future__ import annotations

import os
import subprocess
import sys

TARGET_SECONDS = 15.0


def run_default(cwd) -> None:
    result = subprocess.run([sys.executable, "-m", "audit", "--no-progress", "--no-cache"], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr


def test_default_run(benchmark, tmp_path):
    benchmark.pedantic(run_default, (tmp_path,), rounds=3, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(target_seconds=TARGET_SECONDS, cpu_count=os.cpu_count())
    assert median <= TARGET_SECONDS, f"default run took {median:.1f} s (median of 3), target {TARGET_SECONDS} s"
