"""Statistics on columns: per-example confidence, calibration, teacher/student agreement, intervals.

Pure functions over (N,) / (N, K) tensors on any device (see each module for conventions), re-exported here:
confidence (:mod:`.confidence`), binned, bin-free and smooth calibration errors (:mod:`.calibration`,
:mod:`.estimators`, :mod:`.smooth`), bootstrap intervals by row or by cluster (:mod:`.stats`, :mod:`.model_ci`,
:mod:`.cluster`), agreement and KL (:mod:`.pairwise`). Built on them: the per-model summary of a report
(:mod:`.summary`), inheritance and its verdict (:mod:`.inheritance`), temperature scaling (:mod:`.temperature`)
and the paper's claims (:mod:`.claims`). May import the foundation; the summary also :mod:`audit.reduce`, whose
reduction gives a classifier its per-example columns.
"""

from audit.stats.calibration import (
    BinnedCalibration,
    ReliabilityBins,
    adaptive_ece,
    calibration_errors,
    classwise_ece,
    ece,
    mce,
    reliability_bins,
)
from audit.stats.confidence import brier, correct, entropy, margin, max_probability, nll
from audit.stats.estimators import (
    calibration_extras,
    ece_debiased,
    ece_sweep,
    ece_sweep_bins,
    ece_toplabel,
    ks_error,
    top_label_extras,
)
from audit.stats.model_ci import column_cis, model_cis, model_metrics, paired_difference_cis
from audit.stats.pairwise import agreement, kl_divergence
from audit.stats.smooth import (
    SmoothReliability,
    smooth_ece,
    smooth_ece_bandwidth,
    smooth_ece_sigma,
    smooth_reliability,
    smooth_reliability_band,
)
from audit.stats.stats import bootstrap_ci, pearson, spearman

__all__ = [
    "BinnedCalibration",
    "ReliabilityBins",
    "SmoothReliability",
    "adaptive_ece",
    "agreement",
    "bootstrap_ci",
    "calibration_errors",
    "calibration_extras",
    "brier",
    "classwise_ece",
    "correct",
    "ece",
    "ece_debiased",
    "ece_sweep",
    "ece_sweep_bins",
    "ece_toplabel",
    "entropy",
    "kl_divergence",
    "ks_error",
    "margin",
    "max_probability",
    "mce",
    "column_cis",
    "model_cis",
    "model_metrics",
    "nll",
    "paired_difference_cis",
    "pearson",
    "reliability_bins",
    "smooth_ece",
    "smooth_ece_bandwidth",
    "smooth_ece_sigma",
    "smooth_reliability",
    "smooth_reliability_band",
    "spearman",
    "top_label_extras",
]
