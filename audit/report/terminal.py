"""The compare report in the terminal (rich tables), rendered from the report dict alone.

Readable at any width, 80 columns included (what a redirected or CI run gets): a name or a number is never
cut (unless it alone is wider than the console); a table wider than the console folds into several that each
repeat its key column (:func:`fitted_tables`); only labels and titles wrap, at spaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from audit.report.charts import terminal_charts
from audit.report.format import Format, format_value, perplexity, unit_word, verdict_sentence, with_ci

MODEL_ROWS = (
    ("n_sequences", "sequences", "{:d}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("nll", "NLL (nats)", "{:.3f}"),
    ("perplexity", "perplexity", perplexity),
    ("tokens_per_second", "tokens/s (own forward)", "{:,.0f}"),
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
VERDICT_STYLE = {"inherits": "bold green", "moves_away": "bold red", "inconclusive": "bold yellow",
                 "insufficient": "bold magenta"}


WIDE = 10_000  # no console: no folding


@dataclass
class Column:
    """One column of a terminal table: its header (lines split by ``\\n``) and cells. ``wrap``: may its text
    wrap at spaces (labels); names and numbers (``wrap=False``) are never wrapped or cut."""

    header: str
    cells: list[str | Text] = field(default_factory=list)
    justify: str = "right"
    wrap: bool = False

    def _parts(self, words: bool) -> list[str]:
        texts = [self.header, *(c.plain if isinstance(c, Text) else c for c in self.cells)]
        return [p for t in texts for p in (t.split() if words else t.split("\n"))]

    def width(self) -> int:
        """The fewest cells the column needs, padding included: its longest line, or (``wrap``) word."""
        return max(map(cell_len, self._parts(self.wrap)), default=1) + 2

    def natural(self) -> int:
        """The cells the column takes unwrapped, padding included."""
        return max(map(cell_len, self._parts(False)), default=1) + 2


def _table_width(columns: list[Column]) -> int:
    return sum(c.width() for c in columns) + len(columns) + 1  # the vertical rules and the two edges


def _widths(columns: list[Column], width: int) -> list[int]:
    """Each column's width (padding included) in a table of at most ``width`` cells: every column its natural
    width where they fit; else names and numbers theirs, each wrapping column at least its longest word, and
    the room left to the wrapping columns that lack the least first (a short label stays on one line)."""
    natural = [c.natural() for c in columns]
    room = width - len(columns) - 1
    if sum(natural) <= room:
        return natural
    widths = [c.width() for c in columns]
    spare = room - sum(widths)
    for i in sorted(range(len(columns)), key=lambda i: natural[i] - widths[i]):
        grow = max(0, min(spare, natural[i] - widths[i]))
        widths[i] += grow
        spare -= grow
    return widths


def fitted_tables(title: str, columns: list[Column], width: int | None, *, keys: int = 1) -> Group:
    """One table, or (where it needs more than ``width`` columns) several stacked, each with the first ``keys``
    columns and as many of the others, in order, as fit; the later ones titled ``"..., continued"``. A title is
    a line of its own above its table, wrapping at the console's width (not the table's).

    Every cell is text, not markup: a name with brackets prints as typed.

    >>> wide = [Column("metric", ["entropy"], "left", wrap=True)] + [Column(f"model-{i}", ["0.123"]) for i in range(9)]
    >>> [len(t.columns) for t in fitted_tables("numbers", wide, 80).renderables if isinstance(t, Table)]
    [7, 4]
    """
    width = WIDE if width is None else width
    key, rest = columns[:keys], columns[keys:]
    chunks: list[list[Column]] = [[]]
    for column in rest:
        if chunks[-1] and _table_width(key + chunks[-1] + [column]) > width:
            chunks.append([])
        chunks[-1].append(column)
    parts: list[RenderableType] = []
    for i, chunk in enumerate(chunks):
        parts.append(Text(title if i == 0 else f"{title}, continued", style="table.title"))
        table = Table()
        for column, cells in zip(key + chunk, _widths(key + chunk, width), strict=True):
            table.add_column(Text(column.header), justify=column.justify, no_wrap=not column.wrap, overflow="fold",
                             width=cells - 2)
        for row in zip(*(c.cells for c in key + chunk), strict=True):
            table.add_row(*(c if isinstance(c, Text) else Text(c) for c in row))
        parts.append(table)
    return Group(*parts)


TOKEN_LABELS = {"accuracy": "next-token accuracy"}  # a token audit's words for a row


def row_label(key: str, label: str, report: dict) -> str:
    """A row's label in this report: a token audit says what its accuracy is of."""
    return TOKEN_LABELS.get(key, label) if unit_word(report) == "tokens" else label


