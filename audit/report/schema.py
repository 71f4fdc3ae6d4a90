"""The one registry of report schemas: JSON Schemas for every report kd-audit writes, and reading them back.

``python -m audit report`` and the renderers rely on the fields these schemas require; a saved report is
validated (with ``jsonschema``) before anything renders it, so a hand-edited or truncated file gets one line
naming the first bad field instead of a KeyError. Extra fields are allowed (newer writers may add some).
"""

from __future__ import annotations

import json
from pathlib import Path

from audit.errors import AuditError

COMPARE = "kd-audit/compare/1"
COMPARE_LM = "kd-audit/compare/2"
REPLICATE = "kd-audit/recipes/replicate/1"
REPLICATE_ALL = "kd-audit/replicate-all/1"
KINDS = {COMPARE: "compare", COMPARE_LM: "compare", REPLICATE: "replicate", REPLICATE_ALL: "replicate-all"}

_NUMBER = {"type": "number"}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_STRING = {"type": "string"}
_STAT = {
    "type": "object", "required": ["value", "ci"],
    "properties": {
        "value": _MAYBE_NUMBER,
        "ci": {"oneOf": [{"type": "null"}, {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}]},
        "reason": _STRING,
    },
}
_NUMBERS = {"type": "array", "items": _MAYBE_NUMBER}
_HISTOGRAM = {"type": "object", "required": ["edges", "count"],
              "properties": {"edges": _NUMBERS, "count": {"type": "array", "items": {"type": "integer"}}}}
_MODEL = {
    "type": "object",
    "required": ["role", "n", "num_classes", "entropy_mean", "maxprob_mean", "entropy_histogram", "maxprob_histogram"],
    "properties": {
        "role": {"enum": ["teacher", "student"]}, "source": _STRING,
        "n": {"type": "integer", "minimum": 1}, "num_classes": {"type": "integer", "minimum": 1},
        **{key: _MAYBE_NUMBER for key in ("entropy_mean", "entropy_normalized", "maxprob_mean", "margin_mean", "accuracy",
                                          "nll", "brier", "ece", "mce", "ece_adaptive", "ece_classwise")},
        "entropy_histogram": _HISTOGRAM, "maxprob_histogram": _HISTOGRAM,
        "reliability": {"type": "object", "required": ["edges", "count", "confidence", "accuracy"],
                        "properties": {k: _NUMBERS for k in ("edges", "count", "confidence", "accuracy")}},
    },
}
PAIR_STATISTICS = ("agreement", "kl", "entropy_shift", "corr_entropy_pearson", "corr_entropy_spearman",
                   "corr_maxprob_pearson", "corr_maxprob_spearman")
_PAIR = {
    "type": "object",
    "required": ["teacher", "student", "verdict", "verdict_reason", "scatter", *PAIR_STATISTICS],
    "properties": {
        "teacher": _STRING, "student": _STRING, "verdict_reason": _STRING,
        "verdict": {"enum": ["inherits", "moves_away", "inconclusive"]},
        "scatter": {"type": "object", "required": ["teacher_maxprob", "student_maxprob"],
                    "properties": {"teacher_maxprob": _NUMBERS, "student_maxprob": _NUMBERS}},
        **{key: _STAT for key in PAIR_STATISTICS},
    },
}
_COMMON = {"settings": {"type": "object"}, "versions": {"type": "object", "additionalProperties": _STRING}}

