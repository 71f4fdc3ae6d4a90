"""A replicate summary in the terminal (rich tables), rendered from the summary dict alone: one task's
grid (:func:`audit.recipes.replicate.replicate`, and the LM grid's common part), the LM grid's own numbers
(:func:`render_lm_summary`), or a ``--task all`` aggregate."""

from __future__ import annotations

from audit.report.charts import terminal_charts
from audit.report.schema import REPLICATE_ALL as ALL_SCHEMA
from audit.stats.claims import VERDICTS


def render_summary(summary: dict, console=None) -> None:
    """The paper's table (mean dev entropy and accuracy per arm, with CIs) and the claim verdicts; for a
    ``--task all`` summary, the tables across tasks (:func:`render_aggregate`)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if summary["schema"] == ALL_SCHEMA:
        render_aggregate(summary, console)
        return
    seeds = len(summary["seeds"])
    table = Table(title=f"{summary['task']} ({summary['profile']} profile, {seeds} seed{'s' * (seeds > 1)}): "
                        "mean dev entropy and accuracy, 95% bootstrap CI", title_justify="left")
    fitted = all("temperature" in arm for arm in summary["arms"])  # T* per arm: the classifier grid
    numbers = ("entropy (nats)", "accuracy", *(("T* (fitted on dev)",) if fitted else ()))
    for column in ("arm", "method", "setup", "teacher", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    fmt = lambda s: f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"  # noqa: E731
    for arm in summary["arms"]:
        teacher = arm["teacher"] or "-"
        if arm["teacher_temperature"] != 1.0:
            teacher += f" / {arm['teacher_temperature']:g}"
        table.add_row(arm["arm"], arm["method"], arm["setup"], teacher, fmt(arm["entropy"]), fmt(arm["accuracy"]),
                      *((fmt(arm["temperature"]),) if fitted else ()))
    console.print(table)
    exploratory = any(c["claim"] == "X1" for c in summary["claims"])
    claims = Table(title="Claims (docs/CLAIMS.md" + ("; X1 is exploratory, a question the paper did not ask)"
                                                        if exploratory else ")"), title_justify="left")
    for column in ("claim", "statistic", "value [95% CI]", "verdict"):
        claims.add_column(column)
    style = {"holds": "green", "fails": "red", "inconclusive": "yellow", "negligible": "dim"}
    for c in summary["claims"]:
        claims.add_row(c["claim"], c["statistic"], f"{c['value']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]",
                       f"[{style[c['verdict']]}]{c['verdict']}[/]")
    console.print(claims)
    console.print("overall: " + ", ".join(f"{c} {v}" for c, v in summary["claim_verdicts"].items()))
    if summary.get("untrained_arms"):
        console.print(f"[bold red]warning:[/] these arms did not learn (near-uniform predictions or majority-class "
                      f"accuracy): {', '.join(summary['untrained_arms'])}; verdicts that involve them are not evidence "
                      "for or against a claim: train longer (--profile full) or on more data")
    survival = {True: "direction survives", False: "direction lost", None: "no direction in-domain"}
    for task, shift in summary.get("shift", {}).items():
        console.print(f"audited on {task} ({shift['split']}): " + ", ".join(
            f"{c} {v} ({survival[shift['survives'][c]]})" for c, v in shift["claim_verdicts"].items()))
        if shift.get("at_majority_arms"):
            console.print(f"  on {task}, no better than its majority class: {', '.join(shift['at_majority_arms'])}")
    console.print(terminal_charts(summary))


def render_aggregate(summary: dict, console) -> None:
    """Mean dev entropy per arm and task with CIs, and per claim its verdict counts over tasks and runs."""
    from rich.table import Table

    tasks = summary["tasks"]
    table = Table(title=f"{len(tasks)} tasks ({summary['profile']} profile, {len(summary['seeds'])} seed(s)): mean dev "
                        "entropy (nats), 95% bootstrap CI", title_justify="left")
    for column in ("arm", *tasks):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in summary["entropy"]:
        table.add_row(arm["arm"], *(f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
                                    for s in (arm["by_task"][t] for t in tasks)))
    console.print(table)
    claims = Table(title="Claims (docs/CLAIMS.md): tasks (task x seed runs) per verdict", title_justify="left")
    for column in ("claim", *VERDICTS, *tasks):
        claims.add_column(column)
    for claim, entry in summary["claims"].items():
        claims.add_row(claim, *(f"{entry['tasks'][v]} ({entry['runs'][v]})" for v in VERDICTS),
                       *(entry["by_task"].get(t, "-") for t in tasks))
    console.print(claims)
    for claim, entry in summary["claims"].items():
        for eval_task, by_task in entry["survives"].items():
            kept = [t for t, v in by_task.items() if v]
            lost = [t for t, v in by_task.items() if v is False]
            console.print(f"{claim} audited on {eval_task}: direction survives on {len(kept)} task(s) "
                          f"{', '.join(kept)}; lost on {len(lost)} {', '.join(lost)}")
    untrained = {t: arms for t, arms in summary["untrained_arms"].items() if arms}
    if untrained:
        console.print("[bold red]warning:[/] arms that did not learn: " +
                      "; ".join(f"{t}: {', '.join(arms)}" for t, arms in untrained.items()))


def render_lm_summary(summary: dict, console=None) -> None:
    """The LM replication's (:func:`audit.recipes.replicate_lm.replicate_lm`) table and claims
    (:func:`render_summary`), then what only the LM grid has: perplexities against the unigram baseline, and the
    reverse- vs forward-KL comparison."""
    from rich.console import Console

    console = console or Console()
    render_summary(summary, console)
    console.print(f"dev perplexity (unigram model {summary['unigram_perplexity']:.1f}, teacher "
                  f"{summary['teacher']['perplexity']:.1f}): "
                  + ", ".join(f"{a['arm']} {a['perplexity']:.1f}" for a in summary["arms"]))
    fmt = lambda s: f"{s['value']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"  # noqa: E731
    ex = summary["exploratory"]
    console.print(f"{ex['question']} reverse minus forward: entropy {fmt(ex['reverse minus forward entropy'])} nats, "
                  f"ECE {fmt(ex['reverse minus forward ece'])}")
