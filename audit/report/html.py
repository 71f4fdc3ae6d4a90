"""A compare or replicate report as ONE self-contained HTML file, readable offline.

Everything is inline: CSS in a ``<style>`` element, figures (:func:`audit.report.plots.build_figures`) as
base64 ``data:`` PNGs. There is no script, font or link, and a Content-Security-Policy meta tag forbids
the page any request but ``data:`` images and its own inline style. Every text from the report is escaped
with :func:`html.escape`. The tables hold the rows of the terminal report (:mod:`audit.report.terminal`).
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from audit.atomic import write_atomic
from audit.report.format import format_value, unit_word, verdict_sentence, with_ci
from audit.report.plots import build_figures, png_bytes
from audit.report.schema import kind_of
from audit.report.terminal import (
    MODEL_ROWS,
    ON_POLICY_PAIR_ROWS,
    PAIR_ROWS,
    bootstrap_method,
    direction_label,
    model_cell,
    row_label,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
VERDICT_CLASS = {"inherits": "good", "moves_away": "bad", "inconclusive": "unsure", "insufficient": "unsure",
                 "holds": "good", "fails": "bad", "negligible": "small"}
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #555; }
table { border-collapse: collapse; margin: .6rem 0; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; vertical-align: top; }
th { background: #f4f4f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.good { color: #17803d; font-weight: 600; } .bad { color: #c0262d; font-weight: 600; }
.unsure { color: #9a6700; font-weight: 600; } .small { color: #555; font-weight: 600; }
ul.verdicts { list-style: none; padding-left: 0; } ul.verdicts li { margin: .4rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
"""


def _cell(value, *, num: bool = False, css: str | None = None) -> str:
    classes = " ".join(c for c in ("num" if num else None, css) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(str(value))}</td>"


def _table(caption: str, header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return (f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _key_values(caption: str, mapping: dict) -> str:
    rows = [_cell(k) + _cell(v if isinstance(v, str) else json.dumps(v)) for k, v in mapping.items()]
    return _table(caption, ["key", "value"], rows)


def _verdict(label: str) -> str:
    return f'<span class="{VERDICT_CLASS.get(label, "unsure")}">{escape(label.replace("_", " "))}</span>'


def _figures(report: dict, captions: dict[str, str]) -> str:
    out = []
    for name, fig in build_figures(report).items():
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        caption = captions.get(name.removesuffix(".png").split("-")[0], "")
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}">'
                   f"<figcaption>{escape(name)}: {escape(caption)}</figcaption></figure>")
    return "".join(out)


def compare_captions(report: dict) -> dict[str, str]:
    """The captions of a compare report's figures, in its unit (examples, or tokens)."""
    unit = unit_word(report, plural=False)
    return {
        "reliability": "accuracy (bars) and mean confidence (dots) per confidence bin; the lower panels count the "
                       f"{unit}s per bin; an empty bin has no bar",
        "histograms": f"per-{unit} entropy and max probability of every model",
        "scatter": f"teacher vs student max probability per {unit}, with the correlations over all {unit}s",
        "divergence": "mean KL(teacher || student) by decile of the teacher's entropy"
                      + (" and by position in the window" if unit == "token" else ""),
    }


REPLICATE_CAPTIONS = {
    "entropy": "mean dev entropy per arm (bars) with its 95% bootstrap CI over dev examples (per-example values averaged over seeds); dots are single seeds",
    "inheritance": "KD student vs teacher mean entropy, one point per teacher",
}