def model_cell(model: dict, key: str, fmt: Format) -> str:
    """A model's number, with its 95% CI where the report has one (``model["ci"][key]``; perplexity's is the
    exponential of NLL's)."""
    cis = model.get("ci") or {}
    ci = cis.get(key)
    if key == "perplexity" and "nll" in cis and cis["nll"] is not None:
        ci = [math.exp(min(x, 700.0)) for x in cis["nll"]]
    if ci is None or model.get(key) is None:
        return format_value(model.get(key), fmt)
    return with_ci({"value": model[key], "ci": ci}, fmt)


def models_table(report: dict, width: int | None = None) -> RenderableType:
    models = report["models"]
    rows = [(key, label, fmt) for key, label, fmt in MODEL_ROWS if any(key in m for m in models.values())]
    columns = [Column("metric", [row_label(key, label, report) for key, label, _ in rows], "left", wrap=True)]
    columns += [Column(f"{name}\n({m['role']})", [model_cell(m, key, fmt) for key, _, fmt in rows])
                for name, m in models.items()]
    cis = any(m.get("ci") for m in models.values())
    title = "Confidence and calibration per model" + (f" (value [95% CI, {bootstrap_method(report['data'])}])" if cis else "")
    return fitted_tables(title, columns, width)


def pairs_table(report: dict, width: int | None = None) -> RenderableType:
    level = "95%"
    method = bootstrap_method(report["data"])
    pairs = report["pairs"]
    rows = [(key, label, fmt) for key, label, fmt in PAIR_ROWS if any(key in pair for pair in pairs)]
    columns = [Column("statistic", [label for _, label, _ in rows], "left", wrap=True)]
    columns += [Column(f"{pair['teacher']} ->\n{pair['student']}", [with_ci(pair.get(key), fmt) for key, _, fmt in rows])
                for pair in pairs]
    return fitted_tables(f"Teacher -> student (value [{level} CI, {method}])", columns, width)


def bootstrap_method(data: dict) -> str:
    """How the report's intervals were drawn, with how many clusters they had.

    >>> bootstrap_method({"unit": "token", "n": 900, "n_sequences": 3})
    'cluster bootstrap over 3 sequences'
    >>> bootstrap_method({"n": 1057})
    'bootstrap over 1057 examples'
    """
    if data.get("unit") == "token":
        return f"cluster bootstrap over {data['n_sequences']} sequences"
    return f"bootstrap over {data['n']} examples"


def calibration_table(report: dict, width: int | None = None) -> RenderableType:
    """``--calibrate``: each model's fitted temperature and its numbers before -> after scaling; each pair's
    T* ratio and whether its verdict survives."""
    pairs = {p["student"]: p for p in report["pairs"]}
    models = report["models"]
    columns = [Column("model", list(models), "left"), Column("T*", [f"{m['temperature']:.3f}" for m in models.values()])]
    for key, header in (("nll", "NLL"), ("ece", "ECE"), ("smece", "smooth ECE")):
        columns.append(Column(header, [f"{format_value(m[key], '{:.4f}')} -> {format_value(m['calibrated'][key], '{:.4f}')}"
                                       for m in models.values()]))
    ratios, after = [], []
    for name in models:
        pair = pairs.get(name)
        ratios.append("-" if pair is None else with_ci({"value": pair["temperature_ratio"]["ratio"],
                                                        "ci": pair["temperature_ratio"]["ci"]}, "{:.3f}"))
        after.append("-" if pair is None else (f"{pair['calibrated']['verdict']}"
                                               + ("" if pair["calibrated"]["verdict_survives"] else " (changed)")))
    columns += [Column("T* / teacher's\n[95% CI]", ratios), Column("verdict after", after, "left")]
    calibration = report["calibration"]
    return fitted_tables(f"Temperature scaling (T* fitted on {calibration['data']}, n={calibration['n']}; "
                         "before -> after on the test data)", columns, width)


