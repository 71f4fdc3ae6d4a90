"""Peak host memory of a 1M-row audit from predictions files: ``python -m audit compare`` in a subprocess.

Run: ``python -m pytest bench/bench_memory.py`` (add ``--benchmark-json=out.json`` to keep the numbers).
Inputs (written per K): teacher and student logits ``.npy`` of ``N`` rows x ``K`` classes and an
``N``-row parquet of ids and labels (with an empty ``text`` column: ``audit.load.data.load_data`` wants one even
when every model is a predictions file). The audit runs with ``--bootstrap 20``: bootstrap resamples are
evaluated a chunk at a time, so the count changes the time, not the peak. The peak is the audit process's own
high-water mark (``VmHWM``, read at exit), recorded as ``peak_rss_mb`` in extra_info with the budget it must stay
under (a memory target: enforced under either ``--kd-targets`` mode); the time includes Python and torch
start-up (~5 s).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kd_targets import Target

N, SEED, BOOTSTRAP, BUDGET_MB = 1_000_000, 0, 20, 1024


def write_inputs(folder, k: int) -> tuple[str, str, str]:
    """Teacher and student logits ``.npy`` (N, K) float32, and the parquet of ids and labels drawn from the teacher."""
    gen = np.random.default_rng(SEED + k)
    teacher = (2 * gen.standard_normal((N, k))).astype(np.float32)
    student = (0.5 * teacher + gen.standard_normal((N, k))).astype(np.float32)
    probs = np.exp(teacher - teacher.max(1, keepdims=True))
    labels = ((probs / probs.sum(1, keepdims=True)).cumsum(1) > gen.random((N, 1))).argmax(1)  # near calibrated
    np.save(folder / f"teacher-{k}.npy", teacher)
    np.save(folder / f"student-{k}.npy", student)
    table = pa.table({"id": pa.array([f"ex-{i:07d}" for i in range(N)]), "text": pa.array([""] * N), "label": labels})
    pq.write_table(table, folder / f"labels-{k}.parquet")
    return str(folder / f"teacher-{k}.npy"), str(folder / f"student-{k}.npy"), str(folder / f"labels-{k}.parquet")


# Runs the CLI and records the process's own high-water mark (VmHWM) at exit. ru_maxrss from wait4 would not
# do: Linux carries the parent's resident size at fork into the child's maxrss, so a large pytest process
# would be measured instead of the audit.
PROBE = """
import atexit, sys
peak_file = sys.argv.pop(1)
def record_peak():
    kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(peak_file, "w").write(str(kb))
atexit.register(record_peak)
from audit.cli import main
main(sys.argv[1:])
"""


def audit_peak_mb(teacher: str, student: str, data: str, out: str) -> float:
    """Run the audit as a user would; return its peak resident memory in MB."""
    peak_file = out + ".peak"
    command = [sys.executable, "-c", PROBE, peak_file, "compare", "--teacher", teacher, "--student", student,
               "--data", data, "--bootstrap", str(BOOTSTRAP), "--no-progress", "--json", out]
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"the audit failed: {result.stderr.decode()[-2000:]}")
    return int(open(peak_file).read()) / 1024  # VmHWM is in kB


@pytest.mark.parametrize("k", [2, 10])
def test_peak_memory_of_a_million_row_audit(benchmark, tmp_path, k, targets):
    teacher, student, data = write_inputs(tmp_path, k)
    peaks = []
    benchmark.pedantic(lambda: peaks.append(audit_peak_mb(teacher, student, data, str(tmp_path / "report.json"))),
                       rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(rows=N, classes=k, bootstrap=BOOTSTRAP, peak_rss_mb=round(peaks[0], 1),
                                budget_mb=BUDGET_MB)
    targets(benchmark, Target("peak RSS", peaks[0], BUDGET_MB, " MB", kind="memory"))
