"""The terminal report as a redirected or CI run gets it (80 columns, no tty): no name cut, tables folded
where they do not fit; and each pair's verdict said once (issue 26).

The reports are the stored real ones of tests/expected/ (the default run, ``--calibrate --model-cis``, the
fixture token audit, a tiny replication), rendered by ``python -m audit report`` with ``COLUMNS=80``.
"""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pytest
from audit_cli import cli
from rich.console import Console

from audit.report.html import render_html
from audit.report.terminal import render_compare

EXPECTED = Path(__file__).resolve().parents[1] / "expected"
WIDTH = 80


def _stored(name: str) -> dict:
    report = json.loads((EXPECTED / f"{name}.json").read_text())
    report.setdefault("versions", {"kd-audit": "0.0.0"})  # replicate summaries are stored without theirs
    return report


def _at_80(report: dict, tmp_path: Path, capsys, monkeypatch) -> str:
    """``python -m audit report`` of the report with COLUMNS=80, as a redirected run prints it."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    code, out, err = cli(capsys, "report", str(path))
    assert code == 0, err
    return out


def _renamed(report: dict, names: dict[str, str]) -> dict:
    """The report with its models renamed, as ``--name`` would have named them."""
    out = copy.deepcopy(report)
    out["models"] = {names[n]: m for n, m in report["models"].items()}
    for pair in out["pairs"]:
        pair["teacher"], pair["student"] = names[pair["teacher"]], names[pair["student"]]
    for diff in out["students"]:
        diff["a"], diff["b"] = names[diff["a"]], names[diff["b"]]
    return out


def _sections(text: str, titles: list[str]) -> dict[str, str]:
    """The text from each title to the next (titles in the order they are printed)."""
    starts = [text.index(title) for title in titles]
    return {title: text[start:end] for title, start, end in zip(titles, starts, [*starts[1:], len(text)])}


COMPARE_TITLES = ["Confidence and calibration per model", "Teacher -> student", "Verdict: did the student",
                  "reliability: bar"]


@pytest.mark.parametrize("name", ["compare-default", "lm-fixture", "compare-calibrated"])
def test_every_model_name_appears_whole_at_80_columns(name, tmp_path, capsys, monkeypatch):
    report = _stored(name)
    text = _at_80(report, tmp_path, capsys, monkeypatch)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert "…" not in text, "something was cut to fit 80 columns"
    titles = COMPARE_TITLES[:2] + (["Temperature scaling"] if "calibration" in report else []) + COMPARE_TITLES[2:]
    for title, section in _sections(text, titles).items():
        names = [p["student"] for p in report["pairs"]] if title.startswith("Verdict") else list(report["models"])
        for model in names:
            assert re.search(rf"(?<![\w-]){re.escape(model)}(?![\w-])", section), (model, title, section)
    if "calibration" in report:  # every column of the temperature table is there, its header words whole
        for header in ("T*", "NLL", "smooth", "T* / teacher's", "verdict after"):
            assert header in text


LONG_NAMES = {"teacher": "Qwen2.5-7B-Instruct-teacher", "student-ce": "SmolLM2-135M-Instruct-distilled-ce",
              "student-ls": "SmolLM2-135M-Instruct-distilled-ls", "student-kd": "SmolLM2-135M-Instruct-distilled-kd"}


@pytest.mark.parametrize("name", ["compare-default", "compare-calibrated"])
def test_long_model_names_are_never_cut_or_folded_at_80_columns(name, tmp_path, capsys, monkeypatch):
    """Hub-style names (up to 34 characters, four models): every place a name starts, the whole name follows
    on the same line (no ellipsis, no name folded over two lines), and it starts in every table."""
    report = _renamed(_stored(name), LONG_NAMES)
    text = _at_80(report, tmp_path, capsys, monkeypatch)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    names = list(LONG_NAMES.values())
    starts = [m.start() for m in re.finditer(r"Qwen2\.5|SmolLM2", text)]
    for start in starts:
        assert any(text.startswith(n, start) for n in names), text[start:start + 40]
    titles = COMPARE_TITLES[:2] + (["Temperature scaling"] if "calibration" in report else []) + COMPARE_TITLES[2:]
    for title, section in _sections(text, titles).items():
        expected = names[1:] if title.startswith("Verdict") else names
        assert all(n in section for n in expected), (title, section)


def test_a_table_too_wide_for_80_columns_folds_into_several(tmp_path, capsys, monkeypatch):
    """The temperature table of four models (seven columns) does not fit 80 columns: it folds into tables
    that each repeat the model column, and together hold every model's every number, whole."""
    report = _stored("compare-calibrated")
    text = _at_80(report, tmp_path, capsys, monkeypatch)
    section = _sections(text, ["Temperature scaling", "Verdict: did the student"])["Temperature scaling"]
    for name, m in report["models"].items():
        rows = [line for line in section.splitlines() if re.match(rf"│ {re.escape(name)} +│", line)]
        assert len(rows) >= 2, (name, section)  # one row per part of the folded table
        cells = " ".join(rows)
        assert f"{m['temperature']:.3f}" in cells
        for key in ("nll", "ece", "smece"):
            assert f"{m[key]:.4f} -> {m['calibrated'][key]:.4f}" in cells, (name, key, cells)
    for pair in report["pairs"]:
        ratio = pair["temperature_ratio"]
        row = " ".join(line for line in section.splitlines() if line.startswith(f"│ {pair['student']} "))
        assert f"{ratio['ratio']:.3f} [{ratio['ci'][0]:.3f}, {ratio['ci'][1]:.3f}]" in row