SCHEMAS: dict[str, dict] = {
    COMPARE: {
        "type": "object",
        "required": ["schema", "settings", "versions", "data", "models", "pairs", "students"],
        "properties": {
            **_COMMON,
            "schema": {"const": COMPARE},
            "data": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 1}}},
            "models": {"type": "object", "minProperties": 1, "additionalProperties": _MODEL},
            "pairs": {"type": "array", "items": _PAIR},
            "students": {"type": "array", "items": {"type": "object", "required": ["a", "b", "entropy_difference"],
                                                     "properties": {"a": _STRING, "b": _STRING,
                                                                    "entropy_difference": _STAT}}},
        },
    },
    REPLICATE: {
        "type": "object",
        "required": ["schema", "task", "profile", "seeds", "settings", "versions", "arms", "claims", "claim_verdicts"],
        "properties": {
            **_COMMON,
            "schema": {"const": REPLICATE},
            "task": _STRING, "profile": _STRING,
            "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            "arms": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["arm", "entropy", "accuracy", "per_seed"],
                "properties": {"arm": _STRING, "entropy": _STAT, "accuracy": _STAT,
                               "per_seed": {"type": "array", "items": {"type": "object"}}}}},
            "claims": {"type": "array", "items": {
                "type": "object", "required": ["claim", "statistic", "verdict"],
                "properties": {"claim": _STRING, "statistic": _STRING, "verdict": _STRING, "value": _MAYBE_NUMBER,
                               "ci": {"oneOf": [{"type": "null"}, {"type": "array", "items": _NUMBER}]}}}},
            "claim_verdicts": {"type": "object", "additionalProperties": _STRING},
            "inheritance": {"type": "object"},
            "untrained_arms": {"type": "array", "items": _STRING},
        },
    },
    REPLICATE_ALL: {
        "type": "object",
        "required": ["schema", "tasks", "profile", "seeds", "versions", "entropy", "claims", "untrained_arms"],
        "properties": {
            **_COMMON,
            "schema": {"const": REPLICATE_ALL},
            "tasks": {"type": "array", "items": _STRING, "minItems": 1}, "profile": _STRING,
            "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            "entropy": {"type": "array", "items": {
                "type": "object", "required": ["arm", "by_task"],
                "properties": {"arm": _STRING, "by_task": {"type": "object", "additionalProperties": _STAT}}}},
            "claims": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["tasks", "runs", "by_task", "survives"],
                "properties": {k: {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
                               for k in ("tasks", "runs")}}},
            "untrained_arms": {"type": "object", "additionalProperties": {"type": "array", "items": _STRING}},
        },
    },
}


def _token_level(schema: dict) -> dict:
    """compare/2: compare/1 for token-level LM audits, with its extra fields required."""
    out = json.loads(json.dumps(schema))
    out["properties"]["schema"] = {"const": COMPARE_LM}
    model = out["properties"]["models"]["additionalProperties"]
    model["required"] += ["n_sequences", "perplexity"]
    model["properties"].update({"n_sequences": {"type": "integer", "minimum": 1}, "perplexity": _MAYBE_NUMBER})
    pair = out["properties"]["pairs"]["items"]
    pair["required"] += ["kl_reverse", "topk_overlap"]
    pair["properties"].update({"kl_reverse": _STAT, "topk_overlap": _STAT})
    return out


SCHEMAS[COMPARE_LM] = _token_level(SCHEMAS[COMPARE])


def kind_of(report: object) -> str:
    """``"compare"``, ``"replicate"`` or ``"replicate-all"``: which renderers a report takes (by its schema
    string alone).

    Raises:
        AuditError: not a dict, or a schema kd-audit does not know.
    """
    name = report.get("schema") if isinstance(report, dict) else None
    if name not in KINDS:
        raise AuditError(f"expected a report with schema {' or '.join(KINDS)}, got {name!r}; pass the JSON that "
                         "`python -m audit --json` or `replicate` wrote")
    return KINDS[name]


def validate_report(report: object, source: str = "the report") -> str:
    """Check a report against its schema; return the schema name.

    Raises:
        AuditError: not an object, an unknown schema, or the first field that breaks the schema (by its path).
    """
    import jsonschema

    kind_of(report)
    name = report["schema"]
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMAS[name]).iter_errors(report))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise AuditError(f"expected a valid {name} report in {source}, got {where}: {error.message[:200]}; "
                         "re-create the report with kd-audit")
    return name


def load_report(path: str | Path) -> dict:
    """Read and validate a saved report.

    Raises:
        AuditError: an unreadable file, invalid JSON (NaN included), or a report that breaks its schema.
    """
    def no_constants(value: str):
        raise ValueError(f"{value} is not JSON")

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=no_constants)
    except (OSError, ValueError) as err:
        raise AuditError(f"expected a readable JSON report, got {path} ({type(err).__name__}: {err}); "
                         "pass the file that --json or replicate wrote") from None
    validate_report(report, str(path))
    return report
