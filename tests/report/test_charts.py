"""Terminal charts: block-character bars that encode the report's numbers."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from audit.errors import AuditError
from audit.report.charts import (
    BLOCKS,
    column_cells,
    entropy_by_arm_chart,
    histogram_chart,
    reliability_chart,
    sparkline,
    terminal_charts,
)


def _render(renderable, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.integers(1, 12))
def test_column_cells_encode_the_height(fraction: float, height: int) -> None:
    cells = column_cells(fraction, height)
    assert len(cells) == height
    eighths = sum(BLOCKS.index(c) for c in cells)
    assert abs(eighths / (8 * height) - fraction) <= 1 / (16 * height) + 1e-12
    levels = [BLOCKS.index(c) for c in reversed(cells)]  # bottom first: full cells, at most one partial, blanks
    filled = [lv for lv in levels if lv]
    assert levels[:len(filled)] == filled and all(lv == 8 for lv in filled[:-1])


def test_column_cells_edges() -> None:
    assert column_cells(None, 3) == [" "] * 3
    assert column_cells(0.0, 2) == [" ", " "]
    assert column_cells(1.0, 2) == ["█", "█"]
    assert column_cells(1.7, 1) == ["█"] and column_cells(-1.0, 1) == [" "]
    assert sparkline([0, 1, 50, 100], 100) == " ▁▄█"


def test_reliability_chart_is_the_bins(compare_report: dict) -> None:
    height, width = 8, 2
    teacher = compare_report["models"]["teacher"]["reliability"]
    teacher["accuracy"][9] = teacher["confidence"][9] = None  # an empty bin in the middle
    teacher["count"][9] = 0
    for m in compare_report["models"].values():
        rel = m["reliability"]
        first = 5  # K = 3 and 15 bins: no max probability below 1/3, the left edge of bin 5
        assert rel["edges"][first] == 1 / 3 and sum(rel["count"][:first]) == 0
        rel = {key: values[first:] for key, values in rel.items()}
        lines = reliability_chart(m, height=height, width=width).plain.split("\n")
        bars, count_line = lines[:height], lines[-1]
        assert len(count_line) == 5 + width * len(rel["count"])
        assert lines[height + 1].split() == [f"{rel['edges'][0]:.2f}", "1.00"]
        for b, (acc, conf, count) in enumerate(zip(rel["accuracy"], rel["confidence"], rel["count"], strict=True)):
            column = [line[5 + b * width: 5 + (b + 1) * width] for line in bars]
            if acc is None:  # an empty bin is blank: no bar, no confidence mark, no count
                assert column == [" " * width] * height
                assert count_line[5 + b * width] == " " and count == 0
                continue
            mark_row = height - 1 - min(int(conf * height), height - 1)
            assert column[mark_row] == "─" * width
            expected = column_cells(acc, height)
            assert [c for r, c in enumerate(column) if r != mark_row] == \
                   [c * width for r, c in enumerate(expected) if r != mark_row]
            assert count_line[5 + b * width] != " "


def test_histogram_chart_is_the_counts(compare_report: dict) -> None:
    hist = compare_report["models"]["teacher"]["entropy_histogram"]
    vmax = max(hist["count"])
    lines = histogram_chart(hist, vmax=vmax, height=4).plain.split("\n")
    for b, count in enumerate(hist["count"]):
        assert [line[5 + b] for line in lines[:4]] == column_cells(count / vmax, 4)


def test_terminal_charts_compare(compare_report: dict, unlabeled_report: dict) -> None:
    text = _render(terminal_charts(compare_report))
    for name, m in compare_report["models"].items():
        assert f"{name} ({m['role']})" in text
        assert f"ECE {m['ece']:.4f}" in text
    text = _render(terminal_charts(unlabeled_report))
    assert "entropy (nats)" in text and "ECE" not in text
    with pytest.raises(AuditError, match="expected a model with 'reliability'"):
        reliability_chart(unlabeled_report["models"]["teacher"])


def _arm(name: str, method: str, value: float, lo: float, hi: float) -> dict:
    return {"arm": name, "method": method, "entropy": {"value": value, "ci": [lo, hi]}}


def test_entropy_by_arm_chart_draws_known_bars() -> None:
    """Hand-drawn expectations: the largest CI end (0.8) spans all 40 columns, so 0.1 is 5 columns."""
    report = {"arms": [_arm("erm", "erm", 0.4, 0.2, 0.6), _arm("ls-arm", "ls", 0.7, 0.6, 0.8),
                       _arm("kd", "kd", 0.04, 0.0, 0.1)]}
    lines = entropy_by_arm_chart(report, width=40).plain.split("\n")
    assert lines[0] == "erm    " + "█" * 10 + "▒" * 10 + "┃" + "▒" * 9 + " " * 10 + " 0.400 [0.200, 0.600]"
    assert lines[1] == "ls-arm " + "█" * 30 + "▒" * 5 + "┃" + "▒" * 4 + " 0.700 [0.600, 0.800]"
    assert lines[2] == "kd     " + "▒▒┃▒▒" + " " * 35 + " 0.040 [0.000, 0.100]"
    assert lines[3] == "       0" + " " * 34 + "0.800  mean entropy (nats)"


def test_entropy_by_arm_chart_of_a_replication(replicate_report: dict) -> None:
    """On the report replicate wrote: one line per arm, its numbers printed, one marker each, the markers
    in the order of the values, and the widest CI reaching the last column."""
    width = 40
    arms = replicate_report["arms"]
    lines = entropy_by_arm_chart(replicate_report, width=width).plain.split("\n")[:len(arms)]
    label_width = max(len(a["arm"]) for a in arms)
    bars = [line[label_width + 1: label_width + 1 + width] for line in lines]
    for line, bar, a in zip(lines, bars, arms, strict=True):
        value, (lo, hi) = a["entropy"]["value"], a["entropy"]["ci"]
        assert line.startswith(a["arm"] + " ") and line.endswith(f"{value:.3f} [{lo:.3f}, {hi:.3f}]")
        assert bar.count("┃") == 1 and set(bar) <= {"█", "▒", "┃", " "}
    markers = [bar.index("┃") for bar in bars]
    values = [a["entropy"]["value"] for a in arms]
    ranked = sorted(zip(values, markers))
    assert all(m1 <= m2 for (_, m1), (_, m2) in zip(ranked, ranked[1:]))
    widest = max(range(len(arms)), key=lambda i: arms[i]["entropy"]["ci"][1])
    assert bars[widest].rstrip()[-1] in "▒┃" and len(bars[widest].rstrip()) == width
    assert all(a["arm"] in _render(terminal_charts(replicate_report)) for a in arms)


def test_terminal_charts_bad_schema() -> None:
    with pytest.raises(AuditError, match="expected a report with schema"):
        terminal_charts({"schema": "kd-audit/compare/0"})
