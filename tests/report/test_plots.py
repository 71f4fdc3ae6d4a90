"""Figures of compare and replicate reports: valid PNG files, drawn from the report's own numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import imread

from audit.errors import AuditError
from audit.report.plots import build_figures, png_bytes, write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compare_figures(_compare_once: dict) -> dict:
    # drawn from the JSON text, as `python -m audit report RUN.json` would (empty bins are null there)
    return build_figures(json.loads(json.dumps(_compare_once)))


def _bars(ax, label: str) -> BarContainer:
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    return container


def _check_png(path, min_width: int = 300, min_height: int = 300) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    height, width, channels = pixels.shape
    assert width >= min_width and height >= min_height and channels in (3, 4)
    assert len(np.unique(pixels.reshape(-1, channels), axis=0)) > 20, f"{path.name} is nearly blank"


def test_write_plots_compare_files(compare_report: dict, tmp_path) -> None:
    paths = write_plots(compare_report, tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == ["reliability.png", "histograms.png", "scatter-student-kd.png", "divergence-student-kd.png",
                     "scatter-student-ls-co.png", "divergence-student-ls-co.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files left
    for path in paths:
        _check_png(path)


def test_reliability_bars_are_bin_accuracies(compare_report: dict, compare_figures: dict) -> None:
    fig = compare_figures["reliability.png"]
    models = compare_report["models"]
    assert len(fig.axes) == 2 * len(models)  # a reliability row and a count row, one column per model
    for col, m in enumerate(models.values()):
        rel = m["reliability"]
        full = [b for b, acc in enumerate(rel["accuracy"]) if acc is not None]
        assert len(full) < len(rel["accuracy"]), "the fixture should have empty bins (K=3: none below 1/3)"
        bars = _bars(fig.axes[col], "accuracy")
        np.testing.assert_allclose([bar.get_height() for bar in bars], [rel["accuracy"][b] for b in full])
        np.testing.assert_allclose([bar.get_x() for bar in bars], [rel["edges"][b] for b in full])
        counts = _bars(fig.axes[len(models) + col], "count")
        np.testing.assert_allclose([bar.get_height() for bar in counts], rel["count"])
        (dots,) = [line for line in fig.axes[col].lines if line.get_label() == "mean confidence"]
        np.testing.assert_allclose(dots.get_ydata(), [rel["confidence"][b] for b in full])


def test_empty_bin_in_the_middle_is_drawn_empty(compare_report: dict) -> None:
    """An empty bin has no bar at all, not a bar at the diagonal (perfect calibration) or at zero."""
    teacher = compare_report["models"]["teacher"]["reliability"]
    middle = len(teacher["count"]) // 2 + 2
    assert teacher["accuracy"][middle] is not None
    teacher["accuracy"][middle] = teacher["confidence"][middle] = None
    teacher["count"][middle] = 0
    ax = build_figures(compare_report)["reliability.png"].axes[0]
    left_edges = [bar.get_x() for bar in _bars(ax, "accuracy")]
    assert teacher["edges"][middle] not in left_edges
    assert len(left_edges) == sum(acc is not None for acc in teacher["accuracy"])


def test_histograms_are_the_json_counts(compare_report: dict, compare_figures: dict) -> None:
    ax_entropy, ax_maxprob = compare_figures["histograms.png"].axes
    for ax, key in ((ax_entropy, "entropy_histogram"), (ax_maxprob, "maxprob_histogram")):
        assert len(ax.patches) == len(compare_report["models"])
        for patch, m in zip(ax.patches, compare_report["models"].values(), strict=True):
            values, edges, _ = patch.get_data()
            np.testing.assert_array_equal(values, m[key]["count"])
            np.testing.assert_allclose(edges, m[key]["edges"])


def test_scatter_points_and_title(compare_report: dict, compare_figures: dict) -> None:
    for pair, name in zip(compare_report["pairs"], ["scatter-student-kd.png", "scatter-student-ls-co.png"],
                          strict=True):
        ax = compare_figures[name].axes[0]
        (points,) = ax.collections
        expected = np.column_stack([pair["scatter"]["teacher_maxprob"], pair["scatter"]["student_maxprob"]])
        np.testing.assert_allclose(points.get_offsets(), expected)
        title = ax.get_title()
        for key in ("corr_maxprob_pearson", "corr_maxprob_spearman"):
            lo, hi = pair[key]["ci"]
            assert f"{pair[key]['value']:.2f} [{lo:.2f}, {hi:.2f}]" in title


def test_unlabeled_report_has_no_reliability(unlabeled_report: dict) -> None:
    names = list(build_figures(unlabeled_report))
    assert names == ["histograms.png", "scatter-student-kd.png", "divergence-student-kd.png",
                     "scatter-student-ls-co.png", "divergence-student-ls-co.png"]


def test_divergence_bars_are_the_reports_means(compare_report: dict, compare_figures: dict) -> None:
    for pair, name in zip(compare_report["pairs"], ["divergence-student-kd.png", "divergence-student-ls-co.png"],
                          strict=True):
        (ax,) = compare_figures[name].axes  # a classifier: by teacher entropy only, no positions
        heights = [bar.get_height() for bar in ax.patches]
        assert heights == pytest.approx([b["kl_mean"] for b in pair["divergence"]["by_teacher_entropy"]])


def test_names_with_dollars_and_colliding_slugs(compare_report: dict) -> None:
    pair = compare_report["pairs"][0]
    twin = {**pair, "student": "a/b $x"}
    compare_report["pairs"] = [{**pair, "student": "a b $x"}, twin]
    compare_report["models"]["a b $x"] = compare_report["models"]["a/b $x"] = compare_report["models"]["student-kd"]
    figures = build_figures(compare_report)
    assert [n for n in figures if n.startswith("scatter")] == ["scatter-a-b-x.png", "scatter-a-b-x-2.png"]
    assert png_bytes(figures["scatter-a-b-x.png"])[:8] == PNG_SIGNATURE  # a lone "$" is not read as mathtext


def test_entropy_by_arm(replicate_report: dict, tmp_path) -> None:
    paths = write_plots(replicate_report, tmp_path)
    assert [p.name for p in paths] == ["entropy-by-arm.png", "inheritance.png"]
    for path in paths:
        _check_png(path)
    arms = replicate_report["arms"]
    ax = build_figures(replicate_report)["entropy-by-arm.png"].axes[0]
    bars = _bars(ax, "mean entropy")
    np.testing.assert_allclose([bar.get_height() for bar in bars], [a["entropy"]["value"] for a in arms])
    (whiskers,) = bars.errorbar.lines[2]
    np.testing.assert_allclose([[seg[0][1], seg[1][1]] for seg in whiskers.get_segments()],
                               [a["entropy"]["ci"] for a in arms])
    (seeds,) = [line for line in ax.lines if line.get_label() == "one seed"]
    np.testing.assert_allclose(seeds.get_ydata(), [s["entropy"] for a in arms for s in a["per_seed"]])
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == [a["arm"] for a in arms]


def test_inheritance_points(replicate_report: dict) -> None:
    ax = build_figures(replicate_report)["inheritance.png"].axes[0]
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_xdata(), replicate_report["inheritance"]["teacher_entropy"])
    np.testing.assert_allclose(line.get_ydata(), replicate_report["inheritance"]["student_entropy"])
    del replicate_report["inheritance"]
    assert list(build_figures(replicate_report)) == ["entropy-by-arm.png"]


def test_bad_input(compare_report: dict, tmp_path) -> None:
    with pytest.raises(AuditError, match="expected a report with schema"):
        build_figures({"schema": "kd-audit/other/9"})
    with pytest.raises(AuditError, match="expected a report with schema"):
        build_figures([1, 2])
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditError, match="expected a folder"):
        write_plots(compare_report, tmp_path / "file")
