"""Audits over training steps: the per-step reports of :class:`audit.integrations.KDAuditCallback`, read back
and drawn (``python -m audit report DIR``).

The callback writes one token-level compare report (``"kd-audit/compare/2"``) per evaluation into
``OUTPUT_DIR/kd_audit/step-NNNNNN.json``, with a ``training`` section (``step``, ``epoch``); each file is also
an ordinary compare report (``python -m audit report step-000050.json`` renders it alone). This module reads a
folder of them (:func:`read_training_audits`) and renders the metrics the callback logs
(:func:`step_metrics`) over the steps: a terminal table (:func:`render_training`), figures
(:func:`training_figures`: ``kl.png``, ``entropy-shift.png``, ``ece.png``, ``agreement.png``, each value with its
95% cluster-bootstrap CI as a band) and one self-contained HTML page (:func:`render_training_html`).
"""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from audit.errors import AuditError
from audit.report.format import format_value, verdict_sentence
from audit.report.html import CSP, CSS, _cell, _key_values, _table, _verdict
from audit.report.plots import STUDENT_COLORS, TEACHER_COLOR, _figure, _plain, png_bytes
from audit.report.schema import COMPARE_LM, load_report
from audit.report.terminal import VERDICT_STYLE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FOLDER = "kd_audit"  # under the trainer's output_dir
STEP_FILE = re.compile(r"step-(\d{6,})\.json")
PAIR_METRICS = ("kl", "kl_reverse", "entropy_shift", "agreement")
METRICS = ("kl", "kl_reverse", "entropy_shift", "ece", "agreement")
"""What the callback logs as ``kd_audit/<name>`` (with ``kd_audit/verdict``): the first four are the pair's, ECE
the student's."""
COLUMNS = (("kl", "KL(T||S)", "{:.4f}"), ("kl_reverse", "KL(S||T)", "{:.4f}"),
           ("entropy_shift", "entropy shift (S - T)", "{:+.4f}"), ("ece", "ECE", "{:.4f}"),
           ("agreement", "top-1 agreement", "{:.3f}"))
SHORT = {"entropy_shift": "ΔH (S-T)", "agreement": "agreement"}  # the terminal's labels: 80 columns hold the table
VERDICT_COLORS = {"inherits": "#17803d", "moves_away": "#c0262d", "inconclusive": "#9a6700"}
CAPTIONS = {
    "kl": "KL(teacher || student) and KL(student || teacher) per scored token (nats), 95% cluster-bootstrap CI bands",
    "entropy-shift": "mean entropy shift, student minus teacher (nats; below 0 = more confident than the teacher), "
                     "with the verdict of each step as the marker's colour",
    "ece": "expected calibration error of the student (the teacher's, dashed, for reference)",
    "agreement": "top-1 agreement of student and teacher on the held-out tokens",
}


def step_file(step: int) -> str:
    """The file name of the report at training step ``step``.

    >>> step_file(50)
    'step-000050.json'
    """
    return f"step-{step:06d}.json"


def step_metrics(report: dict) -> dict[str, float | str | None]:
    """The numbers the callback logs for one step's report: its (only) pair's ``kl``, ``kl_reverse``,
    ``entropy_shift`` and ``agreement``, the student's ``ece``, and the pair's ``verdict``; None where the report
    holds a statistic as undefined.

    >>> pair = {"student": "s", "verdict": "inherits", **{k: {"value": 0.5, "ci": None} for k in PAIR_METRICS}}
    >>> step_metrics({"pairs": [pair], "models": {"s": {"ece": 0.1}}})["ece"]
    0.1
    """
    pair = report["pairs"][0]
    return {**{k: pair[k]["value"] for k in PAIR_METRICS}, "ece": report["models"][pair["student"]]["ece"],
            "verdict": pair["verdict"]}


