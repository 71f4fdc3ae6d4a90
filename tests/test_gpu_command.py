"""The GPU command, ``bash bench/gpu.sh``, everywhere a CPU can check it: its arguments, its exit without CUDA,
the report writer ``bench/gpu_report.py`` (on hand-written inputs and on a JSON pytest-benchmark really wrote),
and (slow) the offline install step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"

_spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "bench" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the command where CUDA is absent")


def run_command(*args: str, path: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """``bash bench/gpu.sh ARGS`` with this test's python as the one whose torch it uses."""
    environment = {**os.environ, "KD_GPU_PYTHON": sys.executable, **env}
    if path is not None:
        environment["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(("args", "message"), [
    ((), "expected an OUT_DIR"),
    (("out", "--bogus"), "unknown option '--bogus'"),
    (("out-a", "out-b"), "expected one OUT_DIR, got 'out-a' and 'out-b'"),
    (("out", "--wheels"), "expected a folder of wheels after --wheels"),
    (("out", "--wheels", "no/such/folder"), "expected a folder of wheels after --wheels, got 'no/such/folder'"),
    (("out", "--budget", "ten"), "expected whole seconds after --budget, got 'ten'"),
])
def test_bad_arguments_exit_64_with_one_line(args, message, tmp_path) -> None:
    result = run_command(*args)
    assert result.returncode == 64
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "usage: bash bench/gpu.sh" in result.stderr
    assert not (ROOT / "out").exists()


def test_help_lists_every_option() -> None:
    result = run_command("--help")
    assert result.returncode == 0
    for option in ("--no-replicate", "--wheels DIR", "--budget SECONDS", "--install-only", "OUT_DIR/gpu.json"):
        assert option in result.stdout


@pytest.mark.parametrize("args", [(), ("--no-replicate", "--budget", "300"), ("--wheels", ".")],
                         ids=["plain", "options", "wheels"])
def test_without_cuda_exits_2_at_once_with_one_line(args, tmp_path) -> None:
    out = tmp_path / "results"
    start = time.perf_counter()
    result = run_command(str(out), *args)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("kd-audit gpu: no CUDA device here (torch sees none")
    assert not out.exists()  # nothing installed or written
    assert time.perf_counter() - start < 30  # one torch import, no install


