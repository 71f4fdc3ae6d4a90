"""Figures of a compare or replicate report, drawn from the report dict alone.

:func:`build_figures` returns matplotlib Figures keyed by file name (tests inspect their artists);
:func:`write_plots` saves them as PNGs. Figures are built with the object-oriented API on an Agg canvas,
never through pyplot, so no global backend is switched and nothing opens a window; matplotlib is imported
on the first call, not with this module.

Compare report (``"kd-audit/compare/1"``):

- ``reliability.png``: one reliability diagram per model with labels, side by side on shared axes; bars are
  the per-bin accuracy, dots the per-bin mean confidence, the dashed diagonal perfect calibration, and a
  lower panel the per-bin counts. An empty bin has no bar: it is never drawn as perfectly calibrated.
- ``histograms.png``: entropy and max-probability histograms, one step line per model.
- ``scatter-<student>.png``: teacher vs student max probability per example (the report's subsample),
  titled with the max-probability Pearson and Spearman correlations and their CIs (over all examples).

Replicate report (``"kd-audit/recipes/replicate/1"``):

- ``entropy-by-arm.png``: mean dev entropy per arm with its CI as error bars, per-seed values as dots.
- ``inheritance.png`` (when the report has teachers of several confidences): student vs teacher entropy.
"""

from __future__ import annotations

import io
import re
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from audit.atomic import write_atomic
from audit.errors import AuditError
from audit.report.format import format_value, with_ci
from audit.report.schema import kind_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_COLORS = {"erm": "#4c72b0", "ls": "#dd8452", "kd": "#55a868"}
TEACHER_COLOR = "#4c72b0"
STUDENT_COLORS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
DPI = 100


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _model_colors(models: dict) -> dict[str, str]:
    students = [name for name, m in models.items() if m["role"] != "teacher"]
    colors = {name: TEACHER_COLOR for name, m in models.items() if m["role"] == "teacher"}
    colors.update({name: STUDENT_COLORS[i % len(STUDENT_COLORS)] for i, name in enumerate(students)})
    return colors


def _plain(text: str) -> str:
    """Text shown as typed: matplotlib would read a pair of ``$`` as mathtext (and fail on a bad one)."""
    return str(text).replace("$", r"\$")


def reliability_figure(report: dict) -> Figure | None:
    """Reliability diagrams of every model with labels (None when no model has them)."""
    models = {name: m for name, m in report["models"].items() if "reliability" in m}
    if not models:
        return None
    colors = _model_colors(report["models"])
    fig = _figure(3.6 * len(models) + 0.6, 4.8)
    axes = fig.subplots(2, len(models), sharex=True, sharey="row", height_ratios=[3, 1], squeeze=False)
    for col, (name, m) in enumerate(models.items()):
        rel = m["reliability"]
        edges = rel["edges"]
        full = [b for b, acc in enumerate(rel["accuracy"]) if acc is not None]
        left = [edges[b] for b in full]
        width = [edges[b + 1] - edges[b] for b in full]
        top, bottom = axes[0, col], axes[1, col]
        top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
        top.bar(left, [rel["accuracy"][b] for b in full], width=width, align="edge", color=colors[name],
                edgecolor="white", alpha=0.85, label="accuracy")
        top.plot([edges[b] + w / 2 for b, w in zip(full, width, strict=True)],
                 [rel["confidence"][b] for b in full], ls="none", marker="o", ms=3.5, color="black",
                 label="mean confidence")
        top.set_title(f"{_plain(name)} ({m['role']})\naccuracy {format_value(m['accuracy'], '{:.3f}')}   "
                      f"ECE {format_value(m['ece'], '{:.4f}')}",
                      fontsize=9)
        bottom.bar(edges[:-1], rel["count"], width=[hi - lo for lo, hi in pairwise(edges)], align="edge",
                   color="0.55", edgecolor="white", label="count")
        bottom.set_xlabel("max probability (confidence)")
        # no max probability is below 1/K: start at the edge of the bin holding 1/K
        top.set_xlim(max(e for e in edges if e <= 1.0 / m["num_classes"] + 1e-12), edges[-1])
        top.set_ylim(0, 1)
    axes[0, 0].set_ylabel("accuracy in bin")
    axes[1, 0].set_ylabel("examples")
    axes[0, 0].legend(loc="upper left", fontsize=7, frameon=False)
    fig.suptitle(f"Reliability ({len(edges) - 1} equal-width bins; empty bins have no bar)", fontsize=10)
    return fig


