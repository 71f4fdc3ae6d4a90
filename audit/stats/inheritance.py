"""Did the student inherit the teacher's confidence?

Per-example confidence (entropy, max probability) of a teacher and a student on the same examples is
compared by agreement, KL(teacher || student), the mean entropy shift (student - teacher) and the
per-example correlation of confidences, each with a seeded percentile-bootstrap CI that resamples
examples jointly. The verdict rule (:func:`inheritance_verdict`) is stated in its docstring and in the README.
"""

from __future__ import annotations

import math

import torch

from audit import stats
from audit.errors import warn
from audit.settings import CompareSettings, VerdictRule
from audit.stats.stats import bootstrap_cis

PAIR_STATISTICS = (
    "agreement", "kl", "entropy_shift",
    "corr_entropy_pearson", "corr_entropy_spearman", "corr_maxprob_pearson", "corr_maxprob_spearman",
)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(-1)


def _stat(value: torch.Tensor, ci: tuple[float, float]) -> dict:
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])]}


def undefined(reason: str) -> dict:
    """A statistic that has no value on these data, with the reason (``null`` in the JSON, never NaN)."""
    return {"value": None, "ci": None, "reason": reason}


def is_constant(x: torch.Tensor) -> bool:
    """True when x does not vary beyond float rounding (a correlation with it would be noise)."""
    x = x.double()
    return bool(x.max() - x.min() <= 1e-6 * max(1.0, float(x.abs().max())))


