"""Every per-model number of a report, from one model's per-example (or per-token) columns: one summary for every
model kind (:func:`confidence_summary`), with what a classifier adds from its (N, K) probabilities
(:func:`summarize_model`) and the token audit's cluster-bootstrap intervals and pairs (:func:`summarize_tokens`)."""

from __future__ import annotations

import math

import torch

from audit import stats
from audit.load.data.text import IGNORE_INDEX
from audit.reduce.reduction import reduce_logits
from audit.settings import CompareSettings
from audit.stats.cluster import cluster_bootstrap_cis
from audit.stats.inheritance import inheritance_verdict, is_constant, undefined

SCATTER_POINTS = 2000  # teacher-vs-student points kept for the scatter plot
BRIER_CONVENTION = "multiclass: mean over examples of sum_k (p_k - 1[k=y])^2, range [0, 2]"
HISTOGRAM_BINS = 20
CALIBRATION_EXTRAS = ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks")
# per-model numbers whose CI needs every estimator recomputed per resample (--model-cis): for tokens a cluster
# bootstrap by sequence (the sum-statistics of the default token CIs come from audit.stats.cluster)
TOKEN_MODEL_CIS = ("mce", "ece_adaptive", *CALIBRATION_EXTRAS)


def confidence_summary(entropy: torch.Tensor, maxprob: torch.Tensor, num_classes: int, *,
                       correct: torch.Tensor | None = None, predicted: torch.Tensor | None = None,
                       nll: torch.Tensor | None = None, n_bins: int = 15) -> dict:
    """The per-model numbers every model kind shares, from per-example (or per-token) columns.

    Args:
        entropy, maxprob: (N,) entropy (nats) and top-1 probability. num_classes: K (a vocabulary for tokens).
        correct: (N,) bool, top-1 == target; None without labels (then only label-free numbers).
        predicted: (N,) integer top-1 class (the top-label ECE groups by it).
        nll: (N,) negative log-likelihood of the target; +inf where unknown (a top-k teacher's tail), left out
            of the mean.
    """
    log_k = math.log(num_classes) if num_classes > 1 else 1.0
    h, p = entropy.double(), maxprob.double()
    out = {
        "n": int(h.numel()),
        "num_classes": num_classes,
        "entropy_mean": float(h.mean()),
        "entropy_normalized": float(h.mean()) / log_k,
        "maxprob_mean": float(p.mean()),
        "entropy_histogram": _histogram(entropy, 0.0, log_k),
        "maxprob_histogram": _histogram(maxprob, 1.0 / num_classes, 1.0),
    }
    if correct is None:
        return out
    known = torch.isfinite(nll)
    mean_nll = float(nll[known].double().mean()) if known.any() else None
    calibration = stats.calibration_errors(maxprob, correct, n_bins=n_bins)
    extras = stats.top_label_extras(maxprob, correct, predicted, num_classes, n_bins=n_bins)
    out.update({
        "accuracy": float(correct.double().mean()),
        "nll": mean_nll,
        "ece": float(calibration["ece"]),
        "mce": float(calibration["mce"]),
        "ece_adaptive": float(calibration["ece_adaptive"]),
        "n_bins": n_bins,
        **{key: float(extras[key]) for key in CALIBRATION_EXTRAS},
        "entropy_correct": _mean_or_none(h[correct]),
        "entropy_incorrect": _mean_or_none(h[~correct]),
        "maxprob_correct": _mean_or_none(p[correct]),
        "maxprob_incorrect": _mean_or_none(p[~correct]),
        "reliability": {key: _floats(getattr(calibration["bins"], key))
                        for key in ("edges", "count", "confidence", "accuracy")},
    })
    return out


def summarize_model(logits: torch.Tensor, labels: torch.Tensor | None, *, n_bins: int = 15) -> dict:
    """Confidence and calibration of one classifier: :func:`confidence_summary` of the per-example columns of
    :func:`audit.reduce.reduction.reduce_logits` (the reduction of every model kind, a classifier having one
    position per example), plus what needs the whole (N, K) distribution (margin, Brier, class-wise ECE).

    Args:
        logits: (N, K) logits. labels: (N,) int64 class ids, or None (label-free numbers only).
    """
    logits = logits.float()
    targets = labels if labels is not None else torch.full(logits.shape[:1], IGNORE_INDEX)
    columns = reduce_logits(logits, [], targets, backend="torch").models[0]
    probs = torch.softmax(logits, -1)
    k = probs.shape[1]
    out = confidence_summary(columns["entropy"], columns["maxprob"], k, n_bins=n_bins, **({} if labels is None else {
        "correct": columns["correct"].bool(), "predicted": columns["top1"].long(), "nll": -columns["target_logprob"]}))
    out["margin_mean"] = float(stats.margin(probs).mean())
    if labels is not None:
        out.update(brier=float(stats.brier(probs, labels).mean()), brier_convention=BRIER_CONVENTION,
                   ece_classwise=float(stats.classwise_ece(probs, labels, n_bins=n_bins)))
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


def summarize_tokens(columns: dict[str, torch.Tensor], names: list[str], vocab_size: int, *,
                     settings: CompareSettings, topk: int | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Per-model numbers, per-pair statistics with verdicts, and student-vs-student entropy differences.

    ``topk``: the teacher is known through its top ``topk`` log-probabilities; its NLL then covers only the
    tokens whose target is among them (no interval), and the report says what is approximate.

    Every interval is a percentile interval of a cluster bootstrap by sequence: the sum-statistics' of one set of
    draws (:mod:`audit.stats.cluster`); with ``settings.model_cis`` the calibration family's too, every estimator
    recomputed per resample (:func:`audit.stats.column_cis`).
    """
    groups = columns["sequence"]
    requests, models = {}, {}
    for m, name in enumerate(names):
        h, p = columns[f"{m}.entropy"], columns[f"{m}.maxprob"]
        correct = columns[f"{m}.correct"]
        nll = -columns[f"{m}.target_logprob"].double()
        known = torch.isfinite(nll)  # all but a top-k teacher's targets outside its top k
        summary = confidence_summary(h, p, vocab_size, correct=correct.bool(), predicted=columns[f"{m}.top1"].long(),
                                     nll=nll, n_bins=settings.n_bins)
        models[name] = {"role": "teacher" if m == 0 else "student", **summary,
                        "n_sequences": int(groups.unique().numel()),
                        "perplexity": None if summary["nll"] is None else math.exp(summary["nll"])}
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
            constant = [who for who, v in (("teacher", x), ("student", y)) if is_constant(v)]
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
        if settings.model_cis:
            token_columns = {"confidence": columns[f"{m}.maxprob"], "correct": columns[f"{m}.correct"].bool(),
                             "predicted": columns[f"{m}.top1"].long()}
            models[name]["ci"].update(stats.column_cis(
                token_columns, vocab_size, names=TOKEN_MODEL_CIS, groups=groups, n_bins=settings.n_bins,
                n_resamples=settings.n_bootstrap, seed=settings.seed))
    pairs = []
    for j in range(1, len(names)):
        pair_stats = {k: _stat(point[f"pair{j}.{k}"], cis[f"pair{j}.{k}"]) for k in pair_requests[j]}
        pair_stats.update({k.split(".", 1)[1]: v for k, v in undefined_stats.items() if k.startswith(f"pair{j}.")})
        label, reason = inheritance_verdict(pair_stats, models[names[0]]["entropy_mean"], settings.rule,
                                            n_clusters=int(groups.unique().numel()), unit="token")
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