def _compare_body(report: dict) -> str:
    models, pairs, data, settings = report["models"], report["pairs"], report["data"], report["settings"]
    meta = (f"data {data.get('name', '(predictions only)')}, n={data['n']}; "
            f"device {settings.get('device') or '-'}, dtype {settings.get('dtype') or '-'}; "
            f"{settings['n_bins']} bins; {settings['n_bootstrap']} bootstrap resamples (seed {settings['seed']}); created {report.get('created', '-')}")
    parts = [f"<h1>kd-audit compare</h1><p class=\"meta\">{escape(meta)}</p>",
             "<h2>Verdict: did the student inherit the teacher's confidence?</h2><ul class=\"verdicts\">"]
    for p in pairs:  # the verdict said once: a reason that opens with it continues the sentence
        _, rest = verdict_sentence(p["verdict"], p["verdict_reason"])
        parts.append(f"<li><strong>{escape(p['student'])}</strong>: {_verdict(p['verdict'])}{escape(rest)}</li>")
    parts.append("</ul>")
    rows = [_cell(row_label(key, label, report)) + "".join(_cell(model_cell(m, key, fmt), num=True) for m in models.values())
            for key, label, fmt in MODEL_ROWS if any(key in m for m in models.values())]
    parts.append(_table("Confidence and calibration per model", ["metric"] + [f"{n} ({m['role']})" for n, m in
                                                                               models.items()], rows))
    rows = [_cell(label) + "".join(_cell(with_ci(p.get(key), fmt), num=True) for p in pairs)
            for key, label, fmt in PAIR_ROWS if any(key in p for p in pairs)]
    method = bootstrap_method(data)
    parts.append(_table(f"Teacher -> student (value [95% CI, {method}])", ["statistic"] +
                        [f"{p['teacher']} -> {p['student']}" for p in pairs], rows))
    if len(pairs) > 1:
        moves = [(f"{p['student']} vs {p['teacher']} (teacher)", p["entropy_shift"]) for p in pairs]
        moves += [(f"{d['b']} vs {d['a']}", d["entropy_difference"]) for d in report["students"]]
        rows = [_cell(label) + _cell(with_ci(stat, "{:+.4f}"), num=True) + _cell(direction_label(stat))
                for label, stat in moves]
        parts.append(_table("Which way each student moved (mean entropy, nats; lower = more confident)",
                            ["comparison", "difference [95% CI]", "direction"], rows))
    if "calibration" in report:
        by_student = {p["student"]: p for p in pairs}
        rows = []
        for name, m in models.items():
            pair = by_student.get(name)
            ratio = with_ci({"value": pair["temperature_ratio"]["ratio"], "ci": pair["temperature_ratio"]["ci"]},
                            "{:.3f}") if pair else "-"
            rows.append(_cell(name) + _cell(f"{m['temperature']:.3f}", num=True)
                        + "".join(_cell(f"{format_value(m[k], '{:.4f}')} -> "
                                        f"{format_value(m['calibrated'][k], '{:.4f}')}", num=True)
                                  for k in ("nll", "ece", "smece"))
                        + _cell(ratio, num=True) + (f"<td>{_verdict(pair['calibrated']['verdict'])}</td>" if pair
                                                    else _cell("-")))
        parts.append(_table(f"Temperature scaling (T* fitted on {report['calibration']['data']}; before -> after)",
                            ["model", "T*", "NLL", "ECE", "smooth ECE", "T* / teacher's [95% CI]", "verdict after"],
                            rows))
    if any("divergence" in p for p in pairs):
        parts.append(_divergence_body(report))
    if "on_policy" in report:
        parts.append(_on_policy_body(report))
    parts.append("<h2>Figures</h2>" + _figures(report, compare_captions(report)))
    rows = [_cell(n) + _cell(m["role"]) + _cell(m.get("source", "-")) for n, m in models.items()]
    parts.append("<h2>Run</h2>" + _table("Models", ["name", "role", "source"], rows))
    parts.append(_key_values("Data", data) + _key_values("Settings", settings)
                 + _key_values("Versions", report["versions"]))
    return "".join(parts)