def test_a_driver_that_lists_no_gpu_is_no_cuda(tmp_path) -> None:
    """An ``nvidia-smi`` that answers without a GPU (a broken driver) is no reason to go on."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    result = run_command(str(tmp_path / "out"), path=f"{fake}:{os.environ['PATH']}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_a_python_without_torch_and_no_driver_exits_2(tmp_path) -> None:
    result = run_command(str(tmp_path / "out"), KD_GPU_PYTHON="/bin/false")
    assert result.returncode == 2
    assert "no torch in /bin/false" in result.stderr


def test_found_reports_this_python() -> None:
    info = gpu_report.found()
    assert info["torch"] == torch.__version__.split("+")[0] or info["torch"] == torch.__version__
    assert info["cuda_available"] is False and info["python"] == ".".join(map(str, sys.version_info[:3]))
    lines = gpu_report.found_lines(info)
    assert len(lines) == 2 and all(line.startswith("kd-audit gpu: ") for line in lines)
    assert "no GPU found" in lines[0] and f"torch {info['torch']}" in lines[1]


def _benchmark(name: str, median: float, **extra) -> dict:
    return {"name": name, "fullname": f"bench/x.py::{name}", "stats": {"median": median}, "extra_info": extra}


def _loss_benchmark(provider: str, ms: float, targets: list[dict]) -> dict:
    return _benchmark(f"test_forward_backward[kd-8192x32000-bfloat16-{provider}]", ms / 1e3, loss="kd",
                      provider=provider, n=8192, v=32000, dtype="torch.bfloat16", device="cuda", ms=ms, gbps=4718.6,
                      copy_gbps=4274.0, pct_of_copy=110.4, extra_mib=0.0, loss_error=1e-7, grad_error=0.0021,
                      targets=targets)


def _target(name, measured, limit, at_most=True, applies=True) -> dict:
    met = measured <= limit if at_most else measured >= limit
    return {"name": name, "measured": measured, "limit": limit, "unit": " ms" if name == "ms" else "x",
            "at_most": at_most, "kind": "speed", "machine": "h100/h200", "met": met, "applies": applies}


@pytest.fixture
def work(tmp_path) -> Path:
    """A work folder as gpu.sh leaves it: found.json, steps.jsonl, two benchmark JSONs, a junit file."""
    work = tmp_path / "work"
    work.mkdir()
    found = {"python": "3.12.3", "executable": "/opt/py", "gpus": ["NVIDIA H200"], "driver": "580.159.04",
             "torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True, "triton": "3.6.0",
             "liger_kernel": "0.8.5"}
    (work / "found.json").write_text(json.dumps(found))
    losses = {"machine_info": {"node": "gpu-1"}, "commit_info": {"id": "0123456789abcdef"}, "datetime": "2026-12-02",
              "version": "5.1.0", "benchmarks": [
                  _loss_benchmark("ours", 0.512, [_target("ms", 0.512, 0.55), _target("speed-up over liger", 9.1, 10.0,
                                                                                      at_most=False)]),
                  _loss_benchmark("eager", 13.04, [])]}
    (work / "losses.json").write_text(json.dumps(losses))
    throughput = {"machine_info": {}, "commit_info": {}, "benchmarks": [
        _benchmark("test_ours[cuda]", 0.25, examples_per_second=4000.0, targets=[_target("x", 1.5, 2.0, False, False)])]}
    (work / "throughput.json").write_text(json.dumps(throughput))
    (work / "kernels.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.losses.t" name="a"/>'
        '<testcase classname="tests.losses.t" name="b"><failure message="x"/></testcase>'
        '<testcase classname="tests.losses.t" name="c"><skipped/></testcase></testsuite></testsuites>')
    steps = [
        {"step": "install", "status": "ran", "rc": None, "seconds": 41, "note": "n", "benchmark_json": None, "junit": None},
        {"step": "kernels", "status": "failed", "rc": 1, "seconds": 90, "note": "", "benchmark_json": None,
         "junit": str(work / "kernels.xml")},
        {"step": "losses", "status": "failed", "rc": 1, "seconds": 200, "note": "", "benchmark_json":
         str(work / "losses.json"), "junit": None},
        {"step": "throughput", "status": "ran", "rc": 0, "seconds": 30, "note": "", "benchmark_json":
         str(work / "throughput.json"), "junit": None},
        {"step": "replicate", "status": "skipped", "rc": None, "seconds": 0, "note": "--no-replicate",
         "benchmark_json": None, "junit": None},
    ]
    (work / "steps.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps))
    return work


def test_report_merges_every_step_into_one_benchmark_json(work, tmp_path) -> None:
    assert gpu_report.main(["write", str(work), str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert [b["kd_step"] for b in merged["benchmarks"]] == ["losses", "losses", "throughput"]
    assert merged["commit_info"] == {"id": "0123456789abcdef"} and merged["version"] == "5.1.0"
    summary = merged["kd_audit_summary"]
    assert summary["passed"] is False
    assert [s["step"] for s in summary["steps"]] == ["install", "kernels", "losses", "throughput", "replicate"]
    assert summary["steps"][1]["tests"] == {"passed": 1, "failed": 1, "skipped": 1, "failures": ["tests.losses.t::b"]}
    # The throughput target was missed but does not apply on this machine: only the Liger ratio counts.
    assert [(t["name"], t["measured"]) for t in summary["targets_missed"]] == [("speed-up over liger", 9.1)]


def test_report_table_shows_each_figure_and_what_missed(work, tmp_path) -> None:
    gpu_report.main(["write", str(work), str(tmp_path / "out")])
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "NVIDIA H200 (driver 580.159.04); torch 2.11.0 (CUDA 13.0), triton 3.6.0, liger-kernel 0.8.5" in table
    assert "commit 0123456789ab" in table and "Overall: FAILED" in table
    assert "| kernels | failed: 1 passed, 1 failed, 1 skipped | 90 |" in table
    assert "copy bandwidth in this run: 4274 GB/s" in table
    assert ("| KD | 8192 x 32000 | bfloat16 | ours | 0.512 | 4719 | 110 | 0 | 1e-07 | 0.0021 "
            "| ms 0.512 ms <= 0.55 ms: met; speed-up over liger 9.1x >= 10x: MISSED |") in table
    assert "| bench/x.py::test_ours[cuda] | 0.25 | examples_per_second 4000 | x 1.5x >= 2x: n/a here |" in table
    assert "- target missed: bench/x.py::test_forward_backward[kd-8192x32000-bfloat16-ours]: speed-up over liger" in table
    assert "- failed: tests.losses.t::b" in table


def test_report_of_a_clean_run_says_none_missed(work, tmp_path) -> None:
    steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
    clean = [s for s in steps if s["step"] in ("install", "throughput")]
    (work / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in clean))
    merged = gpu_report.write(work, tmp_path / "out")
    assert merged["kd_audit_summary"]["passed"] is True
    assert (tmp_path / "out" / "gpu.md").read_text().endswith("## Missed targets and failures\n\n- none\n")


def test_report_without_the_work_files_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_report.main(["write", str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "found.json (written by bench/gpu.sh), got no such file" in capsys.readouterr().err


def test_report_reads_a_json_pytest_benchmark_wrote(tmp_path) -> None:
    """The writer on a real pytest-benchmark JSON: the CPU eager case of bench_losses, run here."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/bench_losses.py", "-k", "ls-4096x4-float32 and eager", "-q",
         "-p", "no:cacheprovider", f"--benchmark-json={tmp_path / 'losses.json'}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    (tmp_path / "found.json").write_text(json.dumps(gpu_report.found()))
    (tmp_path / "steps.jsonl").write_text(json.dumps(
        {"step": "losses", "status": "ran", "rc": 0, "seconds": 5, "note": "", "benchmark_json":
         str(tmp_path / "losses.json"), "junit": None}) + "\n")
    merged = gpu_report.write(tmp_path, tmp_path / "out")
    (bench,) = merged["benchmarks"]
    assert bench["extra_info"]["provider"] == "eager" and bench["extra_info"]["n"] == 4096
    row = next(line for line in (tmp_path / "out" / "gpu.md").read_text().splitlines() if line.startswith("| LS |"))
    assert row.startswith("| LS | 4096 x 4 | float32 | eager | ") and row.endswith("| - |")  # no target on CPU


