"""A replicate summary in the terminal (rich tables), rendered from the summary dict alone: one task's
grid (:func:`audit.recipes.replicate.replicate`, and the LM grid's common part), the LM grid's own numbers
(:func:`render_lm_summary`), or a ``--task all`` aggregate."""

from __future__ import annotations

from rich.text import Text

from audit.report.charts import terminal_charts
from audit.report.schema import REPLICATE_ALL as ALL_SCHEMA
from audit.report.terminal import Column, fitted_tables
from audit.stats.claims import VERDICTS


def render_summary(summary: dict, console=None) -> None:
    """The paper's table (mean dev entropy and accuracy per arm, with CIs) and the claim verdicts; for a
    ``--task all`` summary, the tables across tasks (:func:`render_aggregate`)."""
    from rich.console import Console

    console = console or Console()
    if summary["schema"] == ALL_SCHEMA:
        render_aggregate(summary, console)
        return
    seeds = len(summary["seeds"])
    fitted = all("temperature" in arm for arm in summary["arms"])  # T* per arm: the classifier grid
    fmt = lambda s: f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"  # noqa: E731
    arms = summary["arms"]
    teachers = [(a["teacher"] or "-") + (f" / {a['teacher_temperature']:g}" if a["teacher_temperature"] != 1.0 else "")
                for a in arms]
    columns = [Column("arm", [a["arm"] for a in arms], "left"), Column("method", [a["method"] for a in arms], "left"),
               Column("setup", [a["setup"] for a in arms], "left"), Column("teacher", teachers, "left"),
               Column("entropy (nats)", [fmt(a["entropy"]) for a in arms]),
               Column("accuracy", [fmt(a["accuracy"]) for a in arms])]
    if fitted:
        columns.append(Column("T* (fitted on dev)", [fmt(a["temperature"]) for a in arms]))
    console.print(fitted_tables(f"{summary['task']} ({summary['profile']} profile, {seeds} seed{'s' * (seeds > 1)}): "
                                "mean dev entropy and accuracy, 95% bootstrap CI", columns, console.width))
    exploratory = any(c["claim"] == "X1" for c in summary["claims"])
    claims = summary["claims"]
    style = {"holds": "green", "fails": "red", "inconclusive": "yellow", "negligible": "dim", "insufficient": "magenta"}
    columns = [Column("claim", [c["claim"] for c in claims], "left"),
               Column("statistic", [c["statistic"] for c in claims], "left", wrap=True),
               Column("value [95% CI]", [f"{c['value']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" for c in claims],
                      "left"),
               Column("verdict", [Text(c["verdict"], style=style[c["verdict"]]) for c in claims], "left")]
    console.print(fitted_tables("Claims (docs/CLAIMS.md" + ("; X1 is exploratory, a question the paper did not ask)"
                                                            if exploratory else ")"), columns, console.width))
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
    tasks = summary["tasks"]
    entropy = summary["entropy"]
    columns = [Column("arm", [arm["arm"] for arm in entropy], "left")]
    columns += [Column(task, [f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
                              for s in (arm["by_task"][task] for arm in entropy)]) for task in tasks]
    console.print(fitted_tables(f"{len(tasks)} tasks ({summary['profile']} profile, {len(summary['seeds'])} seed(s)): "
                                "mean dev entropy (nats), 95% bootstrap CI", columns, console.width))
    claims = summary["claims"]
    columns = [Column("claim", list(claims), "left")]
    columns += [Column(v, [f"{entry['tasks'][v]} ({entry['runs'][v]})" for entry in claims.values()], "left")
                for v in VERDICTS]
    columns += [Column(task, [entry["by_task"].get(task, "-") for entry in claims.values()], "left") for task in tasks]
    console.print(fitted_tables("Claims (docs/CLAIMS.md): tasks (task x seed runs) per verdict", columns,
                                console.width))
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