def _divergence_body(report: dict) -> str:
    """Where each student diverges: the KL distribution, the tokens that carry it and the largest-KL contexts."""
    token = report["data"].get("unit") == "token"
    parts = ["<h2>Where each student diverges</h2>"]
    for pair in (p for p in report["pairs"] if "divergence" in p):
        d = pair["divergence"]
        quantiles = {**{f"KL {k}": v for k, v in d["kl_quantiles"].items()},
                     **{f"entropy shift {k}": v for k, v in d["entropy_shift_quantiles"].items()},
                     "share of the KL in the top 1%": d["kl_top1pct_share"]}
        parts.append(_table(f"{pair['teacher']} -> {pair['student']}: per-{'token' if token else 'example'} "
                            "KL(teacher || student) and entropy shift (nats)", list(quantiles),
                            ["".join(_cell(f"{v:.4g}", num=True) for v in quantiles.values())]))
        if "top_tokens" in d:
            rows = [_cell(repr(t["token"])) + _cell(t["n"], num=True) + _cell(f"{t['kl_total']:.4g}", num=True)
                    + _cell(f"{t['kl_mean']:.4g}", num=True) for t in d["top_tokens"]]
            parts.append(_table(f"{pair['student']}: the target tokens with the most total KL",
                                ["token", "count", "total KL", "mean KL"], rows))
        where = "context (target in brackets)" if token else "text"
        rows = [_cell((c["context"] + "[" + c["target"] + "]") if token else c.get("text", c.get("id", "")))
                + _cell(f"{c['kl']:.4g}", num=True) + _cell(repr(c["teacher_top1"])) + _cell(repr(c["student_top1"]))
                for c in d["top_contexts"]]
        parts.append(_table(f"{pair['student']}: the largest KL", [where, "KL", "teacher's top 1", "student's top 1"],
                            rows))
    return "".join(parts)


def _on_policy_body(report: dict) -> str:
    """``--generate``: the rows of :func:`audit.report.terminal.on_policy_table` (each student's gap to the teacher
    on the reference text and on its own completions), then every completion the report holds, most divergent
    first."""
    on_policy, models, pairs = report["on_policy"], report["models"], report["pairs"]
    teacher = next(name for name, m in models.items() if m["role"] == "teacher")
    views = [(p["student"], view, stats, mine, theirs) for p in pairs
             for view, stats, mine, theirs in (("reference", p, models[p["student"]], models[teacher]),
                                               ("own text", p["on_policy"], models[p["student"]]["on_policy"],
                                                p["on_policy"]["teacher_summary"]))]
    rows = [_cell(label) + "".join(_cell(with_ci(stats.get(key), fmt), num=True) for _, _, stats, _, _ in views)
            for key, label, fmt in ON_POLICY_PAIR_ROWS]
    for label, who in (("student NLL (nats)", 3), ("teacher NLL (nats)", 4)):
        rows.append(_cell(label) + "".join(
            _cell(with_ci({"value": v[who].get("nll"), "ci": v[who].get("ci", {}).get("nll")}, "{:.3f}"), num=True)
            for v in views))
    rows.append(_cell("verdict") + "".join(f"<td>{_verdict(stats['verdict'])}</td>" for _, _, stats, _, _ in views))
    sampling = on_policy.get("sampling") or f"temperature {on_policy['temperature']:g}, top-p {on_policy['top_p']:g}"
    caption = (f"{on_policy['n_prompts']} prompts ({on_policy['prompts']}) completed with up to "
               f"{on_policy['max_new_tokens']} new tokens, {sampling}, seed {on_policy['seed']}; value [95% cluster "
               "bootstrap CI by prompt]")
    parts = ["<h2>On the students' own text</h2>",
             _table(caption, ["statistic"] + [f"{name}: {view}" for name, view, _, _, _ in views], rows)]
    rows = [_cell(p["student"]) + _cell(g["id"]) + _cell(g["prompt"]) + _cell(g["completion"])
            + _cell(format_value(g["kl"], "{:.4f}"), num=True) + _cell(format_value(g["kl_reverse"], "{:.4f}"), num=True)
            for p in pairs for g in p["on_policy"]["generations"]]
    parts.append(_table("What each student wrote where it diverged most (mean KL over the completion's tokens)",
                        ["student", "id", "prompt", "completion", "KL(T || S)", "KL(S || T)"], rows))
    return "".join(parts)


def _teacher(arm: dict) -> str:
    teacher = arm.get("teacher") or "-"
    temperature = arm.get("teacher_temperature")
    return teacher if temperature in (None, 1.0) else f"{teacher} / {temperature:g}"


