"""The report of ``bench/gpu.sh``: what the machine is, and one JSON plus one markdown table of every step.

Standard library only (it runs before and after the installs), with torch and triton imported lazily.

``python bench/gpu_report.py found FILE``
    print what this machine has (GPU name and driver, python, torch and its CUDA, triton, liger) as a few
    ``kd-audit gpu:`` lines, and write it to FILE as JSON.
``python bench/gpu_report.py write WORK OUT``
    read ``WORK/found.json`` and ``WORK/steps.jsonl`` (one JSON object a line, one per step:
    ``step``, ``status`` ran|failed|timed out|skipped, ``rc``, ``seconds``, ``note``, and the paths
    ``benchmark_json`` and ``junit`` where the step wrote them), and write ``OUT/gpu.json`` (pytest-benchmark's
    format: every step's ``benchmarks`` concatenated, plus ``kd_audit_summary``) and ``OUT/gpu.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PREFIX = "kd-audit gpu:"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def found() -> dict:
    """What this machine and this Python have: GPU, driver, torch (and the CUDA it was built for), triton, liger."""
    info: dict = {"python": platform.python_version(), "executable": sys.executable, "gpus": [], "driver": None,
                  "torch": _version("torch"), "torch_cuda": None, "cuda_available": False,
                  "triton": _version("triton"), "liger_kernel": _version("liger-kernel")}
    if shutil.which("nvidia-smi"):
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True)
        rows = [line.split(", ") for line in result.stdout.splitlines() if ", " in line]
        info["gpus"] = [name for name, _ in rows]
        info["driver"] = rows[0][1] if rows else None
    if info["torch"] is not None:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"] and not info["gpus"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def found_lines(info: dict) -> list[str]:
    gpus = ", ".join(info["gpus"]) or "no GPU found"
    return [
        f"{PREFIX} {gpus}; driver {info['driver'] or 'unknown'}",
        f"{PREFIX} python {info['python']} ({info['executable']}); torch {info['torch'] or 'not installed'}"
        f" (CUDA {info['torch_cuda'] or '-'}, available: {'yes' if info['cuda_available'] else 'no'});"
        f" triton {info['triton'] or 'not installed'}; liger-kernel {info['liger_kernel'] or 'not installed'}",
    ]


def junit_counts(path: Path) -> dict:
    """Passed, failed (failures + errors), skipped counts and the failed test names of a junit XML file."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def read_steps(work: Path) -> list[dict]:
    lines = (work / "steps.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def merge(info: dict, steps: list[dict]) -> dict:
    """One pytest-benchmark-format document: every step's benchmarks (tagged ``kd_step``) and the summary."""
    merged: dict = {"machine_info": {}, "commit_info": {}, "benchmarks": [], "datetime": None, "version": None}
    summary_steps, missed = [], []
    for step in steps:
        row = {key: step.get(key) for key in ("step", "status", "rc", "seconds", "note")}
        if step.get("junit") and Path(step["junit"]).is_file():
            row["tests"] = junit_counts(Path(step["junit"]))
        path = step.get("benchmark_json")
        if path and Path(path).is_file():
            document = json.loads(Path(path).read_text())
            for key in ("machine_info", "commit_info", "datetime", "version"):
                merged[key] = merged[key] or document.get(key)
            for bench in document.get("benchmarks", []):
                bench["kd_step"] = step["step"]
                merged["benchmarks"].append(bench)
                for target in bench.get("extra_info", {}).get("targets", []):
                    if target["applies"] and not target["met"]:
                        missed.append({"benchmark": bench["fullname"], **target})
        summary_steps.append(row)
    merged["kd_audit_summary"] = {
        "found": info, "steps": summary_steps, "targets_missed": missed,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(step["status"] in ("ran", "skipped") for step in summary_steps),
    }
    return merged


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _targets_cell(targets: list[dict]) -> str:
    cells = []
    for t in targets:
        relation = "<=" if t["at_most"] else ">="
        verdict = "met" if t["met"] else "MISSED"
        if not t["applies"]:
            verdict = "n/a here"
        cells.append(f"{t['name']} {_fmt(t['measured'])}{t['unit']} {relation} {_fmt(t['limit'])}{t['unit']}: {verdict}")
    return "; ".join(cells) or "-"


def _step_result(step: dict) -> str:
    tests = step.get("tests")
    result = step["status"]
    if tests:
        result += f": {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"
    return result


def markdown(merged: dict) -> str:
    """The tables of one run: steps, loss kernels per provider, the other benchmarks, and what missed."""
    summary = merged["kd_audit_summary"]
    info = summary["found"]
    commit = (merged.get("commit_info") or {}).get("id") or "unknown"
    lines = [
        f"# kd-audit GPU check, {summary['written']}", "",
        f"Machine: {', '.join(info['gpus']) or 'no GPU'} (driver {info['driver'] or 'unknown'}); "
        f"torch {info['torch']} (CUDA {info['torch_cuda'] or '-'}), triton {info['triton'] or '-'}, "
        f"liger-kernel {info['liger_kernel'] or 'not installed'}; commit {commit[:12]}. "
        f"Overall: {'passed' if summary['passed'] else 'FAILED'}.", "",
        "| step | result | s | note |", "|---|---|---|---|",
    ]
    for step in summary["steps"]:
        lines.append(f"| {step['step']} | {_step_result(step)} | {_fmt(step['seconds'])} | {step.get('note') or ''} |")
    failures = [name for step in summary["steps"] for name in step.get("tests", {}).get("failures", [])]
    losses = [b for b in merged["benchmarks"] if b.get("extra_info", {}).get("provider")]
    if losses:
        copy = {b["extra_info"]["copy_gbps"] for b in losses}
        lines += ["", f"## Loss kernels, forward + backward (copy bandwidth in this run: "
                      f"{', '.join(f'{c:.0f}' for c in sorted(copy))} GB/s)", "",
                  "| loss | N x V | dtype | provider | ms | GB/s | % of copy | extra MiB | loss err | grad err | targets |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in losses:
            e = b["extra_info"]
            lines.append(
                f"| {e['loss'].upper()} | {e['n']} x {e['v']} | {e['dtype'].removeprefix('torch.')} | {e['provider']} "
                f"| {_fmt(e['ms'])} | {_fmt(e['gbps'])} | {_fmt(e['pct_of_copy'], 3)} | {_fmt(e['extra_mib'])} "
                f"| {_fmt(e.get('loss_error'), 2)} | {_fmt(e.get('grad_error'), 2)} | {_targets_cell(e.get('targets', []))} |")
    others = [b for b in merged["benchmarks"] if not b.get("extra_info", {}).get("provider")]
    if others:
        lines += ["", "## Other benchmarks", "", "| benchmark | median s | figures | targets |", "|---|---|---|---|"]
        for b in others:
            extra = {k: v for k, v in b.get("extra_info", {}).items() if k != "targets"}
            figures = ", ".join(f"{k} {_fmt(v)}" for k, v in extra.items())
            lines.append(f"| {b['fullname']} | {_fmt(b['stats']['median'])} | {figures} "
                         f"| {_targets_cell(b.get('extra_info', {}).get('targets', []))} |")
    lines += ["", "## Missed targets and failures", ""]
    lines += [f"- target missed: {t['benchmark']}: {t['name']} {_fmt(t['measured'])}{t['unit']}, "
              f"target {'<=' if t['at_most'] else '>='} {_fmt(t['limit'])}{t['unit']}" for t in summary["targets_missed"]]
    lines += [f"- failed: {name}" for name in failures]
    if not summary["targets_missed"] and not failures:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def write(work: Path, out: Path) -> dict:
    """Write ``out/gpu.json`` and ``out/gpu.md`` from a work folder; return the merged document."""
    merged = merge(json.loads((work / "found.json").read_text()), read_steps(work))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(merged, indent=1) + "\n")
    (out / "gpu.md").write_text(markdown(merged))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_report.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    found_command = commands.add_parser("found", help="print and save what this machine has")
    found_command.add_argument("file", type=Path)
    write_command = commands.add_parser("write", help="write OUT/gpu.json and OUT/gpu.md from WORK")
    write_command.add_argument("work", type=Path)
    write_command.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "found":
        info = found()
        print("\n".join(found_lines(info)), flush=True)
        args.file.write_text(json.dumps(info, indent=1) + "\n")
        return 0
    for name in ("found.json", "steps.jsonl"):
        if not (args.work / name).is_file():
            parser.error(f"expected {args.work / name} (written by bench/gpu.sh), got no such file")
    merged = write(args.work, args.out)
    print(f"{PREFIX} wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}"
          f" ({len(merged['benchmarks'])} benchmarks, {'passed' if merged['kd_audit_summary']['passed'] else 'FAILED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
