"""Metrics over tensors: per-example confidence, calibration, teacher/student agreement, statistics.

Pure functions over (N,) / (N, K) tensors on any device; see each module for conventions.
"""

from audit.metrics.calibration import (
    BinnedCalibration,
    ReliabilityBins,
    adaptive_ece,
    calibration_errors,
    classwise_ece,
    ece,
    mce,
    reliability_bins,
)
from audit.metrics.confidence import brier, correct, entropy, margin, max_probability, nll
from audit.metrics.pairwise import agreement, kl_divergence
from audit.metrics.stats import bootstrap_ci, pearson, spearman

__all__ = [
    "BinnedCalibration",
    "ReliabilityBins",
    "adaptive_ece",
    "agreement",
    "bootstrap_ci",
    "calibration_errors",
    "brier",
    "classwise_ece",
    "correct",
    "ece",
    "entropy",
    "kl_divergence",
    "margin",
    "max_probability",
    "mce",
    "nll",
    "pearson",
    "reliability_bins",
    "spearman",
]
