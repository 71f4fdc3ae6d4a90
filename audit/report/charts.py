"""Compact charts for the terminal, made of block characters, to see a report's shape without a file.

Compare report: per model a reliability chart (one column per bin, two characters wide, the bar height
is the bin accuracy in 1/8 character steps, ``─`` marks the bin's mean confidence, an empty bin stays
blank) with a row of per-bin counts under it, and an entropy histogram. Replicate report: mean entropy
per arm as horizontal bars, ``█`` up to the CI's lower end, ``▒`` across the CI, ``┃`` at the mean.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.text import Text

from audit.errors import AuditError
from audit.report.format import format_value, unit_word
from audit.report.schema import kind_of

BLOCKS = " ▁▂▃▄▅▆▇█"
TEACHER_STYLE = "cyan"
STUDENT_STYLE = "magenta"


def column_cells(fraction: float | None, height: int) -> list[str]:
    """One vertical bar as block characters, top cell first.

    Args:
        fraction: bar height as a fraction of the full ``height`` (clipped to [0, 1]), or None for no bar.
        height: number of cells; each cell resolves 1/8 of a character.

    Returns:
        ``height`` one-character strings.

    Example:
        >>> column_cells(0.5, 2)
        [' ', '█']
        >>> column_cells(None, 2)
        [' ', ' ']
    """
    if fraction is None:
        return [" "] * height
    eighths = round(min(max(fraction, 0.0), 1.0) * height * 8)
    return [BLOCKS[min(max(eighths - 8 * row, 0), 8)] for row in reversed(range(height))]


def sparkline(values: list[float], vmax: float) -> str:
    """One line of block characters, ``value / vmax`` of a cell each; any value > 0 shows at least ``▁``."""
    out = []
    for v in values:
        level = 0 if v <= 0 or vmax <= 0 else max(1, round(8 * min(v / vmax, 1.0)))
        out.append(BLOCKS[level])
    return "".join(out)


def reliability_chart(model: dict, *, height: int = 8, width: int = 2, style: str = TEACHER_STYLE) -> Text:
    """A model's reliability diagram in ``height`` lines (plus axis, edge labels and per-bin counts), from the
    bin holding 1/K (no max probability is lower) to 1.

    Args:
        model: one entry of a compare report's ``"models"``, with its ``"reliability"``.
        width: characters per bin.

    Raises:
        AuditError: a model without ``"reliability"`` (a report made without labels).
    """
    if "reliability" not in model:
        raise AuditError("expected a model with 'reliability' bins, got one without; the report has no labels, "
                         "run compare with labelled data")
    rel = model["reliability"]
    # no max probability is below 1/K: start at the bin holding 1/K
    first = max(b for b, e in enumerate(rel["edges"][:-1]) if e <= 1.0 / model["num_classes"] + 1e-12)
    columns = [column_cells(acc, height) for acc in rel["accuracy"][first:]]
    # the cell holding each bin's mean confidence, counted from the bottom; None for an empty bin
    marks = [None if c is None else min(int(c * height), height - 1) for c in rel["confidence"][first:]]
    text = Text()
    for row in range(height):
        level = height - 1 - row
        text.append("1.0 ┤" if row == 0 else ("0.5 ┤" if level == height // 2 - 1 + height % 2 else "    │"),
                    style="dim")
        for cells, mark in zip(columns, marks, strict=True):
            if mark == level:
                text.append("─" * width, style=f"bold white on {style}" if cells[row] == "█" else "bold white")
            else:
                text.append(cells[row] * width, style=style)
        text.append("\n")
    n_bins = len(columns)
    text.append("0.0 └" + "─" * (n_bins * width) + "\n", style="dim")
    lo, hi = f"{rel['edges'][first]:.2f}", f"{rel['edges'][-1]:.2f}"
    text.append("     " + lo + " " * max(1, n_bins * width - len(lo) - len(hi)) + hi + "\n", style="dim")
    counts = sparkline(rel["count"][first:], max(rel["count"]))
    text.append("   n ", style="dim")
    text.append("".join(c * width for c in counts), style="dim")
    return text


def histogram_chart(histogram: dict, *, vmax: float, height: int = 4, style: str = TEACHER_STYLE) -> Text:
    """A histogram (``{"edges", "count"}`` of the report) as ``height`` lines of one-character columns."""
    columns = [column_cells(c / vmax if vmax > 0 else 0.0, height) for c in histogram["count"]]
    text = Text()
    for row in range(height):
        text.append("    │", style="dim")
        text.append("".join(cells[row] for cells in columns), style=style)
        text.append("\n")
    edges = histogram["edges"]
    lo, hi = f"{edges[0]:.2f}", f"{edges[-1]:.2f}"
    text.append("    └" + "─" * len(columns) + "\n", style="dim")
    text.append("     " + lo + " " * max(1, len(columns) - len(lo) - len(hi)) + hi, style="dim")
    return text


def _compare_charts(report: dict) -> RenderableType:
    models = report["models"]
    vmax = max(max(m["entropy_histogram"]["count"]) for m in models.values())
    panels = []
    for name, m in models.items():
        style = TEACHER_STYLE if m["role"] == "teacher" else STUDENT_STYLE
        parts = []
        if "reliability" in m:
            parts += [Text(f"accuracy vs confidence, ECE {format_value(m['ece'], '{:.4f}')}"),
                      reliability_chart(m, style=style)]
        parts += [Text("entropy (nats)"), histogram_chart(m["entropy_histogram"], vmax=vmax, style=style)]
        panels.append(Panel(Group(*parts), title=Text(f"{name} ({m['role']})"), expand=False))
    legend = Text("entropy histograms share one scale", style="dim")
    if any("reliability" in m for m in models.values()):
        legend = Text("reliability: bar = accuracy per confidence bin, ─ = its mean confidence, blank = empty bin, "
                      f"n = {unit_word(report)} per bin; " + legend.plain, style="dim")
    return Group(legend, Columns(panels))


def entropy_by_arm_chart(report: dict, *, width: int = 40) -> Text:
    """Mean entropy per arm of a replicate report as horizontal bars with their CIs."""
    arms = report["arms"]
    vmax = max(a["entropy"]["ci"][1] for a in arms) or 1.0
    label_width = max(len(a["arm"]) for a in arms)
    text = Text()
    for a in arms:
        value, (lo, hi) = a["entropy"]["value"], a["entropy"]["ci"]
        cells = ["█" if x < round(lo / vmax * width) else "▒" if x < round(hi / vmax * width) else " "
                 for x in range(width)]
        cells[min(round(value / vmax * width), width - 1)] = "┃"
        text.append(f"{a['arm']:<{label_width}} ")
        text.append("".join(cells), style={"erm": "blue", "ls": "yellow", "kd": "green"}.get(a["method"], ""))
        text.append(f" {value:.3f} [{lo:.3f}, {hi:.3f}]\n")
    text.append(f"{'':<{label_width}} 0{' ' * (width - 6)}{vmax:.3f}  mean entropy (nats)", style="dim")
    return text


class ArmBars:
    """:func:`entropy_by_arm_chart` as a renderable whose bars are as wide as the console leaves them (up to
    :data:`BAR_WIDTH`, at least :data:`MIN_BAR_WIDTH`): each arm's name, bar and numbers stay on one line."""

    BAR_WIDTH, MIN_BAR_WIDTH = 40, 8

    def __init__(self, report: dict) -> None:
        self.report = report
        self.label_width = max(cell_len(a["arm"]) for a in report["arms"])
        numbers = max(len(f" {a['entropy']['value']:.3f} [{a['entropy']['ci'][0]:.3f}, {a['entropy']['ci'][1]:.3f}]")
                      for a in report["arms"])
        self.other = self.label_width + 1 + max(numbers, len("0.000  mean entropy (nats)") - 5)

    def bar_width(self, max_width: int) -> int:
        return max(self.MIN_BAR_WIDTH, min(self.BAR_WIDTH, max_width - self.other))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.other + self.MIN_BAR_WIDTH, self.other + self.bar_width(options.max_width))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield entropy_by_arm_chart(self.report, width=self.bar_width(options.max_width))


def terminal_charts(report: dict) -> RenderableType:
    """The report's charts as one rich renderable: ``Console().print(terminal_charts(report))``.

    Args:
        report: a compare (``"kd-audit/compare/1"``) or replicate (``"kd-audit/recipes/replicate/1"``) report dict.

    Raises:
        AuditError: a dict without a known ``"schema"``.

    Example:
        >>> from rich.console import Console  # doctest: +SKIP
        >>> Console().print(terminal_charts(report))  # doctest: +SKIP
    """
    if kind_of(report) == "compare":
        return _compare_charts(report)
    return Panel(ArmBars(report), title="Mean entropy by arm (95% bootstrap CI over dev examples)", expand=False)