def direction_table(report: dict, width: int | None = None) -> RenderableType:
    """The paper's comparison: which way each student moved from the teacher and from each other."""
    moves = [(f"{p['student']} vs {p['teacher']} (teacher)", p["entropy_shift"]) for p in report["pairs"]]
    moves += [(f"{d['b']} vs {d['a']}", d["entropy_difference"]) for d in report["students"]]
    columns = [Column("comparison", [label for label, _ in moves], "left", wrap=True),
               Column("difference [95% CI]", [with_ci(stat, "{:+.4f}") for _, stat in moves]),
               Column("direction", [direction_label(stat) for _, stat in moves], "left", wrap=True)]
    return fitted_tables("Which way each student moved (mean entropy, nats; lower = more confident)", columns,
                         width)


def direction_label(stat: dict) -> str:
    if not stat.get("ci"):
        return "undefined"
    lo, hi = stat["ci"]
    if hi < 0:
        return "more confident"
    if lo > 0:
        return "less confident"
    return "no clear change"


ON_POLICY_PAIR_ROWS = (
    ("kl", "KL(teacher || student)", "{:.4f}"),
    ("kl_reverse", "KL(student || teacher)", "{:.4f}"),
    ("entropy_shift", "entropy shift (S - T)", "{:+.4f}"),
    ("agreement", "top-1 agreement", "{:.3f}"),
)


def _on_two_lines(stat: dict | None, fmt: str) -> str:
    """:func:`with_ci` with the interval on a line of its own (a narrow cell)."""
    return with_ci(stat, fmt).replace(" [", "\n[", 1)


def _model_stat(model: dict, key: str) -> dict:
    return {"value": model.get(key), "ci": model.get("ci", {}).get(key)}


def on_policy_table(report: dict, width: int | None = None) -> RenderableType:
    """``--generate``: each student's gap to the teacher on the reference text beside the same numbers on its own
    completions, the NLL of both models on each, and the verdicts; then, per student, the completion where it
    diverged most (the report holds more)."""
    on_policy, models = report["on_policy"], report["models"]
    teacher = next(name for name, m in models.items() if m["role"] == "teacher")
    labels = [label for _, label, _ in ON_POLICY_PAIR_ROWS]
    labels += ["student NLL (nats)", "teacher NLL (nats)", "verdict"]
    columns = [Column("statistic", labels, "left", wrap=True)]
    for pair in report["pairs"]:
        student, own = models[pair["student"]], pair["on_policy"]
        for view, stats, mine, theirs in (("reference", pair, student, models[teacher]),
                                          ("own text", own, student["on_policy"], own["teacher_summary"])):
            cells = [_on_two_lines(stats.get(key), fmt) for key, _, fmt in ON_POLICY_PAIR_ROWS]
            cells += [_on_two_lines(_model_stat(mine, "nll"), "{:.3f}"), _on_two_lines(_model_stat(theirs, "nll"), "{:.3f}")]
            cells.append(Text(stats["verdict"].replace("_", " "), style=VERDICT_STYLE.get(stats["verdict"], "")))
            columns.append(Column(f"{pair['student']}\n{view}", cells))
    sampling = on_policy.get("sampling") or f"temperature {on_policy['temperature']:g}, top-p {on_policy['top_p']:g}"
    title = (f"On the students' own text: {on_policy['n_prompts']} prompts ({on_policy['prompts']}) completed with up "
             f"to {on_policy['max_new_tokens']} new tokens, {sampling}, seed {on_policy['seed']}; value [95% cluster "
             "bootstrap CI by prompt]")
    lines: list[RenderableType] = [fitted_tables(title, columns, width)]
    for pair in report["pairs"]:
        worst = pair["on_policy"]["generations"][:1]
        if worst:
            g = worst[0]
            line = (f"{pair['student']} diverged most on {g['id']} (mean KL {format_value(g['kl'], '{:.3f}')}): "
                    + repr(" ".join(g["completion"].split())))
            room = WIDE if width is None else width
            lines.append(Text(line if len(line) <= room else line[:room - 3] + "..."))
    return Group(*lines)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None]) -> str:
    """One block character per value, scaled from 0 to the largest; a space for a missing one.

    >>> sparkline([0.0, 0.5, 1.0, None])
    '▁▅█ '
    """
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    return "".join(" " if v is None else SPARKS[min(len(SPARKS) - 1, round(v / top * (len(SPARKS) - 1)))]
                   for v in values)


