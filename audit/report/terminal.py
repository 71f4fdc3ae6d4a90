"""The compare report in the terminal (rich tables), rendered from the report dict alone."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from audit.report.charts import terminal_charts
from audit.report.format import with_ci

MODEL_ROWS = (
    ("n_sequences", "sequences", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("nll", "NLL (nats)", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("brier", "Brier (multiclass, 0-2)", "{:.3f}"),
    ("entropy_mean", "entropy (nats)", "{:.3f}"),
    ("entropy_normalized", "entropy / log K", "{:.1%}"),
    ("maxprob_mean", "max probability", "{:.3f}"),
    ("margin_mean", "margin (top1 - top2)", "{:.3f}"),
    ("ece", "ECE (equal-width)", "{:.4f}"),
    ("ece_adaptive", "adaptive ECE (equal-mass)", "{:.4f}"),
    ("mce", "MCE", "{:.4f}"),
    ("ece_classwise", "class-wise ECE", "{:.4f}"),
    ("smece", "smooth ECE (bin-free)", "{:.4f}"),
    ("ece_debiased", "debiased L2 calibration error", "{:.4f}"),
    ("ece_sweep", "ECE-sweep", "{:.4f}"),
    ("ece_toplabel", "top-label ECE (per class)", "{:.4f}"),
    ("ks", "KS calibration error", "{:.4f}"),
    ("entropy_correct", "entropy | correct", "{:.3f}"),
    ("entropy_incorrect", "entropy | incorrect", "{:.3f}"),
    ("maxprob_correct", "max prob | correct", "{:.3f}"),
    ("maxprob_incorrect", "max prob | incorrect", "{:.3f}"),
)
PAIR_ROWS = (
    ("agreement", "top-1 agreement", "{:.3f}"),
    ("topk_overlap", "top-5 overlap", "{:.3f}"),
    ("kl", "KL(teacher || student)", "{:.4f}"),
    ("kl_reverse", "KL(student || teacher)", "{:.4f}"),
    ("entropy_shift", "entropy shift (S - T)", "{:+.4f}"),
    ("corr_entropy_pearson", "entropy corr. Pearson", "{:.3f}"),
    ("corr_entropy_spearman", "entropy corr. Spearman", "{:.3f}"),
    ("corr_maxprob_pearson", "max-prob corr. Pearson", "{:.3f}"),
    ("corr_maxprob_spearman", "max-prob corr. Spearman", "{:.3f}"),
)
VERDICT_STYLE = {"inherits": "bold green", "moves_away": "bold red", "inconclusive": "bold yellow"}


def format_value(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def models_table(report: dict) -> Table:
    models = report["models"]
    table = Table(title="Confidence and calibration per model", title_justify="left")
    table.add_column("metric")
    for name, m in models.items():
        table.add_column(f"{name}\n({m['role']})", justify="right")
    for key, label, fmt in MODEL_ROWS:
        if any(key in m for m in models.values()):
            table.add_row(label, *(format_value(m.get(key), fmt) for m in models.values()))
    return table


def pairs_table(report: dict) -> Table:
    level = "95%"
    method = "cluster bootstrap by sequence" if report["data"].get("unit") == "token" else "bootstrap"
    table = Table(title=f"Teacher -> student (value [{level} {method} CI])", title_justify="left")
    table.add_column("statistic")
    for pair in report["pairs"]:
        table.add_column(f"{pair['teacher']} -> {pair['student']}", justify="right")
    for key, label, fmt in PAIR_ROWS:
        if any(key in pair for pair in report["pairs"]):
            table.add_row(label, *(with_ci(pair.get(key), fmt) for pair in report["pairs"]))
    return table


def calibration_table(report: dict) -> Table:
    """``--calibrate``: each model's fitted temperature and its numbers before -> after scaling; each pair's
    T* ratio and whether its verdict survives."""
    table = Table(title=f"Temperature scaling (T* fitted on {report['calibration']['data']}, "
                        f"n={report['calibration']['n']}; before -> after on the test data)", title_justify="left")
    for column in ("model", "T*", "NLL", "ECE", "smooth ECE", "T* / teacher's [95% CI]", "verdict after"):
        table.add_column(column, justify="left" if column in ("model", "verdict after") else "right")
    pairs = {p["student"]: p for p in report["pairs"]}
    for name, m in report["models"].items():
        after = m["calibrated"]
        pair = pairs.get(name)
        ratio = with_ci({"value": pair["temperature_ratio"]["ratio"], "ci": pair["temperature_ratio"]["ci"]},
                        "{:.3f}") if pair else "-"
        survives = "-" if pair is None else (f"{pair['calibrated']['verdict']}"
                                              + ("" if pair["calibrated"]["verdict_survives"] else " (changed)"))
        table.add_row(name, f"{m['temperature']:.3f}", *(f"{m[k]:.4f} -> {after[k]:.4f}" for k in ("nll", "ece", "smece")),
                      ratio, survives)
    return table


def direction_table(report: dict) -> Table:
    """The paper's comparison: which way each student moved from the teacher and from each other."""
    table = Table(title="Which way each student moved (mean entropy, nats; lower = more confident)",
                  title_justify="left")
    table.add_column("comparison")
    table.add_column("difference [95% CI]", justify="right")
    table.add_column("direction")
    for pair in report["pairs"]:
        table.add_row(f"{pair['student']} vs {pair['teacher']} (teacher)", with_ci(pair["entropy_shift"], "{:+.4f}"),
                      direction_label(pair["entropy_shift"]))
    for diff in report["students"]:
        stat = diff["entropy_difference"]
        table.add_row(f"{diff['b']} vs {diff['a']}", with_ci(stat, "{:+.4f}"), direction_label(stat))
    return table


def direction_label(stat: dict) -> str:
    if not stat.get("ci"):
        return "undefined"
    lo, hi = stat["ci"]
    if hi < 0:
        return "more confident"
    if lo > 0:
        return "less confident"
    return "no clear change"


def verdicts(report: dict) -> Group:
    lines = []
    for pair in report["pairs"]:
        line = Text(f"{pair['student']}: ")
        line.append(pair["verdict"].replace("_", " "), style=VERDICT_STYLE[pair["verdict"]])
        line.append(f"  ({pair['verdict_reason']})")
        lines.append(line)
    return Group(*lines)


def render_compare(report: dict, console: Console | None = None) -> None:
    """Print the whole compare report: header, tables, verdicts."""
    console = console or Console()
    data = report["data"]
    settings = report["settings"]
    unit = f" tokens in {data['n_sequences']} sequences" if data.get("unit") == "token" else ""
    header = (f"data {data.get('name', '(predictions only)')}  n={data['n']}{unit}  "
              f"device {settings.get('device', '-')}  dtype {settings.get('dtype', '-')}  "
              f"bins {settings['n_bins']}  bootstrap {settings['n_bootstrap']} (seed {settings['seed']})")
    console.print(Panel(header, title="kd-audit compare", expand=False))
    console.print(models_table(report))
    console.print(pairs_table(report))
    if len(report["pairs"]) > 1:
        console.print(direction_table(report))
    if "calibration" in report:
        console.print(calibration_table(report))
    console.print(Panel(verdicts(report), title="Verdict: did the student inherit the teacher's confidence?",
                        expand=False))
    console.print(terminal_charts(report))
