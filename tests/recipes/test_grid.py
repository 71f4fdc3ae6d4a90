"""The grids as data (audit.recipes.grid), and the classifier grid's claims (audit.recipes.classifier_claims) decided
from constructed per-example entropies and logits whose verdicts are known: every claim can hold, fail, be negligible
or inconclusive."""

import math

import pytest
import torch

from audit.errors import AuditError
from audit.recipes.classifier_claims import (
    aggregate,
    temperature_claim,
    temperature_statistics,
    untrained_arms,
)
from audit.recipes.grid import CLASSIFIER_GRID, LM_GRID
from audit.stats.claims import overall_verdicts, verdict

N = 400
INHERITANCE = CLASSIFIER_GRID.inheritance


@pytest.mark.parametrize("grid", [CLASSIFIER_GRID, LM_GRID], ids=["classifier", "lm"])
def test_a_grid_trains_each_teacher_first_and_names_its_graded_teachers(grid):
    names = [arm.name for arm in grid.arms]
    assert len(set(names)) == len(names)
    for i, arm in enumerate(grid.arms):
        assert (arm.teacher is None) == (arm.loss != "kd"), arm
        assert arm.teacher is None or arm.teacher not in names or names.index(arm.teacher) < i, arm
        assert all(hasattr(profile, arm.model) for profile in grid.profiles.values()), arm
    graded = {arm.teacher_temperature for arm in grid.arms if arm.name in grid.inheritance_students}
    assert graded == {1.0, *grid.teacher_temperatures}
    assert [s for _, s in grid.inheritance] == list(grid.inheritance_students)


def test_the_grids_name_their_scaled_teachers():
    assert CLASSIFIER_GRID.inheritance == (
        ("big-erm", "small-kd"), ("big-erm-tau0.5", "small-kd-tau0.5"), ("big-erm-tau2", "small-kd-tau2"),
        ("big-erm-tau4", "small-kd-tau4"), ("big-ls-0.1", "small-kd-from-big-ls"))
    assert LM_GRID.inheritance == (("teacher/0.5", "kd-tau0.5"), ("teacher", "kd-forward-kl"),
                                   ("teacher/2", "kd-tau2"), ("teacher/4", "kd-tau4"))
    assert (CLASSIFIER_GRID.kd_settings, LM_GRID.kd_settings) == ({"temperature": 2.0, "kd_weight": 0.5},
                                                                  {"temperature": 1.0, "kd_weight": 0.5})


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
    results, _ = CLASSIFIER_GRID.decide_claims(_scenario(SCENARIOS[claim][expected]), n_bootstrap=400,
                                          num_classes=2)
    checks = [r for r in results if r.claim_id == claim]
    assert overall_verdicts(results)[claim] == expected, [(r.statistic, r.verdict, r.value, r.ci) for r in checks]
    for r in checks:  # each check's verdict is the rule of CLAIMS.md applied to its own CI and delta
        assert r.verdict == verdict(r.value, r.ci, -1 if r.statistic.startswith("H(KD)") or "self-KD" in r.statistic
                                    else +1, delta=r.delta)


def test_every_claim_holds_in_the_base_scenario():
    results, inheritance = CLASSIFIER_GRID.decide_claims(_scenario({}), n_bootstrap=400, num_classes=2)
    assert {r.verdict for r in results} == {"holds"}
    assert sorted({r.claim_id for r in results}) == ["C1a", "C1b", "C1c", "C2a", "C2b"]
    deltas = {r.claim_id: r.delta for r in results}
    assert deltas["C1a"] == pytest.approx(0.01 * math.log(2)) and (deltas["C2a"], deltas["C2b"]) == (0.1, 0.02)
    assert inheritance["teachers"] == [t for t, _ in INHERITANCE] and inheritance["spearman"]["value"] == 1.0


def test_c2b_checks_the_correlation_itself():
    """C2b's first part (student and teacher confidences positively correlated) is a check of its own."""
    results, _ = CLASSIFIER_GRID.decide_claims(_scenario({}), n_bootstrap=200, num_classes=2)
    first = [r for r in results if r.claim_id == "C2b" and "-" not in r.statistic]
    assert len(first) == 1 and first[0].value > 0.99


def test_untrained_arms_are_flagged():
    labels = torch.tensor([0] * 60 + [1] * 40)
    entropy = {"flat": torch.full((100,), 0.69), "majority": torch.full((100,), 0.3), "learned": torch.full((100,), 0.3)}
    accuracy = {"flat": torch.full((100,), 0.8), "majority": (labels == 0).float(), "learned": torch.full((100,), 0.8)}
    assert untrained_arms(entropy, accuracy, labels, ["flat", "majority", "learned"]) == ["flat", "majority"]


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
    result = temperature_claim(temperature_statistics(logits, labels, n_bootstrap=50), INHERITANCE)
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
    assert summary["claims"]["C1a"]["tasks"] == {"negligible": 0, "holds": 1, "fails": 1, "inconclusive": 0,
                                                "insufficient": 0}
    assert summary["claims"]["C1a"]["runs"] == {"negligible": 0, "holds": 1, "fails": 2, "inconclusive": 1,
                                               "insufficient": 0}
    assert summary["claims"]["C2a"]["tasks"] == {"negligible": 2, "holds": 0, "fails": 0, "inconclusive": 0,
                                                "insufficient": 0}
    assert summary["claims"]["C2a"]["runs"] == {"negligible": 2, "holds": 1, "fails": 1, "inconclusive": 0,
                                               "insufficient": 0}
    assert summary["claims"]["C1a"]["survives"] == {"vader-nyt": {"vader-movies": True, "vader-tweets": False}}
    assert summary["entropy"][0]["by_task"]["vader-tweets"] == b["arms"][0]["entropy"]
    with pytest.raises(AuditError, match="one grid"):
        aggregate([a, {**b, "arms": []}])