def test_replicate_arm_names_appear_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    summary = _stored("replicate-tiny")
    text = _at_80(summary, tmp_path, capsys, monkeypatch)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert "…" not in text
    arms_table = text[:text.index("Claims (docs/CLAIMS.md")]
    chart = text[text.index("Mean entropy by arm"):]
    for arm in summary["arms"]:
        for section in (arms_table, chart):
            assert re.search(rf"(?<![\w.-]){re.escape(arm['arm'])}(?![\w.-])", section), arm["arm"]
        value, (lo, hi) = arm["entropy"]["value"], arm["entropy"]["ci"]
        # the chart's line of an arm: its name, its bar and its numbers on one line
        assert re.search(rf"│ {re.escape(arm['arm'])} +[█▒┃ ]+ {value:.3f} \[{lo:.3f}, {hi:.3f}\] *│", chart), arm


# ---- the verdict said once ------------------------------------------------------------------------------------

def _plain_terminal(report: dict, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    render_compare(report, console)
    return console.export_text()


def _verdict_lines(text: str) -> dict[str, str]:
    panel = text[text.index("Verdict: did the student"):]
    lines = {}
    for line in panel.splitlines()[1:]:
        inner = line.strip("│ ")
        if inner.startswith("╰"):
            break
        match = re.match(r"([\w-]+): ", inner)
        if match:
            lines[match.group(1)] = inner
    return lines


# By hand, from the stored default report's verdicts and reasons (audit.stats.inheritance words them).
SAID_ONCE = {
    "student-ce": ("moves away", "student-ce: moves away: less confident than the teacher overall: Spearman"),
    "student-ls": ("moves away", "student-ls: moves away: less confident than the teacher overall: Spearman"),
    "student-kd": ("inconclusive", "student-kd: inconclusive: a CI crosses a threshold: Spearman(entropy) 0.83"),
}


def test_the_terminal_says_each_verdict_once():
    lines = _verdict_lines(_plain_terminal(_stored("compare-default")))
    assert set(lines) == set(SAID_ONCE)
    for student, (label, start) in SAID_ONCE.items():
        assert lines[student].startswith(start), lines[student]
        assert lines[student].count(label) == 1, lines[student]


def test_the_html_says_each_verdict_once():
    page = render_html(_stored("compare-default"))
    items = {re.sub(r"<[^>]+>", "", li).split(":")[0]: re.sub(r"<[^>]+>", "", li)
             for li in re.findall(r"<li>(.*?)</li>", page)}
    for student, (label, start) in SAID_ONCE.items():
        assert items[student].startswith(start.replace("'", "&#x27;")), items[student]
        assert items[student].count(label) == 1


def test_a_reason_that_does_not_repeat_the_verdict_stays_in_parentheses():
    report = _stored("compare-default")
    pair = report["pairs"][0]
    pair["verdict"], pair["verdict_reason"] = "inconclusive", "cannot decide: KL is undefined (constant)"
    line = _verdict_lines(_plain_terminal(report))[pair["student"]]
    assert line == f"{pair['student']}: inconclusive (cannot decide: KL is undefined (constant))"
    assert "inconclusive (cannot decide: KL is undefined (constant))" in re.sub(r"<[^>]+>", "", render_html(report))