def _replicate_body(report: dict) -> str:
    arms = report["arms"]
    meta = f"task {report['task']}; profile {report['profile']}; seeds {report['seeds']}"
    parts = [f"<h1>kd-audit replicate</h1><p class=\"meta\">{escape(meta)}</p>"]
    rows = [_cell(c["claim"]) + _cell(c["statement"]) + f"<td>{_verdict(c['verdict'])}</td>"
            + _cell(c["statistic"]) + _cell(with_ci({"value": c.get("value"), "ci": c.get("ci")}, "{:+.4g}"), num=True)
            + _cell(c.get("detail") or "") for c in report["claims"]]
    parts.append("<h2>Claims</h2>" + _table("Claims of CLAIMS.md on this run",
                                            ["claim", "statement", "verdict", "statistic", "value [95% CI]",
                                             "detail"], rows))
    if report.get("claim_verdicts"):
        rows = [_cell(claim) + f"<td>{_verdict(v)}</td>" for claim, v in report["claim_verdicts"].items()]
        header = ["claim", "verdict (its weakest check: fails, inconclusive, negligible, holds)"]
        parts.append(_table("Overall verdicts", header, rows))
    rows = [_cell(a["arm"]) + _cell(a["method"]) + _cell(a["setup"]) + _cell(_teacher(a))
            + _cell(with_ci(a["entropy"], "{:.4f}"), num=True)
            + _cell(with_ci(a["accuracy"], "{:.3f}"), num=True)
            + _cell(with_ci(a["temperature"], "{:.3f}") if "temperature" in a else "-", num=True)
            + _cell(len(a["per_seed"]), num=True) for a in arms]
    header = ["arm", "method", "setup", "teacher", "entropy (nats)", "accuracy", "T* (fitted on dev)", "seeds"]
    parts.append("<h2>Arms</h2>" + _table("Mean over seeds [95% bootstrap CI over dev examples]", header, rows))
    parts.append("<h2>Figures</h2>" + _figures(report, REPLICATE_CAPTIONS))
    inheritance = report.get("inheritance")
    if inheritance and inheritance.get("teacher_entropy"):
        pairs = zip(inheritance["teacher_entropy"], inheritance["student_entropy"], strict=True)
        rows = [_cell(f"{t:.4f}", num=True) + _cell(f"{s:.4f}", num=True) for t, s in pairs]
        caption = f"Inheritance: Spearman {with_ci(inheritance['spearman'], '{:.3f}')}"
        parts.append(_table(caption, ["teacher mean entropy (nats)", "KD student mean entropy (nats)"], rows))
    rows = [_cell(a["arm"]) + _cell(s["seed"], num=True) + _cell(format_value(s.get("entropy"), "{:.4f}"), num=True)
            + _cell(format_value(s.get("accuracy"), "{:.3f}"), num=True)
            + _cell(format_value(s.get("ece"), "{:.4f}"), num=True)
            + _cell(format_value(s.get("temperature"), "{:.3f}"), num=True)
            for a in arms for s in a["per_seed"]]
    parts.append(_table("Per seed", ["arm", "seed", "entropy (nats)", "accuracy", "ECE", "T*"], rows))
    parts.append("<h2>Run</h2>" + _key_values("Settings", report["settings"])
                 + _key_values("Versions", report["versions"]))
    return "".join(parts)


BODIES = {"compare": _compare_body, "replicate": _replicate_body}


def render_html(report: dict) -> str:
    """The whole report as one self-contained HTML document.

    Args:
        report: a compare (``"kd-audit/compare/1"``) or replicate (``"kd-audit/recipes/replicate/1"``) report dict.

    Returns:
        An HTML5 document as a str: no scripts, no external resources, every report text escaped.

    Raises:
        AuditError: a dict without a known ``"schema"``.

    Example:
        >>> page = render_html(report)  # doctest: +SKIP
        >>> page.startswith("<!DOCTYPE html>")  # doctest: +SKIP
        True
    """
    kind = kind_of(report)
    title = f"kd-audit {kind}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{BODIES[kind](report)}</body></html>\n")


def write_html(report: dict, path: str | Path) -> Path:
    """Write :func:`render_html` of the report to ``path`` atomically (a temp file renamed into place).

    Raises:
        AuditError: a dict without a known ``"schema"`` (nothing is written then).
    """
    page = render_html(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_bytes(page.encode("utf-8")))
    return path