def _range(buckets: list[dict]) -> str:
    means = [b["kl_mean"] for b in buckets if b["kl_mean"] is not None]
    return f"{sparkline([b['kl_mean'] for b in buckets])} {min(means):.3g}..{max(means):.3g}"


def divergence_lines(report: dict) -> Group:
    """Per pair, where its KL(teacher || student) is: quantiles, the top 1%'s share, the means by teacher entropy
    decile and by position (sparklines), the tokens that carry most of it and the context with the largest."""
    token = report["data"].get("unit") == "token"
    lines: list[Text] = []
    for pair in (p for p in report["pairs"] if "divergence" in p):
        d = pair["divergence"]
        q = d["kl_quantiles"]
        lines.append(Text(f"{pair['student']}: KL median {q['q50']:.3g}, p90 {q['q90']:.3g}, p99 {q['q99']:.3g} nats; "
                          f"the top 1% of {'tokens' if token else 'examples'} carry {d['kl_top1pct_share']:.1%} of it",
                          style="bold"))
        lines.append(Text(f"  by teacher entropy (low -> high deciles): {_range(d['by_teacher_entropy'])}"))
        if "by_position" in d:
            lines.append(Text(f"  by position in the window (start -> end): {_range(d['by_position'])}"))
        if d.get("top_tokens"):
            tokens = ", ".join(f"{t['token']!r} ({t['n']}x, {t['kl_total']:.3g})" for t in d["top_tokens"][:5])
            lines.append(Text(f"  most total KL on: {tokens}"))
        if d["top_contexts"]:
            c = d["top_contexts"][0]
            shown = (f"{c['context'][-60:]!r} -> [{c['target']!r}]" if token
                     else repr(c.get("text", c["id"])[:80]))
            lines.append(Text(f"  largest KL {c['kl']:.3g}: {shown} (teacher {c['teacher_top1']!r}, student "
                              f"{c['student_top1']!r})"))
    return Group(*lines)


def verdicts(report: dict) -> Group:
    """One line per pair: the student, its verdict (said once: the reason continues it) and the reason."""
    lines = []
    for pair in report["pairs"]:
        label, rest = verdict_sentence(pair["verdict"], pair["verdict_reason"])
        line = Text(f"{pair['student']}: ")
        line.append(label, style=VERDICT_STYLE[pair["verdict"]])
        line.append(rest)
        lines.append(line)
    return Group(*lines)


def render_compare(report: dict, console: Console | None = None) -> None:
    """Print the whole compare report: header, tables, verdicts, fitted to the console's width."""
    console = console or Console()
    width = console.width
    data = report["data"]
    settings = report["settings"]
    unit = f" tokens in {data['n_sequences']} sequences" if data.get("unit") == "token" else ""
    header = (f"data {data.get('name', '(predictions only)')}  n={data['n']}{unit}  "
              f"device {settings.get('device', '-')}  dtype {settings.get('dtype', '-')}  "
              f"bins {settings['n_bins']}  bootstrap {settings['n_bootstrap']} (seed {settings['seed']})")
    timing = report.get("timing")
    if timing:
        rate = timing["tokens_per_second"]
        header += (f"  evaluated in {timing['evaluation_seconds']:.1f} s"
                   + (f" ({rate:,.0f} tokens/s)" if rate else " (from the cache)"))
    console.print(Panel(Text(header), title="kd-audit compare", expand=False))
    console.print(models_table(report, width))
    console.print(pairs_table(report, width))
    if len(report["pairs"]) > 1:
        console.print(direction_table(report, width))
    if "calibration" in report:
        console.print(calibration_table(report, width))
    if any("divergence" in p for p in report["pairs"]):
        console.print(Panel(divergence_lines(report), title="Where each student diverges (KL(teacher || student))",
                            expand=False))
    if "on_policy" in report:
        console.print(on_policy_table(report, width))
    console.print(Panel(verdicts(report), title="Verdict: did the student inherit the teacher's confidence?",
                        expand=False))
    console.print(terminal_charts(report))