def read_training_audits(path: str | Path) -> list[dict]:
    """The step reports in ``path`` (a ``kd_audit`` folder, or the output folder holding one), by step.

    Raises:
        AuditError: no such folder, no ``step-NNNNNN.json`` in it, a file that is not a valid token-level compare
            report with a ``training.step`` equal to its name's, or reports of different teachers or students.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AuditError(f"expected a folder of step reports, got {folder}, which is not a folder; pass the "
                         "trainer's output_dir or its kd_audit folder")
    if not any(STEP_FILE.fullmatch(f.name) for f in folder.iterdir()) and (folder / FOLDER).is_dir():
        folder = folder / FOLDER
    files = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := STEP_FILE.fullmatch(f.name)))
    if not files:
        raise AuditError(f"expected step-NNNNNN.json reports of KDAuditCallback in {folder}, got none; pass the "
                         "trainer's output_dir or its kd_audit folder")
    reports = []
    for step, file in files:
        report = load_report(file)
        training = report.get("training")
        if report["schema"] != COMPARE_LM or len(report["pairs"]) != 1 or not isinstance(training, dict) \
                or training.get("step") != step:
            raise AuditError(f"expected {file} to be a token-level audit of one student at training step {step} "
                             "(what KDAuditCallback writes), got another report; keep only the callback's files in "
                             "that folder")
        reports.append(report)
    pairs = {(r["pairs"][0]["teacher"], r["pairs"][0]["student"]) for r in reports}
    if len(pairs) > 1:
        raise AuditError(f"expected the step reports of one run (one teacher and student), got {sorted(pairs)} in "
                         f"{folder}; render each run's folder on its own")
    return reports


def _header(reports: list[dict]) -> str:
    pair, data = reports[-1]["pairs"][0], reports[-1]["data"]
    return (f"{pair['teacher']} -> {pair['student']} on {data.get('name', 'held-out text')} ({data['n']} tokens, "
            f"{data['n_sequences']} sequences); {len(reports)} evaluations, steps {reports[0]['training']['step']} to "
            f"{reports[-1]['training']['step']}")


def _style(verdict: str) -> str:
    return VERDICT_STYLE.get(verdict, "bold")


def render_training(reports: list[dict], console: Console | None = None) -> None:
    """The metrics over steps as one terminal table, then the last step's verdict with its reason."""
    console = console or Console()
    table = Table(title=Text(f"kd-audit over training: {_header(reports)}"), title_justify="left",
                  caption="T = teacher, S = student; KL and entropy in nats per token; ΔH: mean entropy shift",
                  caption_justify="left")
    table.add_column("step", justify="right", overflow="fold")
    for key, label, _ in COLUMNS:
        table.add_column(SHORT.get(key, label), justify="right", overflow="fold")
    table.add_column("verdict", overflow="fold")
    for report in reports:
        values = step_metrics(report)
        table.add_row(str(report["training"]["step"]), *(format_value(values[k], fmt) for k, _, fmt in COLUMNS),
                      Text(values["verdict"].replace("_", " "), style=_style(values["verdict"])))
    console.print(table)
    pair = reports[-1]["pairs"][0]
    label, rest = verdict_sentence(pair["verdict"], pair["verdict_reason"])
    console.print(Text.assemble(f"At step {reports[-1]['training']['step']}: {pair['student']} ",
                                (label, _style(pair["verdict"])), rest))


def _series(reports: list[dict], statistic: str) -> tuple[list[int], list[float | None], list, list]:
    """(steps, values, CI lows, CI highs) of a pair statistic; None where undefined."""
    steps, values, lows, highs = [], [], [], []
    for report in reports:
        stat = report["pairs"][0][statistic]
        ci = stat.get("ci") or (None, None)
        steps.append(report["training"]["step"])
        values.append(stat["value"])
        lows.append(ci[0])
        highs.append(ci[1])
    return steps, values, lows, highs


def _nan(values: list) -> list[float]:
    """Matplotlib leaves a gap at NaN: an undefined statistic is not drawn."""
    return [float("nan") if v is None else v for v in values]


def _band(ax, reports: list[dict], statistic: str, color: str, label: str) -> None:
    steps, values, lows, highs = _series(reports, statistic)
    ax.plot(steps, _nan(values), marker="o", ms=3.5, color=color, label=label)
    ax.fill_between(steps, _nan(lows), _nan(highs), color=color, alpha=0.2, lw=0)


