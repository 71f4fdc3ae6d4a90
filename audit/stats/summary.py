"""Every per-model number of a report, from one model's outputs."""

from __future__ import annotations

import math

import torch

from audit import stats
from audit.settings import CompareSettings
from audit.stats.cluster import cluster_bootstrap_cis
from audit.stats.inheritance import undefined, verdict

SCATTER_POINTS = 2000  # teacher-vs-student points kept for the scatter plot


BRIER_CONVENTION = "multiclass: mean over examples of sum_k (p_k - 1[k=y])^2, range [0, 2]"


HISTOGRAM_BINS = 20


CALIBRATION_EXTRAS = ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks")



def summarize_model(logits: torch.Tensor, labels: torch.Tensor | None, *, n_bins: int = 15) -> dict:
    """Confidence and calibration of one model: every per-model number of the report.

    Args:
        logits: (N, K) logits. labels: (N,) int64 class ids, or None (label-free numbers only).
    """
    probs = torch.softmax(logits.float(), -1)
    k = probs.shape[1]
    entropy = stats.entropy(probs)
    maxprob = stats.max_probability(probs)
    log_k = float(torch.log(torch.tensor(float(k)))) if k > 1 else 1.0
    out = {
        "n": int(probs.shape[0]),
        "num_classes": k,
        "entropy_mean": float(entropy.mean()),
        "entropy_normalized": float(entropy.mean()) / log_k,
        "maxprob_mean": float(maxprob.mean()),
        "margin_mean": float(stats.margin(probs).mean()),
        "entropy_histogram": _histogram(entropy, 0.0, log_k),
        "maxprob_histogram": _histogram(maxprob, 1.0 / k, 1.0),
    }
    if labels is None:
        return out
    correct = stats.correct(probs, labels)
    calibration = stats.calibration_errors(maxprob, correct, n_bins=n_bins)
    bins = calibration["bins"]
    out.update({
        "accuracy": float(correct.float().mean()),
        "nll": float(stats.nll(logits.float(), labels).mean()),
        "brier": float(stats.brier(probs, labels).mean()),
        "brier_convention": BRIER_CONVENTION,
        "ece": float(calibration["ece"]),
        "mce": float(calibration["mce"]),
        "ece_adaptive": float(calibration["ece_adaptive"]),
        "ece_classwise": float(stats.classwise_ece(probs, labels, n_bins=n_bins)),
        "n_bins": n_bins,
        **{key: float(value) for key, value in stats.calibration_extras(probs, labels, n_bins=n_bins).items()
           if key in CALIBRATION_EXTRAS},
        "entropy_correct": _mean_or_none(entropy[correct]),
        "entropy_incorrect": _mean_or_none(entropy[~correct]),
        "maxprob_correct": _mean_or_none(maxprob[correct]),
        "maxprob_incorrect": _mean_or_none(maxprob[~correct]),
        "reliability": {key: _floats(getattr(bins, key)) for key in ("edges", "count", "confidence", "accuracy")},
    })
    return out


def _mean_or_none(x: torch.Tensor) -> float | None:
    return float(x.mean()) if x.numel() else None


def _floats(x: torch.Tensor) -> list[float | None]:
    return [None if v != v else v for v in x.double().tolist()]  # NaN (empty bin) -> null


def _histogram(x: torch.Tensor, lo: float, hi: float) -> dict:
    counts = torch.histc(x.float().clamp(lo, hi), bins=HISTOGRAM_BINS, min=lo, max=hi)
    return {"edges": torch.linspace(lo, hi, HISTOGRAM_BINS + 1).tolist(), "count": [int(c) for c in counts]}


def _stat(value: float, ci: tuple[float, float]) -> dict:
    if not all(map(math.isfinite, (value, *ci))):
        return undefined("the statistic or some cluster-bootstrap resamples are undefined (constant values)")
    return {"value": value, "ci": [ci[0], ci[1]]}


def _constant(x: torch.Tensor) -> bool:
    x = x.double()
    return bool(x.max() - x.min() <= 1e-6 * max(1.0, float(x.abs().max())))