@pytest.mark.slow
def test_offline_install_step_makes_liger_importable(tmp_path) -> None:
    """``--install-only --wheels DIR``: the install step of a machine with no registry, on a wheel fetched here."""
    wheels = tmp_path / "wheels"
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                              str(wheels), "liger-kernel==0.8.5"], capture_output=True, text=True, timeout=300)
    if fetched.returncode != 0:
        pytest.skip(f"could not fetch liger-kernel from the package index: {fetched.stderr[-300:]}")
    result = run_command(str(tmp_path / "out"), "--install-only", "--wheels", str(wheels), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.startswith("kd-audit gpu: ")  # what it found comes first
    merged = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert merged["kd_audit_summary"]["steps"][0]["step"] == "install"
    assert merged["kd_audit_summary"]["steps"][0]["status"] == "ran"
    assert merged["kd_audit_summary"]["found"]["liger_kernel"] == "0.8.5"


TARGET_TESTS = '''
from types import SimpleNamespace

from kd_targets import Target


def test_speed(targets):
    bench = SimpleNamespace(extra_info={})
    targets(bench, Target("ms", 2.0, 1.0, " ms"), Target("far GPU", 9.0, 1.0, machine="h100/h200"))
    assert [t["applies"] for t in bench.extra_info["targets"]] == [True, False]


def test_memory(targets):
    targets(SimpleNamespace(extra_info={}), Target("peak", 2048.0, 1024.0, " MB", kind="memory"))


def test_met(targets):
    targets(SimpleNamespace(extra_info={}), Target("ratio", 25.0, 20.0, "x", at_most=False))
'''


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_kd_targets_mode_decides_speed_misses_only(mode, pytester) -> None:
    """bench/conftest.py's ``targets``: a missed speed target fails under enforce and is a warning plus a
    closing line under report; a missed memory target fails under both; a GPU target is not applied on CPU."""
    for name in ("conftest.py", "kd_targets.py"):
        pytester.makefile(".py", **{name.removesuffix(".py"): (ROOT / "bench" / name).read_text()})
    pytester.makepyfile(test_targets=TARGET_TESTS)
    result = pytester.runpytest(f"--kd-targets={mode}", "-p", "no:cacheprovider")
    if mode == "enforce":
        result.assert_outcomes(passed=1, failed=2)
        result.stdout.fnmatch_lines(["*missed: ms: 2 ms, target <= 1 ms*"])
    else:
        result.assert_outcomes(passed=2, failed=1, warnings=1)
        result.stdout.fnmatch_lines(["*speed targets missed (reported, not enforced*",
                                     "*test_targets.py::test_speed: ms: 2 ms, target <= 1 ms"])
    result.stdout.fnmatch_lines(["*missed: peak: 2048 MB, target <= 1024 MB*"])