def training_figures(reports: list[dict]) -> dict[str, Figure]:
    """Every figure of the metrics over steps, keyed by file name (see the module docstring)."""
    pair = reports[0]["pairs"][0]
    student, teacher = _plain(pair["student"]), _plain(pair["teacher"])
    steps = [r["training"]["step"] for r in reports]
    figures = {}

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    _band(ax, reports, "kl", STUDENT_COLORS[0], f"KL({teacher} || {student})")
    _band(ax, reports, "kl_reverse", STUDENT_COLORS[1], f"KL({student} || {teacher})")
    ax.set_ylabel("nats per token")
    ax.set_title("KL divergence over training", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    figures["kl.png"] = fig

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    _band(ax, reports, "entropy_shift", STUDENT_COLORS[0], f"{student} - {teacher}")
    ax.axhline(0, ls="--", color="0.5", lw=1)
    for verdict in dict.fromkeys(r["pairs"][0]["verdict"] for r in reports):
        at = [(r["training"]["step"], r["pairs"][0]["entropy_shift"]["value"]) for r in reports
              if r["pairs"][0]["verdict"] == verdict and r["pairs"][0]["entropy_shift"]["value"] is not None]
        if at:
            ax.plot(*zip(*at), ls="none", marker="o", ms=7, mfc="none", mec=VERDICT_COLORS.get(verdict, "0.35"),
                    mew=1.6, label=verdict.replace("_", " "))
    ax.set_ylabel("mean entropy shift (nats)")
    ax.set_title("Entropy shift over training (lower = more confident)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    figures["entropy-shift.png"] = fig

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    ax.plot(steps, _nan([r["models"][pair["student"]]["ece"] for r in reports]), marker="o", ms=3.5,
            color=STUDENT_COLORS[0], label=student)
    ax.plot(steps, _nan([r["models"][pair["teacher"]]["ece"] for r in reports]), ls="--", color=TEACHER_COLOR,
            label=f"{teacher} (teacher)")
    ax.set_ylabel(f"ECE ({reports[0]['settings']['n_bins']} equal-width bins)")
    ax.set_title("Calibration over training", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    figures["ece.png"] = fig

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    _band(ax, reports, "agreement", STUDENT_COLORS[0], f"{student} vs {teacher}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1 agreement")
    ax.set_title("Top-1 agreement over training", fontsize=10)
    figures["agreement.png"] = fig
    from matplotlib.ticker import MaxNLocator

    for fig in figures.values():
        fig.axes[0].set_xlabel("training step")
        fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    return figures


def render_training_html(reports: list[dict]) -> str:
    """The metrics over steps as one self-contained HTML page (no scripts, figures inline), in the style of
    :func:`audit.report.html.render_html`."""
    rows = []
    for report in reports:
        values = step_metrics(report)
        rows.append(_cell(report["training"]["step"], num=True)
                    + "".join(_cell(format_value(values[k], fmt), num=True) for k, _, fmt in COLUMNS)
                    + f"<td>{_verdict(values['verdict'])}</td>")
    pair = reports[-1]["pairs"][0]
    _, rest = verdict_sentence(pair["verdict"], pair["verdict_reason"])
    figures = []
    for name, fig in training_figures(reports).items():
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}">'
                       f"<figcaption>{escape(name)}: {escape(CAPTIONS[name.removesuffix('.png')])}</figcaption></figure>")
    body = (f"<h1>kd-audit over training</h1><p class=\"meta\">{escape(_header(reports))}</p>"
            f"<h2>Verdict at step {reports[-1]['training']['step']}</h2><ul class=\"verdicts\"><li><strong>"
            f"{escape(pair['student'])}</strong>: {_verdict(pair['verdict'])}{escape(rest)}</li></ul>"
            + _table("Per evaluation (values; the CIs are in the step reports and the figures)",
                     ["step", *(label for _, label, _ in COLUMNS), "verdict"], rows)
            + "<h2>Figures</h2>" + "".join(figures)
            + "<h2>Run</h2>" + _key_values("Data", reports[-1]["data"])
            + _key_values("Settings", reports[-1]["settings"]) + _key_values("Versions", reports[-1]["versions"]))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>kd-audit over training</title><style>{CSS}</style></head><body>{body}</body></html>\n")
