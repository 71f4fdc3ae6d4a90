"""The classifier grid's statistics (pure functions of tensors): claims C1a-C2b decided from the arms' per-example
dev values, the post-hoc temperatures T* and the exploratory claim X1, the arms that did not learn, and the
verdicts of several tasks counted (:func:`aggregate`).

Claims are decided from per-example dev entropies averaged over seeds, with paired bootstrap CIs over dev
examples, by :func:`audit.stats.claims.verdict` with the deltas of CLAIMS.md. X1 asks whether the KD students'
post-hoc temperatures T* follow their graded teachers'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from audit import stats
from audit.errors import AuditError
from audit.report.schema import REPLICATE_ALL as ALL_SCHEMA
from audit.stats.claims import CORRELATION_DELTA, RANK_CORRELATION_DELTA, VERDICTS, ClaimResult, entropy_delta
from audit.stats.temperature import TemperatureError, bootstrap_temperatures, fit_temperature


def mean_ci(x: torch.Tensor, n_bootstrap: int) -> dict:
    """The mean of (N,) per-example values with its percentile bootstrap CI: ``{"value", "ci"}``."""
    ci = stats.bootstrap_ci(lambda v: v.mean(-1), x, n_resamples=n_bootstrap)
    return {"value": float(x.mean()), "ci": list(ci)}


def _difference(claim: str, statistic: str, x: torch.Tensor, direction: int, n_bootstrap: int, delta: float,
                detail: str = "") -> ClaimResult:
    stat = mean_ci(x, n_bootstrap)
    return ClaimResult.from_interval(claim, statistic, stat["value"], tuple(stat["ci"]), direction=direction,
                                     delta=delta, detail=detail, n_clusters=x.numel())


def inheritance_statistics(entropy: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]],
                           n_bootstrap: int) -> dict:
    """Mean dev entropy of each graded teacher and its KD student (``pairs``), and their rank correlation with a
    CI."""
    t_matrix = torch.stack([entropy[t] for t, _ in pairs], -1)  # (N, teachers)
    s_matrix = torch.stack([entropy[s] for _, s in pairs], -1)
    rank_corr = lambda t, s: stats.spearman(t.mean(-2), s.mean(-2))  # noqa: E731  (B, N, M) -> (B,)
    ci = stats.bootstrap_ci(rank_corr, t_matrix, s_matrix, n_resamples=n_bootstrap)
    return {"teachers": [t for t, _ in pairs], "students": [s for _, s in pairs],
            "teacher_entropy": t_matrix.mean(0).tolist(), "student_entropy": s_matrix.mean(0).tolist(),
            "spearman": {"value": float(rank_corr(t_matrix[None], s_matrix[None])[0]), "ci": list(ci)}}


def decide_classifier_claims(entropy: dict[str, torch.Tensor], *, smoothing: Sequence[float],
                             inheritance: Sequence[tuple[str, str]], n_bootstrap: int,
                             num_classes: int) -> tuple[list[ClaimResult], dict]:
    """C1a-C2b of the classifier grid (its ``smoothing`` strengths and ``inheritance`` pairs) from per-example dev
    entropies (N,) per arm and scaled teacher (averaged over seeds), and the inheritance table
    (:func:`inheritance_statistics`).

    Each check's delta is the one CLAIMS.md gives its statistic: 1% of log K for entropy differences,
    :data:`~audit.stats.claims.CORRELATION_DELTA` for per-example correlations and their differences,
    :data:`~audit.stats.claims.RANK_CORRELATION_DELTA` for the rank correlation over teachers.
    """
    h, pairs = entropy, inheritance
    ls_lo, big_ls = f"small-ls-{smoothing[0]}", f"big-ls-{smoothing[0]}"
    d_h = entropy_delta(num_classes)
    results = [
        _difference("C1a", f"H(LS a={a}) - H(ERM), small", h[f"small-ls-{a}"] - h["small-erm"], +1, n_bootstrap, d_h)
        for a in smoothing
    ]
    results += [
        _difference("C1b", f"H(KD) - H(LS a={smoothing[0]}), small", h["small-kd"] - h[ls_lo], -1, n_bootstrap, d_h),
        _difference("C1b", "H(KD) - H(ERM), standard", h["small-kd"] - h["small-erm"], -1, n_bootstrap, d_h),
        _difference("C1b", "H(self-KD) - H(ERM), big", h["big-self-kd"] - h["big-erm"], -1, n_bootstrap, d_h),
        _difference("C1c", "H(reversed KD) - H(ERM), big", h["big-reversed-kd"] - h["big-erm"], +1, n_bootstrap, d_h),
        # CLAIMS.md: one architecture, each against the big ERM model
        _difference("C1c", f"rise of LS a={smoothing[0]} minus rise of reversed KD, big",
                    (h[big_ls] - h["big-erm"]) - (h["big-reversed-kd"] - h["big-erm"]), +1, n_bootstrap, d_h),
    ]
    inheritance = inheritance_statistics(h, pairs, n_bootstrap)
    results.append(ClaimResult.from_interval(
        "C2a", f"Spearman(teacher H, student H) over {len(pairs)} teachers", inheritance["spearman"]["value"],
        tuple(inheritance["spearman"]["ci"]), delta=RANK_CORRELATION_DELTA,
        detail=", ".join(f"{t}: {ht:.3f} -> {hs:.3f}" for (t, _), ht, hs in
                         zip(pairs, inheritance["teacher_entropy"], inheritance["student_entropy"]))))
    results.append(_correlation("C2b", "Spearman(T, KD) per example", lambda t, kd: stats.spearman(t, kd),
                                (h["big-erm"], h["small-kd"]), n_bootstrap))
    for other in ("small-erm", ls_lo):
        corr_gap = lambda t, kd, o: stats.spearman(t, kd) - stats.spearman(t, o)  # noqa: E731
        results.append(_correlation("C2b", f"Spearman(T, KD) - Spearman(T, {other})", corr_gap,
                                    (h["big-erm"], h["small-kd"], h[other]), n_bootstrap))
    return results, inheritance


def _correlation(claim: str, statistic: str, function, samples: tuple[torch.Tensor, ...],
                 n_bootstrap: int) -> ClaimResult:
    """A per-example correlation statistic ``function`` of paired (N,) samples, with its bootstrap CI, against
    :data:`~audit.stats.claims.CORRELATION_DELTA` (a correlation is its difference from zero)."""
    value = float(function(*(x[None] for x in samples))[0])
    ci = stats.bootstrap_ci(function, *samples, n_resamples=n_bootstrap)
    return ClaimResult.from_interval(claim, statistic, value, ci, delta=CORRELATION_DELTA,
                                     n_clusters=samples[0].numel())


def _fitted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, bool]:
    """T* and whether it sits at a search bound (degenerate logits keep the bound as their temperature)."""
    try:
        return fit_temperature(logits, labels), False
    except TemperatureError as error:
        return error.bound, True


def temperature_statistics(logits: dict[str, list[torch.Tensor]], labels: torch.Tensor, n_bootstrap: int) -> dict:
    """The temperature T* that post-hoc scaling fits on the evaluation logits, per model and averaged over
    seeds, with a percentile bootstrap CI: every model of every seed is refitted on the same resamples of the
    examples (:func:`audit.stats.temperature.bootstrap_temperatures`). T* is a property of the model (how much its
    logits should be divided by to minimise NLL), so fitting it on the split it is reported on is what the
    question needs; no scaled metric is reported here.

    Args:
        logits: model name -> its (N, K) logits in each seed.
        labels: (N,) class indices.
        n_bootstrap: resamples.

    Returns:
        ``{"models": {name: {"value", "ci", "at_bound"}}, "resamples": (B, M) tensor in the order of
        ``models``, "degenerate_resamples": fits at a bound}``; ``at_bound`` counts seeds whose fit on all
        examples sat at a bound (its bound is used).
    """
    names = list(logits)
    seeds = len(logits[names[0]])
    point, at_bound, resampled, degenerate = [], [], [], 0
    for seed in range(seeds):
        fits = [_fitted(logits[n][seed], labels) for n in names]
        point.append([t for t, _ in fits])
        at_bound.append([bound for _, bound in fits])
        draws, bad = bootstrap_temperatures([logits[n][seed] for n in names], labels, n_resamples=n_bootstrap)
        resampled.append(draws)
        degenerate += bad
    point_t = torch.tensor(point, dtype=torch.float64).mean(0)
    draws = torch.stack(resampled).mean(0)  # (B, M): the same example resamples in every seed
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    models = {n: {"value": float(point_t[m]), "ci": [float(low[m]), float(high[m])],
                  "at_bound": sum(row[m] for row in at_bound)} for m, n in enumerate(names)}
    return {"models": models, "resamples": draws, "degenerate_resamples": degenerate}


def temperature_claim(temperatures: dict, pairs: Sequence[tuple[str, str]]) -> ClaimResult:
    """X1 (exploratory, not in the paper): across the teachers of graded confidence (``pairs`` of teacher and KD
    student, :attr:`audit.recipes.grid.Grid.inheritance`), the KD student's fitted temperature rises with its teacher's: Spearman of teacher T* and student T* over the
    teachers, with the CI of its values on the bootstrap resamples. A resample whose temperatures are all
    equal on one side (all at a bound) has no rank correlation and counts as 0 (no monotone relation)."""
    names = list(temperatures["models"])
    teachers = [names.index(t) for t, _ in pairs]
    students = [names.index(s) for _, s in pairs]
    point = torch.tensor([[temperatures["models"][names[i]]["value"] for i in idx] for idx in (teachers, students)],
                         dtype=torch.float64)
    draws = temperatures["resamples"]
    value = float(torch.nan_to_num(stats.spearman(point[0], point[1]), nan=0.0))
    rho = torch.nan_to_num(stats.spearman(draws[:, teachers], draws[:, students]), nan=0.0)
    low, high = torch.quantile(rho, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    # over five ranks the percentile interval can miss its own point estimate: widen it to include it
    low, high = min(low, value), max(high, value)
    detail = ", ".join(f"{t}: {tt:.3g} -> {ts:.3g}" for (t, _), tt, ts in zip(pairs, *point.tolist()))
    return ClaimResult.from_interval("X1", f"Spearman(teacher T*, student T*) over {len(pairs)} teachers",
                                     value, (low, high), delta=RANK_CORRELATION_DELTA, detail=detail)


def aggregate(summaries: list[dict]) -> dict:
    """One summary over tasks x seeds from per-task summaries: mean dev entropy (with its CI) per arm per task,
    and per claim how many tasks and how many (task, seed) runs it holds / fails / is inconclusive / negligible
    on; with ``shift`` sections, per claim and eval task, on how many tasks its direction survived.

    Raises:
        AuditError: no summaries, or summaries of different grids.
    """
    if not summaries or len({tuple(a["arm"] for a in s["arms"]) for s in summaries}) != 1:
        raise AuditError(f"expected replicate summaries of one grid, got {len(summaries)} with different arms; "
                         "aggregate runs of one kd-audit version")
    tasks = [s["task"] for s in summaries]
    claims: dict[str, dict] = {}
    for s in summaries:
        for claim, v in s["claim_verdicts"].items():
            entry = claims.setdefault(claim, {"tasks": dict.fromkeys(VERDICTS, 0), "runs": dict.fromkeys(VERDICTS, 0),
                                              "by_task": {}, "survives": {}})
            entry["tasks"][v] += 1
            entry["by_task"][s["task"]] = v
            for seed in s.get("seed_verdicts", []):
                entry["runs"][seed["claim_verdicts"][claim]] += 1
            for eval_task, shift in s.get("shift", {}).items():
                entry["survives"].setdefault(eval_task, {})[s["task"]] = shift["survives"][claim]
    return {
        "schema": ALL_SCHEMA, "tasks": tasks, "profile": summaries[0]["profile"], "seeds": summaries[0]["seeds"],
        "versions": summaries[0]["versions"],
        "entropy": [{"arm": arm["arm"], "method": arm["method"], "setup": arm["setup"],
                     "by_task": {s["task"]: s["arms"][i]["entropy"] for s in summaries}}
                    for i, arm in enumerate(summaries[0]["arms"])],
        "claims": claims,
        "untrained_arms": {s["task"]: s.get("untrained_arms", []) for s in summaries},
    }


def untrained_arms(entropy: dict[str, torch.Tensor], accuracy: dict[str, torch.Tensor], labels: torch.Tensor,
                   names: list[str]) -> list[str]:
    """Arms that did not learn: near-uniform predictions (mean entropy >= 97% of log K) or dev accuracy no
    better than always answering the majority class (+1 point). Claims about them are not evidence."""
    log_k, majority = math.log(len(torch.bincount(labels))), majority_accuracy(labels)
    return [n for n in names if float(entropy[n].mean()) >= 0.97 * log_k or float(accuracy[n].mean()) <= majority + 0.01]


def majority_accuracy(labels: torch.Tensor) -> float:
    """The accuracy of always answering the most frequent class."""
    return float(torch.bincount(labels).max()) / len(labels)