def _confidence(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = log_probs.exp()
    return stats.entropy(probs), stats.max_probability(probs)


def _constant(xs: list[torch.Tensor]) -> list[bool]:
    """:func:`is_constant` of each tensor, read back to the host once."""
    if not xs:
        return []
    flags = []
    for x in xs:
        x = x.double()
        flags.append(x.max() - x.min() <= 1e-6 * x.abs().max().clamp(min=1.0))
    return torch.stack(flags).tolist()


def pair_statistics(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, n_bootstrap: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Teacher -> student statistics, each ``{"value": x, "ci": [lo, hi]}``.

    Each CI is :func:`audit.stats.bootstrap_ci`'s for that statistic and seed; the statistics share the
    index draws where ``bootstrap_ci`` would draw the same ones (:func:`audit.stats.stats.bootstrap_cis`),
    and Spearman ranks all resamples of a chunk at once.

    Args:
        teacher_logits, student_logits: (N, K) logits on the same examples, same class order.

    Returns:
        A dict keyed by :data:`PAIR_STATISTICS`. ``kl`` is mean KL(teacher || student) in nats;
        ``entropy_shift`` is mean(H(student) - H(teacher)) in nats (negative: the student is more confident).
    """
    # (N, K) intermediates are dropped as soon as the (N,) per-example values are out: this runs on millions
    log_t = torch.log_softmax(teacher_logits.float(), -1)
    log_s = torch.log_softmax(student_logits.float(), -1)
    kl = stats.kl_divergence(log_t, log_s)
    agree = stats.agreement(log_t, log_s).float()  # top-1 of log-probabilities = top-1 of probabilities
    (h_t, m_t), (h_s, m_s) = _confidence(log_t), _confidence(log_s)
    del log_t, log_s
    per_example = {
        "agreement": (agree,),
        "kl": (kl,),
        "entropy_shift": (h_s - h_t,),
        "corr_entropy_pearson": (h_t, h_s),
        "corr_entropy_spearman": (h_t, h_s),
        "corr_maxprob_pearson": (m_t, m_s),
        "corr_maxprob_spearman": (m_t, m_s),
    }
    functions = {
        "agreement": _mean, "kl": _mean, "entropy_shift": _mean,
        "corr_entropy_pearson": stats.pearson, "corr_entropy_spearman": stats.spearman,
        "corr_maxprob_pearson": stats.pearson, "corr_maxprob_spearman": stats.spearman,
    }
    names = {"teacher's per-example entropy": h_t, "student's per-example entropy": h_s,
             "teacher's per-example max probability": m_t, "student's per-example max probability": m_s}
    constant = {id(x) for x, flag in zip(names.values(), _constant(list(names.values()))) if flag}
    names = {id(x): name for name, x in names.items()}
    out, requests = {}, {}
    for key in PAIR_STATISTICS:
        samples = per_example[key]
        which = [names[id(x)] for x in samples if len(samples) == 2 and id(x) in constant]
        if which:
            out[key] = undefined(f"the {' and the '.join(which)} is constant on these data, so a correlation "
                                 "with it is undefined")
        else:
            requests[key] = (functions[key], samples)
    values = torch.stack([fn(*samples).double() for fn, samples in requests.values()]).tolist() if requests else []
    cis = bootstrap_cis(requests, n_resamples=n_bootstrap, level=level, seed=seed) if requests else {}
    for key, value in zip(requests, values):
        ci = cis[key]
        if not all(map(math.isfinite, (value, *ci))):
            out[key] = undefined("too few distinct examples: the statistic or some bootstrap resamples are "
                                 "undefined (constant confidences)")
        else:
            out[key] = _stat(value, ci)
    return {key: out[key] for key in PAIR_STATISTICS}


def inheritance_verdict(stats: dict[str, dict], teacher_entropy_mean: float, rule: VerdictRule | None = None, *,
                        n_clusters: int | None = None, unit: str = "example") -> tuple[str, str]:
    """``("inherits" | "moves_away" | "inconclusive" | "insufficient", reason)`` for one pair.

    The student *inherits* the teacher's confidence when both hold: the CI of the per-example (per-token)
    Spearman correlation of entropies lies above ``rule.min_correlation`` (it is confident where the teacher
    is), and the CI of the mean entropy shift lies inside +-``rule.shift_band`` x the teacher's mean entropy (as
    confident overall). It *moves away* when either CI lies wholly on the wrong side; otherwise *inconclusive*.
    With fewer than ``rule.min_clusters`` bootstrap clusters (``n_clusters``: examples, or sequences for
    ``unit="token"``) the intervals are too narrow to carry a verdict: *insufficient* (docs/CLAIMS.md).
    """
    rule = rule or VerdictRule()
    if n_clusters is not None and n_clusters < rule.min_clusters:
        return "insufficient", f"insufficient: {too_few_clusters(n_clusters, unit, rule)}"
    corr = stats["corr_entropy_spearman"]
    shift = stats["entropy_shift"]
    for label, stat in (("Spearman(entropy)", corr), ("the entropy shift", shift)):
        if stat.get("ci") is None:
            return "inconclusive", f"cannot decide: {label} is undefined ({stat.get('reason', 'no value')})"
    band = max(rule.shift_band * teacher_entropy_mean, 1e-3)
    corr_lo, corr_hi = corr["ci"]
    shift_lo, shift_hi = shift["ci"]
    numbers = (f"Spearman(entropy) {corr['value']:.2f} [{corr_lo:.2f}, {corr_hi:.2f}] vs {rule.min_correlation:.2f}; "
               f"entropy shift {shift['value']:+.3f} [{shift_lo:+.3f}, {shift_hi:+.3f}] nats vs band +-{band:.3f}")
    if corr_lo > rule.min_correlation and -band <= shift_lo and shift_hi <= band:
        return "inherits", "inherits the teacher's confidence: " + numbers
    direction = "more confident" if shift["value"] < 0 else "less confident"
    if corr_hi < rule.min_correlation:
        return "moves_away", f"moves away: its per-{unit} confidence does not follow the teacher's: " + numbers
    if shift_lo > band or shift_hi < -band:
        return "moves_away", f"moves away: {direction} than the teacher overall: " + numbers
    return "inconclusive", "inconclusive: a CI crosses a threshold: " + numbers


def too_few_clusters(n_clusters: int, unit: str, rule: VerdictRule) -> str:
    """Why a verdict is insufficient, in words: the clusters there are and the clusters a verdict needs."""
    what = "sequences" if unit == "token" else "examples"
    return (f"{n_clusters} {what} (bootstrap clusters), and a verdict needs at least {rule.min_clusters}: below that "
            f"the 95% intervals cover the truth too rarely (docs/CLAIMS.md); pass more data")


def student_differences(student_logits: dict[str, torch.Tensor], *, n_bootstrap: int = 1000, seed: int = 0,
                        level: float = 0.95) -> list[dict]:
    """Paired mean entropy difference (b - a) with CI for every pair of students a, b (same examples).

    The CIs are :func:`audit.stats.bootstrap_ci`'s, all pairs on one set of index draws."""
    entropies = {name: stats.entropy(torch.softmax(z.float(), -1)) for name, z in student_logits.items()}
    names = list(entropies)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if not pairs:
        return []
    diffs = [entropies[b] - entropies[a] for a, b in pairs]
    values = torch.stack([_mean(d).double() for d in diffs]).tolist()
    cis = bootstrap_cis({i: (_mean, (d,)) for i, d in enumerate(diffs)}, n_resamples=n_bootstrap, level=level,
                        seed=seed)
    return [{"a": a, "b": b, "entropy_difference": _stat(value, cis[i])}
            for i, ((a, b), value) in enumerate(zip(pairs, values))]


def warn_insufficient(n_clusters: int, unit: str, settings: CompareSettings) -> None:
    """One warning line for an audit whose verdicts are all ``insufficient`` (too few bootstrap clusters)."""
    if n_clusters < settings.rule.min_clusters:
        warn(f"every verdict is insufficient: {too_few_clusters(n_clusters, unit, settings.rule)}")
