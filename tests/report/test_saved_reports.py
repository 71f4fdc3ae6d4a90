"""`python -m audit report` on saved reports that pass their JSON Schema's old checks but are inconsistent:
each is refused with one line naming the field, before anything is printed or written (issue 26).

The reports are real ones: tests/expected/ holds what `python -m audit --json` (compare-default), `--calibrate
--model-cis` (compare-calibrated), the fixture token audit (lm-fixture) and `replicate` (replicate-tiny, stored
without its ``versions``) wrote; the summary over tasks is built from two of them by the writer's own
:func:`audit.recipes.classifier_claims.aggregate`. Each case below damages one field by hand, as a user editing
the JSON would.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from audit_cli import cli

EXPECTED = Path(__file__).resolve().parents[1] / "expected"


def _stored(name: str) -> dict:
    report = json.loads((EXPECTED / f"{name}.json").read_text())
    report.setdefault("versions", {"kd-audit": "0.0.0"})  # replicate summaries are stored without theirs
    return report


@pytest.fixture(scope="module")
def bases() -> dict[str, dict]:
    from audit.recipes.classifier_claims import aggregate

    movies = _stored("replicate-tiny")
    amazon = {**copy.deepcopy(movies), "task": "vader-amazon"}
    return {"default": _stored("compare-default"), "calibrated": _stored("compare-calibrated"),
            "token": _stored("lm-fixture"), "replicate": movies, "all": aggregate([movies, amazon])}


def _set(path: str, value):
    """A damage that sets the field at ``a/b/0/c`` (created if missing)."""
    def damage(report: dict) -> None:
        *parents, last = path.split("/")
        node = report
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return damage


def _drop(path: str):
    def damage(report: dict) -> None:
        *parents, last = path.split("/")
        node = report
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return damage


def _shorten(path: str):
    """A damage that drops the last element of the list at ``path``."""
    def damage(report: dict) -> None:
        node = report
        for key in path.split("/"):
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.pop()
    return damage


def _rename_task_in_by_task(report: dict) -> None:
    by_task = report["entropy"][0]["by_task"]
    by_task["vader-tweets"] = by_task.pop("vader-amazon")


def _extra_task(report: dict) -> None:
    report["entropy"][0]["by_task"]["vader-tweets"] = copy.deepcopy(report["entropy"][0]["by_task"]["vader-movies"])


# (base report, damage, what the one line must name): the 16 kinds of issue 26 and their neighbours
CASES = {
    # cross-references of a compare report
    "pair names a student not in models": ("default", _set("pairs/0/student", "student-xx"), "pairs/0/student"),
    "pair names a teacher not in models": ("default", _set("pairs/1/teacher", "teacher-xx"), "pairs/1/teacher"),
    "pair's teacher is a student": ("default", _set("pairs/0/teacher", "student-kd"), "pairs/0/teacher"),
    "student comparison names an unknown model": ("default", _set("students/2/b", "student-xx"), "students/2/b"),
    "a student without its pair": ("default", lambda r: r["pairs"].pop(), "models/student-kd"),
    # every field the renderers read, present and typed
    "model without ece": ("default", _drop("models/student-ls/ece"), "models/student-ls"),
    "a MODEL_ROWS number as text": ("default", _set("models/teacher/ks", "small"), "models/teacher/ks"),
    "settings without n_bins": ("default", _drop("settings/n_bins"), "settings"),
    "histogram counts without their edges": ("default", _shorten("models/teacher/entropy_histogram/edges"),
                                             "models/teacher/entropy_histogram"),
    "reliability bins of different lengths": ("default", _shorten("models/student-ce/reliability/accuracy"),
                                              "models/student-ce/reliability"),
    "a null reliability count": ("default", _set("models/teacher/reliability/count/3", None),
                                 "models/teacher/reliability/count/3"),
    "scatter of different lengths": ("default", _shorten("pairs/2/scatter/student_maxprob"), "pairs/2/scatter"),
    "a pair statistic that is not a statistic": ("default", _set("pairs/0/kl_reverse", 0.3), "pairs/0/kl_reverse"),
    "token data without its sequence count": ("token", _drop("data/n_sequences"), "data"),
    # calibration fields removed or of the wrong type
    "a model's calibrated numbers removed": ("calibrated", _drop("models/student-ce/calibrated"),
                                             "models/student-ce"),
    "a calibrated number removed": ("calibrated", _drop("models/teacher/calibrated/smece"),
                                    "models/teacher/calibrated"),
    "temperature as text": ("calibrated", _set("models/teacher/temperature", "2.65"), "models/teacher/temperature"),
    "a pair's temperature ratio removed": ("calibrated", _drop("pairs/1/temperature_ratio"), "pairs/1"),
    "temperature ratio of the wrong type": ("calibrated", _set("pairs/0/temperature_ratio/ratio", [0.8]),
                                            "pairs/0/temperature_ratio/ratio"),
    "verdict_survives as text": ("calibrated", _set("pairs/2/calibrated/verdict_survives", "yes"),
                                 "pairs/2/calibrated/verdict_survives"),
    "a calibrated verdict outside the three": ("calibrated", _set("pairs/0/calibrated/verdict", "maybe"),
                                               "pairs/0/calibrated/verdict"),
    "calibration without its data": ("calibrated", _drop("calibration/data"), "calibration"),
    # a one-task replicate summary
    "a claim verdict outside the four": ("replicate", _set("claims/3/verdict", "maybe"), "claims/3/verdict"),
    "an overall verdict outside the four": ("replicate", _set("claim_verdicts/C2a", "true"),
                                            "claim_verdicts/C2a"),
    "an overall verdict without its claim rows": ("replicate", lambda r: r.__setitem__(
        "claims", [c for c in r["claims"] if c["claim"] != "C1c"]), "claim_verdicts"),
    "a null CI": ("replicate", _set("arms/4/entropy/ci", None), "arms/4/entropy/ci"),
    "a null value": ("replicate", _set("claims/0/value", None), "claims/0/value"),
    "a null T* value": ("replicate", _set("arms/1/temperature/value", None), "arms/1/temperature/value"),
    "an arm without its teacher temperature": ("replicate", _drop("arms/5/teacher_temperature"), "arms/5"),
    "a seed without its entropy": ("replicate", _drop("arms/0/per_seed/0/entropy"), "arms/0/per_seed/0"),
    "survives without a claim": ("replicate", _drop("shift/vader-tweets/survives/C2a"),
                                 "shift/vader-tweets/survives"),
    "survives as a list": ("replicate", _set("shift/vader-tweets/survives", [True]), "shift/vader-tweets/survives"),
    "inheritance of different lengths": ("replicate", _shorten("inheritance/student_entropy"), "inheritance"),
    "an untrained arm that is no arm": ("replicate", _set("untrained_arms/0", "big-xx"), "untrained_arms"),
    # a summary over tasks
    "a task missing from by_task": ("all", _rename_task_in_by_task, "entropy/0/by_task"),
    "an extra task in by_task": ("all", _extra_task, "entropy/0/by_task"),
    "a null CI over tasks": ("all", _set("entropy/2/by_task/vader-amazon/ci", None),
                             "entropy/2/by_task/vader-amazon/ci"),
    "survives over tasks as a list": ("all", _set("claims/C2a/survives", [True, None]), "claims/C2a/survives"),
    "survives naming a task not run": ("all", _set("claims/C2a/survives/vader-tweets/vader-xx", True),
                                       "claims/C2a/survives/vader-tweets"),
    "verdict counts without a verdict": ("all", _drop("claims/C1a/tasks/fails"), "claims/C1a/tasks"),
    "verdict counts that disagree with by_task": ("all", _set("claims/C2a/tasks/holds", 1), "claims/C2a/tasks"),
    "a claim verdict over tasks outside the four": ("all", _set("claims/C1b/by_task/vader-movies", "maybe"),
                                                    "claims/C1b/by_task/vader-movies"),
    "a claim verdict for a task not run": ("all", _set("claims/C1b/by_task/vader-xx", "holds"),
                                           "claims/C1b/by_task"),
    "untrained arms of a task not run": ("all", _set("untrained_arms/vader-xx", []), "untrained_arms"),
}


def test_every_base_report_renders(bases, tmp_path, capsys, monkeypatch):
    """The undamaged reports render (terminal, and HTML where the kind has one): the cases below fail on the
    damage alone."""
    monkeypatch.setenv("COLUMNS", "120")
    for name, report in bases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report))
        html = [] if name == "all" else ["--html", str(tmp_path / f"{name}.html")]
        code, out, err = cli(capsys, "report", str(path), *html)
        assert code == 0 and "error" not in err, (name, err)
        assert out.strip()
        assert name == "all" or (tmp_path / f"{name}.html").exists()


@pytest.mark.parametrize("case", CASES)
def test_an_inconsistent_saved_report_is_one_line_naming_the_field(case, bases, tmp_path, capsys, monkeypatch):
    base, damage, field = CASES[case]
    report = copy.deepcopy(bases[base])
    damage(report)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(report))
    html = [] if base == "all" else ["--html", str(tmp_path / "r.html")]
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = cli(capsys, "report", str(path), *html)
    assert code == 2, (out[-500:], err[-2000:])
    assert out == "", "printed part of the report before refusing it"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kd-audit: error: ") and "Traceback" not in err, err
    assert f"got {field}" in lines[0], lines[0]
    assert str(path) in lines[0]
    assert not (tmp_path / "r.html").exists()


def test_a_renderer_that_breaks_midway_prints_nothing(bases, tmp_path, capsys, monkeypatch):
    """Check first, then render: the terminal report is built whole before a character of it is printed, so
    even a renderer bug leaves no half report above its traceback."""
    from audit.report import terminal

    def broken(report, width=None):
        raise RuntimeError("a renderer bug")

    monkeypatch.setattr(terminal, "direction_table", broken)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bases["default"]))
    with pytest.raises(RuntimeError, match="a renderer bug"):
        cli(capsys, "report", str(path))
    out, _ = capsys.readouterr()
    assert out == ""


def test_numbers_the_schema_allows_as_null_render_as_a_dash(bases, tmp_path, capsys, monkeypatch):
    """An undefined (null) metric is valid JSON of the schema (``_MAYBE_NUMBER``): every renderer shows it as
    "-" (the terminal's tables and charts, the HTML, the figures) instead of failing on it."""
    report = copy.deepcopy(bases["calibrated"])
    report["models"]["teacher"]["ece"] = None  # read by the reliability chart's and figure's titles
    report["models"]["student-ce"]["accuracy"] = None
    report["models"]["student-ls"]["calibrated"]["smece"] = None
    report["pairs"][2]["temperature_ratio"].update(ratio=None, ci=None)
    path = tmp_path / "nulls.json"
    path.write_text(json.dumps(report))
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = cli(capsys, "report", str(path), "--html", str(tmp_path / "r.html"), "--plots",
                         str(tmp_path / "plots"))
    assert code == 0 and "error" not in err, err
    assert "accuracy vs confidence, ECE -" in out
    smece = report["models"]["student-ls"]["smece"]
    assert f"{smece:.4f} -> -" in out
    assert f"{smece:.4f} -&gt; -" in (tmp_path / "r.html").read_text() or f"{smece:.4f} -> -" in (
        tmp_path / "r.html").read_text()
    assert (tmp_path / "plots" / "reliability.png").exists()


def test_every_number_the_terminal_prints_is_typed_by_the_schema(bases):
    """Each row of the terminal's model and pair tables, given text where a number (or a statistic) belongs, is
    refused naming its field: a row added to the renderer without its type in the schema fails here."""
    from audit.errors import AuditError
    from audit.report.schema import validate_report
    from audit.report.terminal import MODEL_ROWS, PAIR_ROWS

    for key, _, _ in MODEL_ROWS:
        report = copy.deepcopy(bases["token"])
        report["models"]["lm-student"][key] = "n/a"
        with pytest.raises(AuditError, match=f"got models/lm-student/{key}: 'n/a' is not of type"):
            validate_report(report)
    for key, _, _ in PAIR_ROWS:
        report = copy.deepcopy(bases["default"])
        report["pairs"][1][key] = "n/a"
        with pytest.raises(AuditError, match=f"got pairs/1/{key}: 'n/a' is not of type 'object'"):
            validate_report(report)
