"""The LM grid's statistics (pure functions of per-token tensors): claims C1a, C1b, C2a and C2b decided from the
per-token entropies averaged over seeds, and the exploratory comparison of reverse-KL with forward-KL KD, with
percentile cluster-bootstrap CIs by sequence (one set of draws for every statistic, :mod:`audit.stats.cluster`)
and the deltas of CLAIMS.md (1% of log V for entropies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audit import stats
from audit.stats.claims import CORRELATION_DELTA, RANK_CORRELATION_DELTA, ClaimResult, entropy_delta
from audit.stats.cluster import group_sums, resample_counts, statistic_from_sums


def resampled(requests: dict[str, tuple[str, tuple[torch.Tensor, ...]]], groups: torch.Tensor, *,
              n_resamples: int, seed: int) -> dict[str, torch.Tensor]:
    """Each statistic (``"mean"``, ``"spearman"``, ``"ece"`` of :mod:`audit.stats.cluster`) on the same
    ``n_resamples`` cluster-bootstrap draws of the groups: name -> (B,) float64. Differences of statistics and
    functions of several means then get CIs from one set of draws."""
    sums = {name: group_sums(*values, groups=groups, statistic=statistic)[0]
            for name, (statistic, values) in requests.items()}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in requests}
    for counts in resample_counts(int(groups.unique().numel()), n_resamples, seed):
        for name, (statistic, _) in requests.items():
            out[name].append(statistic_from_sums(statistic, counts @ sums[name], 15))
    return {name: torch.cat(v) for name, v in out.items()}


def percentile_interval(draws: torch.Tensor) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap draws (B,)."""
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    return low, high


def decide_lm_claims(entropy: dict[str, torch.Tensor], *, smoothing: Sequence[float],
                     inheritance: Sequence[tuple[float, str]], groups: torch.Tensor, vocab_size: int,
                     n_bootstrap: int, seed: int = 0) -> tuple[list[ClaimResult], dict]:
    """C1a, C1b, C2a and C2b of the LM grid (its ``smoothing`` strengths and ``inheritance`` pairs) from per-token
    entropies (P,) of every arm, the teacher and the scaled teachers (``"teacher/T"``), with cluster-bootstrap CIs
    by ``groups`` (sequence ids); and the inheritance table."""
    h, pairs = entropy, inheritance
    d_h = entropy_delta(vocab_size)
    ls_lo = f"ls-{smoothing[0]}"
    differences = {f"H(LS a={a}) - H(ERM)": (f"ls-{a}", "erm", +1, "C1a") for a in smoothing}
    differences |= {f"H(KD) - H(LS a={smoothing[0]})": ("kd-forward-kl", ls_lo, -1, "C1b"),
                    "H(KD) - H(ERM)": ("kd-forward-kl", "erm", -1, "C1b")}
    teachers = [t for t, _ in pairs]
    requests = {f"mean {n}": ("mean", (h[n],)) for n in {*teachers, *(s for _, s in pairs)}}
    requests |= {stat: ("mean", (h[a] - h[b],)) for stat, (a, b, _, _) in differences.items()}
    requests |= {f"spearman {n}": ("spearman", (h["teacher"], h[n])) for n in ("kd-forward-kl", "erm", ls_lo)}
    draws = resampled(requests, groups, n_resamples=n_bootstrap, seed=seed)
    n_clusters = int(groups.unique().numel())
    results = [ClaimResult.from_interval(claim, stat, float((h[a] - h[b]).mean()), percentile_interval(draws[stat]),
                                         direction=direction, delta=d_h, n_clusters=n_clusters)
               for stat, (a, b, direction, claim) in differences.items()]
    t_means = torch.stack([draws[f"mean {n}"] for n in teachers], -1)  # (B, teachers)
    s_means = torch.stack([draws[f"mean {s}"] for _, s in pairs], -1)
    t_point = torch.tensor([float(h[n].mean()) for n in teachers], dtype=torch.float64)
    s_point = torch.tensor([float(h[s].mean()) for _, s in pairs], dtype=torch.float64)
    rank = float(stats.spearman(t_point, s_point))
    inheritance = {"teachers": teachers, "students": [s for _, s in pairs], "teacher_entropy": t_point.tolist(),
                   "student_entropy": s_point.tolist(),
                   "spearman": {"value": rank, "ci": list(percentile_interval(stats.spearman(t_means, s_means)))}}
    results.append(ClaimResult.from_interval(
        "C2a", f"Spearman(teacher H, student H) over {len(pairs)} teacher temperatures", rank,
        tuple(inheritance["spearman"]["ci"]), delta=RANK_CORRELATION_DELTA,
        detail=", ".join(f"{t}: {ht:.3f} -> {hs:.3f}" for t, ht, hs in zip(teachers, t_point, s_point))))
    corr = {n: float(stats.spearman(h["teacher"], h[n])) for n in ("kd-forward-kl", "erm", ls_lo)}
    results.append(ClaimResult.from_interval("C2b", "Spearman(T, KD) per token", corr["kd-forward-kl"],
                                             percentile_interval(draws["spearman kd-forward-kl"]), delta=CORRELATION_DELTA,
                                             n_clusters=n_clusters))
    for other in ("erm", ls_lo):
        results.append(ClaimResult.from_interval(
            "C2b", f"Spearman(T, KD) - Spearman(T, {other})", corr["kd-forward-kl"] - corr[other],
            percentile_interval(draws["spearman kd-forward-kl"] - draws[f"spearman {other}"]), delta=CORRELATION_DELTA,
            n_clusters=n_clusters))
    return results, inheritance


def divergence_comparison(arms: Sequence[str], columns: dict[str, dict[str, torch.Tensor]],
                          groups: torch.Tensor, *, n_bootstrap: int, seed: int = 0) -> dict:
    """The exploratory comparison: mean token entropy and ECE of the LM grid's KD ``arms`` of the undivided
    teacher (forward KL, reverse KL, JSD: :attr:`audit.recipes.grid.Grid.divergence_arms`) and the reverse-minus-forward differences, with cluster-bootstrap CIs."""
    requests = {}
    for arm in arms:
        requests[f"{arm} entropy"] = ("mean", (columns[arm]["entropy"],))
        requests[f"{arm} ece"] = ("ece", (columns[arm]["maxprob"], columns[arm]["correct"]))
    draws = resampled(requests, groups, n_resamples=n_bootstrap, seed=seed)
    out = {}
    for arm in arms:
        c = columns[arm]
        out[arm] = {"entropy": {"value": float(c["entropy"].mean()), "ci": list(percentile_interval(draws[f"{arm} entropy"]))},
                    "ece": {"value": float(stats.ece(c["maxprob"], c["correct"].bool())),
                            "ci": list(percentile_interval(draws[f"{arm} ece"]))}}
    for key in ("entropy", "ece"):
        diff = draws[f"kd-reverse-kl {key}"] - draws[f"kd-forward-kl {key}"]
        out[f"reverse minus forward {key}"] = {
            "value": out["kd-reverse-kl"][key]["value"] - out["kd-forward-kl"][key]["value"], "ci": list(percentile_interval(diff))}
    return out
