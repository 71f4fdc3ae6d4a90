"""The replication recipe through the real command, on the tiny profile (the quick profile is `slow`)."""

import functools
import json
import math
import time
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from audit.claims import VERDICTS, ClaimResult, verdict
from audit.cli import app
from audit.data import load_data
from audit.errors import AuditError
from audit.replicate import (
    INHERITANCE,
    aggregate,
    decide_claims,
    direction_survives,
    grid,
    overall_verdicts,
    temperature_claim,
    temperature_statistics,
    train_arms,
    untrained_arms,
)


def test_replicate_tiny_profile_end_to_end(tmp_path):
    out = tmp_path / "rep"
    args = ["replicate", "--task", "vader-movies", "--profile", "tiny", "--out", str(out), "--bootstrap", "100",
            "--eval-task", "vader-tweets", "--jobs", "2", "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "kd-audit/replicate/1"
    assert [a["arm"] for a in summary["arms"]] == [arm.name for arm in grid()]
    assert {c["claim"] for c in summary["claims"]} == {"C1a", "C1b", "C1c", "C2a", "C2b", "X1"}
    assert all(c["verdict"] in VERDICTS and c["delta"] > 0 for c in summary["claims"])
    for arm in summary["arms"]:  # T* per arm, with its CI; one seed: the seed's fit is the arm's
        low, high = arm["temperature"]["ci"]
        assert low <= arm["temperature"]["value"] <= high
        assert arm["per_seed"][0]["temperature"] == pytest.approx(arm["temperature"]["value"], rel=1e-12)
    assert set(summary["temperature_inheritance"]["temperature"]) == {n for pair in INHERITANCE for n in pair}
    assert "T*" in result.stdout and "X1" in result.stdout
    assert "C2a" in result.stdout and "small-kd" in result.stdout
    compare_report = json.loads((out / "seed0" / "compare-big-erm.json").read_text())
    assert compare_report["schema"] == "kd-audit/compare/1" and "small-kd" in compare_report["models"]
    assert [s["seed"] for s in summary["seed_verdicts"]] == [0]
    # domain shift: every arm audited on vader-tweets' test split, every claim decided there too
    shifted = json.loads((out / "seed0" / "shift-vader-tweets" / "compare-big-erm.json").read_text())
    assert shifted["data"]["n"] == 48 and shifted["data"].get("split", "test") == "test"
    shift = summary["shift"]["vader-tweets"]
    assert set(shift["claim_verdicts"]) == set(summary["claim_verdicts"]) == set(shift["survives"])
    for claim, before in summary["claim_verdicts"].items():
        after = shift["claim_verdicts"][claim]
        assert shift["survives"][claim] == (after == before if before in ("holds", "fails") else None)
    assert "vader-tweets" in result.stdout
    # accuracy at or below vader-tweets' majority class is reported as that, not as untrained
    tweets = load_data("vader-tweets", split="test", limit=shifted["data"]["n"]).labels
    majority = max(tweets.count(c) for c in set(tweets)) / len(tweets)
    assert "untrained_arms" not in shift
    assert shift["at_majority_arms"] == [a["arm"] for a, arm in zip(shift["arms"], grid(), strict=True)
                                         if arm.teacher_temperature == 1.0 and a["accuracy"]["value"] <= majority + 0.01]
    # a second call reuses every run and gives the same numbers
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["claims"] == summary["claims"]


N = 400


def _noise(sd: float, seed: int) -> torch.Tensor:
    return sd * torch.randn(N, generator=torch.Generator().manual_seed(seed))


def _scenario(changes: dict) -> dict[str, torch.Tensor]:
    """Per-example dev entropies of every arm and scaled teacher where every claim holds by a wide margin,
    then ``changes``: arm -> function of the entropies so far (applied in order).

    The KD student follows its teacher example by example (noise 0.01), the ERM and LS students loosely
    (noise 0.1), so C2b's gaps are about 0.35; every mean difference is >= 0.05 with a standard error <= 0.007.
    """
    base = 0.2 + 0.3 * torch.rand(N, generator=torch.Generator().manual_seed(0))
    h = {"big-erm": base, "small-erm": base + 0.1 + _noise(0.1, 1), "small-ls-0.1": base + 0.3 + _noise(0.1, 2),
         "small-ls-0.3": base + 0.5 + _noise(0.1, 3), "small-kd": base + 0.05 + _noise(0.01, 4),
         "big-self-kd": base - 0.05 + _noise(0.01, 5), "big-reversed-kd": base + 0.1 + _noise(0.01, 6),
         "big-ls-0.1": base + 0.2 + _noise(0.01, 7)}
    for i, (t, shift) in enumerate(((0.5, -0.2), (2.0, 0.3), (4.0, 0.5))):  # teacher means 0.15 .. 0.85
        h[f"big-erm-tau{t:g}"] = base + shift
        h[f"small-kd-tau{t:g}"] = base + shift + 0.05 + _noise(0.01, 10 + i)
    h["small-kd-from-big-ls"] = h["big-ls-0.1"] + 0.05 + _noise(0.01, 13)
    for arm, change in changes.items():
        h[arm] = change(h)
    return h


def _students_ranked(order: tuple[int, ...]):
    """Changes that give the KD students of the five graded teachers (in INHERITANCE order, teacher means
    0.35, 0.15, 0.65, 0.85, 0.55) the mean-entropy ranks ``order`` (1 = lowest), 0.1 apart."""
    students = [s for _, s in INHERITANCE]
    return {s: (lambda h, r=rank, i=i: h["big-erm"] * 0 + 0.1 * r + _noise(0.01, 20 + i))
            for i, (s, rank) in enumerate(zip(students, order, strict=True))}


SCENARIOS = {
    "C1a": {
        "holds": {},
        "fails": {"small-ls-0.1": lambda h: h["small-erm"] - 0.1 + _noise(0.01, 30),
                  "small-ls-0.3": lambda h: h["small-erm"] - 0.2 + _noise(0.01, 31)},
        "negligible": {"small-ls-0.1": lambda h: h["small-erm"] + _noise(0.001, 30),
                       "small-ls-0.3": lambda h: h["small-erm"] + 0.002 + _noise(0.001, 31)},
        "inconclusive": {"small-ls-0.1": lambda h: h["small-erm"] + _noise(0.3, 30)},  # CI about +-0.03 across 0
    },
    "C1b": {
        "holds": {},
        "fails": {"big-self-kd": lambda h: h["big-erm"] + 0.05 + _noise(0.01, 30)},  # self-KD raises entropy
        "negligible": {"small-kd": lambda h: h["small-erm"] + _noise(0.001, 30),  # KD = ERM ...
                       "big-self-kd": lambda h: h["big-erm"] + _noise(0.001, 31)},  # ... and self-KD = ERM
        "inconclusive": {"big-self-kd": lambda h: h["big-erm"] + _noise(0.3, 30)},
    },
    "C1c": {
        "holds": {},
        # the small LS rise (0.2) is above the reversed-KD rise (0.15), the big LS rise (0.05) is not:
        # CLAIMS.md compares the big models, so the claim fails
        "fails": {"big-reversed-kd": lambda h: h["big-erm"] + 0.15 + _noise(0.01, 30),
                  "big-ls-0.1": lambda h: h["big-erm"] + 0.05 + _noise(0.01, 31)},
        "negligible": {"big-reversed-kd": lambda h: h["big-erm"] + _noise(0.001, 30),
                       "big-ls-0.1": lambda h: h["big-reversed-kd"] + _noise(0.001, 31)},
        "inconclusive": {"big-reversed-kd": lambda h: h["big-erm"] + _noise(0.3, 30)},
    },
    "C2a": {
        "holds": _students_ranked((2, 1, 4, 5, 3)),
        "fails": _students_ranked((4, 5, 2, 1, 3)),
        "negligible": _students_ranked((5, 2, 1, 4, 3)),  # Spearman exactly 0, and stable under resampling
        "inconclusive": {s: (lambda h, i=i: 0.4 + _noise(0.5, 40 + i)) for i, (_, s) in enumerate(INHERITANCE)},
    },
    "C2b": {
        "holds": {},
        "fails": {"small-kd": lambda h: 1.0 - h["big-erm"] + _noise(0.01, 30)},  # confidences anti-correlated
        "negligible": {"small-erm": lambda h: h["small-kd"], "small-ls-0.1": lambda h: h["small-kd"]},
        "inconclusive": {"small-kd": lambda h: h["big-erm"] + _noise(0.1, 30),  # as loose as ERM: a gap near 0
                         "small-ls-0.1": lambda h: h["big-erm"] + _noise(0.1, 31)},
    },
}


@pytest.mark.parametrize(("claim", "expected"), [(c, v) for c, cases in SCENARIOS.items() for v in cases])
def test_each_claim_can_hold_fail_be_negligible_or_inconclusive(claim, expected):
    results = decide_claims(_scenario(SCENARIOS[claim][expected]), n_bootstrap=400, num_classes=2)
    checks = [r for r in results if r.claim_id == claim]
    assert overall_verdicts(results)[claim] == expected, [(r.statistic, r.verdict, r.value, r.ci) for r in checks]
    for r in checks:  # each check's verdict is the rule of CLAIMS.md applied to its own CI and delta
        assert r.verdict == verdict(r.value, r.ci, -1 if r.statistic.startswith("H(KD)") or "self-KD" in r.statistic
                                    else +1, delta=r.delta)


def test_every_claim_holds_in_the_base_scenario():
    results = decide_claims(_scenario({}), n_bootstrap=400, num_classes=2)
    assert {r.verdict for r in results} == {"holds"}
    assert sorted({r.claim_id for r in results}) == ["C1a", "C1b", "C1c", "C2a", "C2b"]
    deltas = {r.claim_id: r.delta for r in results}
    assert deltas["C1a"] == pytest.approx(0.01 * math.log(2)) and (deltas["C2a"], deltas["C2b"]) == (0.1, 0.02)


def test_c2b_checks_the_correlation_itself():
    """C2b's first part (student and teacher confidences positively correlated) is a check of its own."""
    results = decide_claims(_scenario({}), n_bootstrap=200, num_classes=2)
    first = [r for r in results if r.claim_id == "C2b" and "-" not in r.statistic]
    assert len(first) == 1 and first[0].value > 0.99


def test_overall_verdict_is_the_weakest_check():
    def result(v: str) -> ClaimResult:
        return ClaimResult("C1b", v, "x", 0.0, (0.0, 0.0))

    assert overall_verdicts([result("holds"), result("holds")]) == {"C1b": "holds"}
    assert overall_verdicts([result("holds"), result("negligible")]) == {"C1b": "negligible"}
    assert overall_verdicts([result("negligible"), result("inconclusive")]) == {"C1b": "inconclusive"}
    assert overall_verdicts([result("fails"), result("inconclusive"), result("holds")]) == {"C1b": "fails"}


@pytest.mark.slow
def test_replicate_quick_profile(tmp_path):
    """The quick profile on a real task learns with every arm (the README's table gives its time per task)."""
    result = CliRunner().invoke(app, ["replicate", "--task", "vader-tweets", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["untrained_arms"] == []
    assert min(a["accuracy"]["value"] for a in summary["arms"] if a["teacher_temperature"] == 1.0) > 0.72  # majority 0.706


def test_untrained_arms_are_flagged():
    labels = torch.tensor([0] * 60 + [1] * 40)
    entropy = {"flat": torch.full((100,), 0.69), "majority": torch.full((100,), 0.3), "learned": torch.full((100,), 0.3)}
    accuracy = {"flat": torch.full((100,), 0.8), "majority": (labels == 0).float(), "learned": torch.full((100,), 0.8)}
    assert untrained_arms(entropy, accuracy, labels, ["flat", "majority", "learned"]) == ["flat", "majority"]


BAD_REPLICATE = {
    "bootstrap 0": (["--bootstrap", "0"], "--bootstrap"),
    "bootstrap huge": (["--bootstrap", "100000000"], "--bootstrap"),
    "seeds 0": (["--seeds", "0"], "--seeds"),
    "unknown task": (["--task", "vader-films"], "vader-movies"),
    "unknown profile": (["--profile", "huge"], "--profile"),
    "unknown device": (["--device", "tpu"], "device"),
    "unknown eval task": (["--eval-task", "vader-films"], "--task"),
    "eval task with other labels": (["--eval-task", "bbc-news"], "same labels"),
    "all with plots": (["--task", "all", "--plots", "PLOTS"], "--plots"),
    "jobs 0": (["--jobs", "0"], "--jobs >= 1"),
}


def _replicate_cli(args: list[str]):
    base = {"--task": "vader-movies", "--profile": "tiny", "--bootstrap": "50"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    options = [x for key, value in {**base, **given}.items() for x in (key, value)]
    return CliRunner().invoke(app, ["replicate", *options, "--no-progress"])


def _assert_refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kd-audit: error: expected"), result.stderr
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("case", list(BAD_REPLICATE))
def test_bad_replicate_input_is_refused_before_anything_is_written(tmp_path, case):
    args, message = BAD_REPLICATE[case]
    out = tmp_path / "rep"
    _assert_refused(_replicate_cli([a.replace("PLOTS", str(tmp_path / "plots")) for a in args] + ["--out", str(out)]),
                    message)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["out", "parent"])
def test_replicate_out_that_is_a_file_is_refused(tmp_path, where):
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    out = existing if where == "out" else existing / "rep"
    _assert_refused(_replicate_cli(["--out", str(out)]), "--out")
    assert existing.read_text() == "keep me" and list(tmp_path.iterdir()) == [existing]


def _graded_logits(student_scales: list[float]) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """Logits of the five graded teachers (INHERITANCE order) as z / a for a base z drawn with calibrated
    labels, and of their KD students as z / b: T*(z / c) = T*(z) / c, so the fitted temperatures are
    ranked by 1/a and 1/b whatever T*(z) is."""
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(600, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    teacher_scales = [1.0, 0.5, 2.0, 4.0, 1.5]
    logits = {t: [z / a] for (t, _), a in zip(INHERITANCE, teacher_scales)}
    logits.update({s: [z / b] for (_, s), b in zip(INHERITANCE, student_scales)})
    return logits, labels


def test_fitted_temperatures_scale_with_the_logits():
    logits, labels = _graded_logits([1.0, 0.5, 2.0, 4.0, 1.5])
    temperatures = temperature_statistics(logits, labels, n_bootstrap=50)
    base = temperatures["models"]["big-erm"]["value"]
    assert 0.7 < base < 1.4  # labels drawn from softmax(z): z is about calibrated
    for (teacher, _), a in zip(INHERITANCE, [1.0, 0.5, 2.0, 4.0, 1.5]):
        fitted = temperatures["models"][teacher]
        assert fitted["value"] * a == pytest.approx(base, rel=1e-6)  # T*(z / a) = T*(z) / a
        assert fitted["ci"][0] <= fitted["value"] <= fitted["ci"][1] and fitted["at_bound"] == 0
    assert temperatures["resamples"].shape == (50, 10) and temperatures["degenerate_resamples"] == 0


@pytest.mark.parametrize(("student_scales", "expected"), [
    ([1.1, 0.55, 2.2, 4.4, 1.65], "holds"),   # each student 10% flatter than its teacher: same ranks
    ([1.0, 2.0, 0.5, 0.25, 2 / 3], "fails"),  # reciprocal scales: ranks reversed
    ([1.0, 1.0, 1.0, 1.0, 1.0], "negligible"),  # every student the same model: no rank correlation
])
def test_temperature_claim_can_hold_fail_and_be_negligible(student_scales, expected):
    logits, labels = _graded_logits(student_scales)
    result = temperature_claim(temperature_statistics(logits, labels, n_bootstrap=50))
    assert result.claim_id == "X1" and result.verdict == expected
    assert result.value == {"holds": 1.0, "fails": -1.0, "negligible": 0.0}[expected]


def _task_summary(task: str, verdicts: dict[str, str], seed_verdicts: list[dict[str, str]], entropy: float,
                  survives: dict | None = None) -> dict:
    summary = {"task": task, "profile": "tiny", "seeds": list(range(len(seed_verdicts))), "versions": {},
               "arms": [{"arm": "big-erm", "method": "erm", "setup": "-",
                         "entropy": {"value": entropy, "ci": [entropy - 0.1, entropy + 0.1]}}],
               "claim_verdicts": verdicts, "untrained_arms": [],
               "seed_verdicts": [{"seed": i, "claim_verdicts": v} for i, v in enumerate(seed_verdicts)]}
    if survives is not None:
        summary["shift"] = {"vader-nyt": {"survives": survives}}
    return summary


def test_aggregate_counts_tasks_and_runs():
    a = _task_summary("vader-movies", {"C1a": "holds", "C2a": "negligible"},
                      [{"C1a": "holds", "C2a": "fails"}, {"C1a": "inconclusive", "C2a": "negligible"}], 0.3,
                      survives={"C1a": True, "C2a": None})
    b = _task_summary("vader-tweets", {"C1a": "fails", "C2a": "negligible"},
                      [{"C1a": "fails", "C2a": "negligible"}, {"C1a": "fails", "C2a": "holds"}], 0.2,
                      survives={"C1a": False, "C2a": None})
    summary = aggregate([a, b])
    assert summary["schema"] == "kd-audit/replicate-all/1" and summary["tasks"] == ["vader-movies", "vader-tweets"]
    assert summary["claims"]["C1a"]["tasks"] == {"negligible": 0, "holds": 1, "fails": 1, "inconclusive": 0}
    assert summary["claims"]["C1a"]["runs"] == {"negligible": 0, "holds": 1, "fails": 2, "inconclusive": 1}
    assert summary["claims"]["C2a"]["tasks"] == {"negligible": 2, "holds": 0, "fails": 0, "inconclusive": 0}
    assert summary["claims"]["C2a"]["runs"] == {"negligible": 2, "holds": 1, "fails": 1, "inconclusive": 0}
    assert summary["claims"]["C1a"]["survives"] == {"vader-nyt": {"vader-movies": True, "vader-tweets": False}}
    assert summary["entropy"][0]["by_task"]["vader-tweets"] == b["arms"][0]["entropy"]
    with pytest.raises(AuditError, match="one grid"):
        aggregate([a, {**b, "arms": []}])


def test_direction_survives():
    before = {"C1a": "holds", "C1b": "fails", "C1c": "holds", "C2a": "inconclusive", "C2b": "negligible"}
    after = {"C1a": "holds", "C1b": "fails", "C1c": "negligible", "C2a": "holds", "C2b": "holds"}
    assert direction_survives(before, after) == {"C1a": True, "C1b": True, "C1c": False, "C2a": None, "C2b": None}


def test_replicate_all_tasks_end_to_end(tmp_path, monkeypatch):
    """--task all on the tiny profile, with the built-in list cut to two tasks to keep it short."""
    from audit import replicate as module

    two = {name: spec for name, spec in module.builtin_datasets().items() if name in ("vader-movies", "vader-amazon")}
    monkeypatch.setattr(module, "builtin_datasets", lambda: two)
    out = tmp_path / "all"
    result = CliRunner().invoke(app, ["replicate", "--task", "all", "--profile", "tiny", "--out", str(out),
                                      "--bootstrap", "50", "--no-progress"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == ["vader-movies", "vader-amazon"]
    for task in summary["tasks"]:
        per_task = json.loads((out / task / "summary.json").read_text())
        assert per_task["task"] == task
        assert {c: summary["claims"][c]["by_task"][task] for c in per_task["claim_verdicts"]} == per_task["claim_verdicts"]
    assert all(sum(entry["tasks"].values()) == 2 and sum(entry["runs"].values()) == 2
               for entry in summary["claims"].values())
    assert "vader-amazon" in result.stdout and "C2b" in result.stdout
    # the saved summary re-renders through `report`, which refuses figures for it (they are per task)
    shown = CliRunner().invoke(app, ["report", str(out / "summary.json")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "vader-amazon" in shown.stdout and "X1" in shown.stdout
    refused = CliRunner().invoke(app, ["report", str(out / "summary.json"), "--html", str(tmp_path / "r.html")])
    assert refused.exit_code == 2 and "one-task replicate report" in refused.output
    assert not (tmp_path / "r.html").exists()
    broken = {**summary, "claims": {"C1a": {**summary["claims"]["C1a"], "tasks": {"holds": -1}}}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "broken.json")])
    assert result.exit_code == 2 and "claims/C1a/tasks/holds" in result.output


def _timed_arm(folder, arm):
    """A stand-in trainer for :func:`train_arms` (top level, so that it pickles into a worker process)."""
    started = time.time()
    if arm.name == "big-erm":
        raise AuditError("expected a trainable arm, got big-erm; this error is the test's")
    time.sleep(0.5)  # 12 arms: 6 s of work, well beyond the gap between the two workers' start-ups
    (folder / f"{arm.name}.json").write_text(json.dumps([started, time.time(), torch.get_num_threads()]))


def test_train_arms_trains_each_arm_after_its_teacher_several_at_once(tmp_path):
    arms = [replace(arm, name=arm.name.replace("big-erm", "teacher")) if "big-erm" in arm.name else arm
            for arm in grid()]
    arms = [replace(arm, teacher=arm.teacher.replace("big-erm", "teacher")) if arm.teacher else arm for arm in arms]
    in_order = []
    train_arms(arms, in_order.append, jobs=1, progress=False)  # one job: in grid order, in this process
    assert in_order == arms
    train_arms(arms, functools.partial(_timed_arm, tmp_path), jobs=2, progress=False)
    runs = {arm.name: json.loads((tmp_path / f"{arm.name}.json").read_text()) for arm in arms}
    for arm in arms:
        if arm.teacher is not None:
            assert runs[arm.name][0] >= runs[arm.teacher][1], f"{arm.name} started before {arm.teacher} ended"
    intervals = sorted((start, end) for start, end, _ in runs.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:])), "no two arms overlapped"
    assert {threads for _, _, threads in runs.values()} == {max(1, torch.get_num_threads() // 2)}


def test_train_arms_stops_at_the_first_error_and_trains_no_student_of_it(tmp_path):
    with pytest.raises(AuditError, match="this error is the test's"):
        train_arms(grid(), functools.partial(_timed_arm, tmp_path), jobs=2, progress=False)
    trained = {path.stem for path in tmp_path.glob("*.json")}
    assert not trained & {arm.name for arm in grid() if arm.teacher == "big-erm"}


def test_jobs_under_torchrun_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "rep"
    _assert_refused(_replicate_cli(["--jobs", "2", "--out", str(out)]), "--jobs 1 under torchrun")
    assert not out.exists()
