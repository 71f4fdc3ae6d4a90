"""Assertions that gate a distilled model in a user's own CI, reading like the compare report.

Each helper takes the same model and data specs as ``python -m audit compare`` (paths, hub ids, logits
files) or already evaluated :class:`~audit.load.models.Predictions` (see the ``kd_audit_pair`` fixture of
:mod:`audit.pytest_plugin`), raises ``AssertionError`` with the numbers when the check fails, and returns
the numbers when it passes. Every check made is appended to :data:`RECORDS`, which the plugin's
``--kd-audit-report PATH`` writes out as JSON.

>>> assert_agreement_at_least("teacher/", "student/", "vader-movies", 0.9)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from audit.compare import CompareSettings, ModelLike, compare, load_eval_data, predict
from audit.load.data import TextData
from audit.load.labels import data_labels
from audit.stats.summary import summarize_model

RECORDS: list[dict] = []


def _pair_report(teacher: ModelLike, student: ModelLike, data: str | TextData | None,
                 settings: CompareSettings | None) -> tuple[dict, dict]:
    settings = settings or CompareSettings(progress=False)
    report = compare(teacher, [student], data, settings=settings)
    return report, report["pairs"][0]


def _check(check: str, passed: bool, message: str, numbers: dict) -> dict:
    RECORDS.append({"check": check, "passed": passed, "message": message, **numbers})
    if not passed:
        raise AssertionError(message)
    return numbers


def _ci(stat: dict) -> str:
    return f"{stat['value']:.4f} (95% CI [{stat['ci'][0]:.4f}, {stat['ci'][1]:.4f}])"


def assert_inherits_confidence(teacher: ModelLike, student: ModelLike, data: str | TextData | None = None, *,
                               min_correlation: float | None = None, shift_band: float | None = None,
                               settings: CompareSettings | None = None) -> dict:
    """The student inherits the teacher's confidence: the compare verdict is "inherits" under this rule (the
    settings' rule, by default the measured :class:`audit.settings.VerdictRule`, for what is not given; see
    :func:`audit.stats.inheritance.inheritance_verdict`)."""
    settings = settings or CompareSettings(progress=False)
    rule = dataclasses.replace(settings.rule, **{k: v for k, v in (("min_correlation", min_correlation),
                                                                  ("shift_band", shift_band)) if v is not None})
    settings = dataclasses.replace(settings, rule=rule)
    _, pair = _pair_report(teacher, student, data, settings)
    numbers = {"teacher": pair["teacher"], "student": pair["student"], "verdict": pair["verdict"],
               "corr_entropy_spearman": pair["corr_entropy_spearman"], "entropy_shift": pair["entropy_shift"]}
    message = f"{pair['student']} does not inherit {pair['teacher']}'s confidence: {pair['verdict_reason']}"
    return _check("inherits_confidence", pair["verdict"] == "inherits", message, numbers)


def assert_ece_at_most(model: ModelLike, data: str | TextData, bound: float, *,
                       settings: CompareSettings | None = None) -> dict:
    """The model's top-label ECE (equal-width bins) is at most ``bound``."""
    settings = settings or CompareSettings(progress=False)
    text_data = load_eval_data(data, settings) if isinstance(data, str) else data
    predictions = predict(model, text_data, settings=settings)
    labels = data_labels(text_data, predictions.label_names, predictions.num_classes)
    summary = summarize_model(predictions.logits, labels, n_bins=settings.n_bins)
    numbers = {"model": predictions.name, "ece": summary["ece"], "bound": bound, "n": summary["n"],
               "n_bins": summary["n_bins"]}
    message = (f"ECE of {numbers['model']} is {summary['ece']:.4f} > {bound} on {summary['n']} examples "
               f"({summary['n_bins']} equal-width bins; accuracy {summary['accuracy']:.3f}, "
               f"mean max probability {summary['maxprob_mean']:.3f})")
    return _check("ece_at_most", summary["ece"] <= bound, message, numbers)


def assert_agreement_at_least(teacher: ModelLike, student: ModelLike, data: str | TextData | None, bound: float, *,
                              settings: CompareSettings | None = None) -> dict:
    """Top-1 agreement of student with teacher is at least ``bound`` (point estimate)."""
    _, pair = _pair_report(teacher, student, data, settings)
    numbers = {"teacher": pair["teacher"], "student": pair["student"], "agreement": pair["agreement"], "bound": bound}
    message = f"agreement of {pair['student']} with {pair['teacher']} is {_ci(pair['agreement'])} < {bound}"
    return _check("agreement_at_least", pair["agreement"]["value"] >= bound, message, numbers)


def assert_entropy_shift_within(teacher: ModelLike, student: ModelLike, data: str | TextData | None, low: float,
                                high: float, *, settings: CompareSettings | None = None) -> dict:
    """The whole 95% CI of the mean entropy shift (student - teacher, nats) lies in ``[low, high]``."""
    _, pair = _pair_report(teacher, student, data, settings)
    shift = pair["entropy_shift"]
    numbers = {"teacher": pair["teacher"], "student": pair["student"], "entropy_shift": shift, "low": low, "high": high}
    message = (f"entropy shift of {pair['student']} from {pair['teacher']} is {_ci(shift)} nats, "
               f"not within [{low}, {high}]")
    return _check("entropy_shift_within", low <= shift["ci"][0] and shift["ci"][1] <= high, message, numbers)