def summarize_tokens(columns: dict[str, torch.Tensor], names: list[str], vocab_size: int, *,
                     settings: CompareSettings, topk: int | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Per-model numbers, per-pair statistics with verdicts, and student-vs-student entropy differences.

    ``topk``: the teacher is known through its top ``topk`` log-probabilities; its NLL then covers only the
    tokens whose target is among them (no interval), and the report says what is approximate.

    Every interval is a percentile interval of one cluster bootstrap by sequence (:mod:`audit.stats.cluster`).
    """
    groups = columns["sequence"]
    log_v = math.log(vocab_size)
    requests, models = {}, {}
    for m, name in enumerate(names):
        h, p = columns[f"{m}.entropy"], columns[f"{m}.maxprob"]
        correct = columns[f"{m}.correct"]
        nll = -columns[f"{m}.target_logprob"].double()
        known = torch.isfinite(nll)  # all but a top-k teacher's targets outside its top k
        mean_nll = float(nll[known].mean()) if known.any() else float("nan")
        calibration = stats.calibration_errors(p, correct.bool(), n_bins=settings.n_bins)
        bins = calibration["bins"]
        hit = correct.bool()
        models[name] = {
            "role": "teacher" if m == 0 else "student",
            "n": int(h.numel()), "n_sequences": int(groups.unique().numel()), "num_classes": vocab_size,
            "entropy_mean": float(h.double().mean()), "entropy_normalized": float(h.double().mean()) / log_v,
            "maxprob_mean": float(p.double().mean()),
            "accuracy": float(correct.double().mean()),
            "nll": mean_nll if math.isfinite(mean_nll) else None,
            "perplexity": math.exp(mean_nll) if math.isfinite(mean_nll) else None,
            "ece": float(calibration["ece"]), "mce": float(calibration["mce"]),
            "ece_adaptive": float(calibration["ece_adaptive"]), "n_bins": settings.n_bins,
            "entropy_correct": float(h[hit].double().mean()) if hit.any() else None,
            "entropy_incorrect": float(h[~hit].double().mean()) if (~hit).any() else None,
            "maxprob_correct": float(p[hit].double().mean()) if hit.any() else None,
            "maxprob_incorrect": float(p[~hit].double().mean()) if (~hit).any() else None,
            "entropy_histogram": _histogram(h, 0.0, log_v),
            "maxprob_histogram": _histogram(p, 1.0 / vocab_size, 1.0),
            "reliability": {key: _floats(getattr(bins, key)) for key in ("edges", "count", "confidence", "accuracy")},
        }
        if m == 0 and topk is not None:
            models[name]["approximation"] = (
                f"known through its top {topk} log-probabilities: entropy and both KLs are lower bounds (the tail "
                f"is one bucket, audit.reduce.topk); NLL covers the {float(known.double().mean()):.1%} of tokens whose "
                f"target is in its top {topk}")
        for key, values in (("accuracy", correct), ("nll", nll), ("entropy_mean", h), ("maxprob_mean", p)):
            if bool(torch.isfinite(values).all()):
                requests[f"{m}.{key}"] = ("mean", (values.double(),))
        requests[f"{m}.ece"] = ("ece", (p, correct))
    pair_requests: dict[int, dict[str, tuple]] = {}
    undefined_stats: dict[str, dict] = {}
    h_t, p_t, top_t = columns["0.entropy"], columns["0.maxprob"], columns["0.top1"]
    for j in range(1, len(names)):
        h_s, p_s = columns[f"{j}.entropy"], columns[f"{j}.maxprob"]
        pair = {
            "agreement": ("mean", ((top_t == columns[f"{j}.top1"]).double(),)),
            "topk_overlap": ("mean", (columns[f"pair{j - 1}.topk_overlap"].double(),)),
            "kl": ("mean", (columns[f"pair{j - 1}.kl"].double(),)),
            "kl_reverse": ("mean", (columns[f"pair{j - 1}.kl_reverse"].double(),)),
            "entropy_shift": ("mean", ((h_s - h_t).double(),)),
        }
        for kind, (x, y), label in (("entropy", (h_t, h_s), "entropy"), ("maxprob", (p_t, p_s), "max probability")):
            constant = [who for who, v in (("teacher", x), ("student", y)) if _constant(v)]
            for method in ("pearson", "spearman"):
                key = f"corr_{kind}_{method}"
                if constant:
                    undefined_stats[f"pair{j}.{key}"] = undefined(
                        f"the {' and the '.join(constant)}'s per-token {label} is constant, so a correlation with it "
                        "is undefined")
                else:
                    pair[key] = (method, (x.double(), y.double()))
        pair_requests[j] = pair
        requests.update({f"pair{j}.{k}": v for k, v in pair.items()})
    for a in range(1, len(names)):
        for b in range(a + 1, len(names)):
            requests[f"diff{a}.{b}"] = ("mean", ((columns[f"{b}.entropy"] - columns[f"{a}.entropy"]).double(),))
    cis = cluster_bootstrap_cis(requests, groups=groups, n_resamples=settings.n_bootstrap, seed=settings.seed,
                                n_bins=settings.n_bins)
    point = {name: _point(statistic, values, settings.n_bins) for name, (statistic, values) in requests.items()}
    for m, name in enumerate(names):
        models[name]["ci"] = {key: list(cis[f"{m}.{key}"]) for key in ("accuracy", "nll", "entropy_mean",
                                                                         "maxprob_mean", "ece") if f"{m}.{key}" in cis}
    pairs = []
    for j in range(1, len(names)):
        pair_stats = {k: _stat(point[f"pair{j}.{k}"], cis[f"pair{j}.{k}"]) for k in pair_requests[j]}
        pair_stats.update({k.split(".", 1)[1]: v for k, v in undefined_stats.items() if k.startswith(f"pair{j}.")})
        label, reason = verdict(pair_stats, models[names[0]]["entropy_mean"], settings.rule)
        rows = torch.randperm(h_t.numel(), generator=torch.Generator().manual_seed(settings.seed))[:SCATTER_POINTS]
        pairs.append({"teacher": names[0], "student": names[j], **pair_stats, "verdict": label, "verdict_reason": reason,
                      "scatter": {"teacher_maxprob": p_t[rows].tolist(),
                                  "student_maxprob": columns[f"{j}.maxprob"][rows].tolist()}})
    students = [{"a": names[a], "b": names[b], "entropy_difference": _stat(point[f"diff{a}.{b}"], cis[f"diff{a}.{b}"])}
                for a in range(1, len(names)) for b in range(a + 1, len(names))]
    return models, pairs, students


def _point(statistic: str, values: tuple[torch.Tensor, ...], n_bins: int) -> float:
    if statistic == "mean":
        return float(values[0].mean())
    if statistic == "pearson":
        return float(stats.pearson(*values))
    if statistic == "spearman":
        return float(stats.spearman(*values))
    return float(stats.ece(values[0], values[1].bool(), n_bins=n_bins))