def histograms_figure(report: dict) -> Figure:
    """Entropy and max-probability histograms of every model, one step line each."""
    models = report["models"]
    colors = _model_colors(models)
    fig = _figure(10, 3.8)
    ax_h, ax_m = fig.subplots(1, 2)
    for ax, key, xlabel in ((ax_h, "entropy_histogram", "entropy (nats)"),
                            (ax_m, "maxprob_histogram", "max probability")):
        for name, m in models.items():
            hist = m[key]
            ax.stairs(hist["count"], hist["edges"], label=f"{_plain(name)} ({m['role']})", color=colors[name],
                      lw=1.6, fill=m["role"] == "teacher", alpha=0.35 if m["role"] == "teacher" else 1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("examples")
    ax_h.set_title("Entropy per example (lower = more confident)", fontsize=10)
    ax_m.set_title("Max probability per example", fontsize=10)
    ax_m.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def scatter_figure(report: dict, pair: dict) -> Figure:
    """Teacher vs student max probability per example for one pair of the report."""
    points = pair["scatter"]
    x, y = points["teacher_maxprob"], points["student_maxprob"]
    lo = 1.0 / report["models"][pair["teacher"]]["num_classes"]
    fig = _figure(5.2, 5.2)
    ax = fig.subplots()
    ax.plot([lo, 1], [lo, 1], ls="--", color="0.5", lw=1)
    ax.scatter(x, y, s=8, alpha=0.5, color=_model_colors(report["models"])[pair["student"]], linewidths=0)
    ax.set_xlim(lo - 0.02, 1.02)
    ax.set_ylim(lo - 0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"max probability, teacher: {_plain(pair['teacher'])}")
    ax.set_ylabel(f"max probability, student: {_plain(pair['student'])}")
    ax.set_title(f"{_plain(pair['teacher'])} -> {_plain(pair['student'])}\n"
                 f"Pearson r {with_ci(pair['corr_maxprob_pearson'], '{:.2f}')}\n"
                 f"Spearman ρ {with_ci(pair['corr_maxprob_spearman'], '{:.2f}')}", fontsize=9)
    ax.text(0.98, 0.02, f"{len(x)} of {report['data']['n']} {'tokens' if report['data'].get('unit') == 'token' else 'examples'} shown; 95% CIs over all",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.35")
    return fig


def divergence_figure(report: dict, pair: dict) -> Figure:
    """Where one student diverges: mean KL(teacher || student) by decile of the teacher's entropy and (token
    audits) by position in the window, each bar labelled with its count."""
    divergence = pair["divergence"]
    panels = [("by_teacher_entropy", "teacher entropy decile (low -> high)")]
    if "by_position" in divergence:
        panels.append(("by_position", "position in the window"))
    fig = _figure(5.0 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    color = _model_colors(report["models"])[pair["student"]]
    for ax, (key, xlabel) in zip(axes, panels):
        buckets = divergence[key]
        labels = ([f"{b['entropy_lo']:.2g}-{b['entropy_hi']:.2g}" for b in buckets] if key == "by_teacher_entropy"
                  else [f"{b['position_lo']}-{b['position_hi']}" for b in buckets])
        ax.bar(range(len(buckets)), [b["kl_mean"] or 0.0 for b in buckets], color=color, alpha=0.85)
        for i, b in enumerate(buckets):
            ax.text(i, (b["kl_mean"] or 0.0), f"{b['n']}", ha="center", va="bottom", fontsize=6, color="0.35")
        ax.set_xticks(range(len(buckets)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean KL(teacher || student), nats")
    unit = "tokens" if report["data"].get("unit") == "token" else "examples"
    fig.suptitle(f"{_plain(pair['teacher'])} -> {_plain(pair['student'])}: where the KL is (counts of {unit} on bars)",
                 fontsize=9)
    return fig


def entropy_by_arm_figure(report: dict) -> Figure:
    """Mean entropy per arm of a replicate report, with CI error bars and per-seed dots."""
    arms = report["arms"]
    fig = _figure(max(5.0, 1.1 * len(arms) + 1.5), 4.6)
    ax = fig.subplots()
    xs = list(range(len(arms)))
    values = [a["entropy"]["value"] for a in arms]
    yerr = [[v - a["entropy"]["ci"][0] for v, a in zip(values, arms, strict=True)],
            [a["entropy"]["ci"][1] - v for v, a in zip(values, arms, strict=True)]]
    ax.bar(xs, values, yerr=yerr, capsize=5, color=[METHOD_COLORS.get(a["method"], "0.6") for a in arms],
           alpha=0.85, error_kw={"lw": 1.4}, label="mean entropy")
    seeds_x = [x for x, a in zip(xs, arms, strict=True) for _ in a["per_seed"]]
    seeds_y = [s["entropy"] for a in arms for s in a["per_seed"]]
    (seed_dots,) = ax.plot(seeds_x, seeds_y, ls="none", marker="o", ms=3.5, mfc="white", mec="black",
                           label="one seed")
    labels = [a["arm"] if a["setup"] in ("-", "") else f"{a['arm']}\n({a['setup']})" for a in arms]
    ax.set_xticks(xs, [_plain(label) for label in labels], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mean dev entropy (nats; lower = more confident)")
    ax.set_title(f"{_plain(report['task'])}: mean entropy by arm, seeds {report['seeds']}, 95% bootstrap CI over dev examples",
                 fontsize=10)
    from matplotlib.patches import Patch

    methods = [m for m in METHOD_COLORS if any(a["method"] == m for a in arms)]
    handles = [Patch(color=METHOD_COLORS[m], alpha=0.85, label=m.upper()) for m in methods]
    ax.set_ylim(0, 1.15 * max(max(a["entropy"]["ci"][1] for a in arms), max(seeds_y, default=0.0)))
    ax.legend(handles=[*handles, seed_dots], loc="upper center", ncol=len(handles) + 1, fontsize=8,
              frameon=False)
    return fig


def inheritance_figure(report: dict) -> Figure | None:
    """KD student vs teacher mean entropy (claim C2a); None without an ``inheritance`` section."""
    inh = report.get("inheritance")
    if not inh or not inh.get("teacher_entropy"):
        return None
    fig = _figure(4.8, 4.6)
    ax = fig.subplots()
    ax.plot(inh["teacher_entropy"], inh["student_entropy"], ls="none", marker="o", color=METHOD_COLORS["kd"])
    ax.set_xlabel("teacher mean entropy (nats)")
    ax.set_ylabel("KD student mean entropy (nats)")
    ax.set_title("Does the student inherit the teacher's confidence?\n"
                 f"Spearman ρ {with_ci(inh['spearman'], '{:.2f}')}", fontsize=9)
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _compare_figures(report: dict) -> dict[str, Figure]:
    figures = {}
    reliability = reliability_figure(report)
    if reliability is not None:
        figures["reliability.png"] = reliability
    figures["histograms.png"] = histograms_figure(report)
    for pair in report["pairs"]:
        name = f"scatter-{_slug(pair['student'])}.png"
        suffix = 2
        while name in figures:  # two names with the same slug ("a b", "a/b") keep separate files
            name = f"scatter-{_slug(pair['student'])}-{suffix}.png"
            suffix += 1
        figures[name] = scatter_figure(report, pair)
        if "divergence" in pair:
            figures[name.replace("scatter-", "divergence-", 1)] = divergence_figure(report, pair)
    return figures


def _replicate_figures(report: dict) -> dict[str, Figure]:
    figures = {"entropy-by-arm.png": entropy_by_arm_figure(report)}
    inheritance = inheritance_figure(report)
    if inheritance is not None:
        figures["inheritance.png"] = inheritance
    return figures


BUILDERS = {"compare": _compare_figures, "replicate": _replicate_figures}


def build_figures(report: dict) -> dict[str, Figure]:
    """Every figure of a report, keyed by its file name, without saving anything.

    Args:
        report: a compare (``"kd-audit/compare/1"``) or replicate (``"kd-audit/recipes/replicate/1"``) report dict,
            as built by :func:`audit.compare.compare_predictions` or read back from its JSON.

    Returns:
        ``{"reliability.png": Figure, ...}`` in a fixed order; see the module docstring for the names.

    Raises:
        AuditError: a dict without a known ``"schema"``.

    Example:
        >>> figures = build_figures(report)  # doctest: +SKIP
        >>> sorted(figures)  # doctest: +SKIP
        ['histograms.png', 'reliability.png', 'scatter-student.png']
    """
    return BUILDERS[kind_of(report)](report)


def png_bytes(fig: Figure) -> bytes:
    """One figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def write_plots(report: dict, folder: str | Path) -> list[Path]:
    """Save every figure of a report as a PNG into ``folder`` (created if needed), each written atomically.

    Returns:
        The written paths, in the order of :func:`build_figures`.

    Raises:
        AuditError: a dict without a known ``"schema"``, or a ``folder`` that is an existing file.

    Example:
        >>> write_plots(report, "plots")  # doctest: +SKIP
        [PosixPath('plots/reliability.png'), PosixPath('plots/histograms.png'), ...]
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AuditError(f"expected a folder for the plots, got the file {folder}; pass a folder path")
    figures = build_figures(report)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        write_atomic(folder / name, lambda tmp, fig=fig: tmp.write_bytes(png_bytes(fig)))
        paths.append(folder / name)
    return paths
