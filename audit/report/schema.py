"""The one registry of report schemas: JSON Schemas for every report kd-audit writes, and reading them back.

``python -m audit report`` and the renderers rely on the fields these schemas require and type; a saved report
is validated (with ``jsonschema``, then for the cross-references a schema cannot state: :func:`inconsistencies`)
before anything renders it, so a hand-edited or truncated file gets one line naming the first bad field instead
of a traceback or half a report. Extra fields are allowed (newer writers may add some).
"""

from __future__ import annotations

import json
from pathlib import Path

from audit.errors import AuditError
from audit.stats.claims import VERDICTS

COMPARE = "kd-audit/compare/1"
COMPARE_LM = "kd-audit/compare/2"
REPLICATE = "kd-audit/recipes/replicate/1"
REPLICATE_ALL = "kd-audit/replicate-all/1"
KINDS = {COMPARE: "compare", COMPARE_LM: "compare", REPLICATE: "replicate", REPLICATE_ALL: "replicate-all"}

_NUMBER = {"type": "number"}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_STRING = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 0}
_CI = {"oneOf": [{"type": "null"}, {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}]}
_STAT = {"type": "object", "required": ["value", "ci"], "properties": {"value": _MAYBE_NUMBER, "ci": _CI, "reason": _STRING}}
# what replicate summaries hold: a mean and its bootstrap CI, never undefined (their renderers draw bars of them)
_DEFINED_STAT = {"type": "object", "required": ["value", "ci"],
                 "properties": {"value": _NUMBER, "ci": {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}}}
_NUMBERS = {"type": "array", "items": _MAYBE_NUMBER}
_EDGES = {"type": "array", "items": _NUMBER, "minItems": 2}
_HISTOGRAM = {"type": "object", "required": ["edges", "count"],
              "properties": {"edges": _EDGES, "count": {"type": "array", "items": {"type": "integer"}, "minItems": 1}}}
PAIR_VERDICTS = ("inherits", "moves_away", "inconclusive", "insufficient")
CLAIM_VERDICTS = VERDICTS
MODEL_NUMBERS = ("entropy_mean", "entropy_normalized", "maxprob_mean", "margin_mean", "accuracy", "nll", "perplexity",
                 "brier", "ece", "mce", "ece_adaptive", "ece_classwise", "smece", "ece_debiased", "ece_sweep",
                 "ece_toplabel", "ks", "entropy_correct", "entropy_incorrect", "maxprob_correct", "maxprob_incorrect",
                 "tokens_per_second")
"""A model's numbers the renderers print (every row of :data:`audit.report.terminal.MODEL_ROWS` but the count of
sequences): a number, or null where undefined."""
CALIBRATED_NUMBERS = ("nll", "ece", "smece")  # the temperature table's before -> after columns
_MODEL = {
    "type": "object",
    "required": ["role", "n", "num_classes", "entropy_mean", "maxprob_mean", "entropy_histogram", "maxprob_histogram"],
    "properties": {
        "role": {"enum": ["teacher", "student"]}, "source": _STRING,
        "n": {"type": "integer", "minimum": 1}, "num_classes": {"type": "integer", "minimum": 1},
        "n_sequences": {"type": "integer", "minimum": 1},
        **{key: _MAYBE_NUMBER for key in MODEL_NUMBERS},
        "entropy_histogram": _HISTOGRAM, "maxprob_histogram": _HISTOGRAM,
        "reliability": {"type": "object", "required": ["edges", "count", "confidence", "accuracy"],
                        "properties": {"edges": _EDGES, "count": {"type": "array", "items": _NUMBER, "minItems": 1},
                                       "confidence": _NUMBERS, "accuracy": _NUMBERS}},
        "temperature": _NUMBER,
        "calibrated": {"type": "object", "properties": {key: _MAYBE_NUMBER for key in CALIBRATED_NUMBERS}},
    },
    # the reliability chart's title reads both
    "dependentRequired": {"reliability": ["accuracy", "ece"]},
}
PAIR_STATISTICS = ("agreement", "kl", "entropy_shift", "corr_entropy_pearson", "corr_entropy_spearman",
                   "corr_maxprob_pearson", "corr_maxprob_spearman")
_BUCKETS = {"type": "array", "minItems": 1,
            "items": {"type": "object", "required": ["n", "kl_mean", "entropy_shift_mean"],
                      "properties": {"n": {"type": "integer", "minimum": 0}, "kl_mean": _MAYBE_NUMBER,
                                     "entropy_shift_mean": _MAYBE_NUMBER}}}
_DIVERGENCE = {  # audit.stats.divergence.divergence_breakdown, as the terminal and the HTML read it
    "type": "object",
    "required": ["kl_quantiles", "entropy_shift_quantiles", "kl_top1pct_share", "by_teacher_entropy", "top_contexts"],
    "properties": {
        "kl_quantiles": {"type": "object", "required": ["q50", "q90", "q99"], "additionalProperties": _NUMBER},
        "entropy_shift_quantiles": {"type": "object", "additionalProperties": _NUMBER},
        "kl_top1pct_share": {"type": "number", "minimum": 0, "maximum": 1.000001},
        "by_teacher_entropy": _BUCKETS, "by_position": _BUCKETS,
        "top_tokens": {"type": "array", "items": {"type": "object", "required": ["token", "n", "kl_total", "kl_mean"],
                                                   "properties": {"token": _STRING, "n": {"type": "integer"},
                                                                  "kl_total": _NUMBER, "kl_mean": _NUMBER}}},
        "top_contexts": {"type": "array", "items": {"type": "object",
                                                     "required": ["kl", "teacher_top1", "student_top1"],
                                                     "properties": {"kl": _NUMBER}}},
    },
}
_PAIR = {
    "type": "object",
    "required": ["teacher", "student", "verdict", "verdict_reason", "scatter", *PAIR_STATISTICS],
    "properties": {
        "teacher": _STRING, "student": _STRING, "verdict_reason": _STRING,
        "verdict": {"enum": list(PAIR_VERDICTS)},
        "scatter": {"type": "object", "required": ["teacher_maxprob", "student_maxprob"],
                    "properties": {"teacher_maxprob": {"type": "array", "items": _NUMBER},
                                   "student_maxprob": {"type": "array", "items": _NUMBER}}},
        **{key: _STAT for key in (*PAIR_STATISTICS, "kl_reverse", "topk_overlap")},
        "divergence": _DIVERGENCE,
        "temperature_ratio": {"type": "object", "required": ["ratio", "ci"],
                              "properties": {"ratio": _MAYBE_NUMBER, "ci": _CI}},
        "calibrated": {"type": "object", "required": ["verdict", "verdict_survives"],
                       "properties": {"verdict": {"enum": list(PAIR_VERDICTS)}, "verdict_survives": {"type": "boolean"},
                                      "verdict_reason": _STRING}},
    },
}
_COMMON = {"settings": {"type": "object"}, "versions": {"type": "object", "additionalProperties": _STRING}}
_CLAIM_VERDICT = {"enum": list(CLAIM_VERDICTS)}
_SURVIVES = {"type": "object", "additionalProperties": {"type": ["boolean", "null"]}}

SCHEMAS: dict[str, dict] = {
    COMPARE: {
        "type": "object",
        "required": ["schema", "settings", "versions", "data", "models", "pairs", "students"],
        "properties": {
            **_COMMON,
            "schema": {"const": COMPARE},
            "settings": {"type": "object", "required": ["n_bins", "n_bootstrap", "seed"],
                         "properties": {"n_bins": {"type": "integer", "minimum": 1}, "n_bootstrap": _COUNT,
                                        "seed": {"type": "integer"}}},
            "data": {"type": "object", "required": ["n"],
                     "properties": {"n": {"type": "integer", "minimum": 1}, "unit": _STRING,
                                    "n_sequences": {"type": "integer", "minimum": 1}},
                     # the header of a token audit counts its sequences
                     "if": {"required": ["unit"], "properties": {"unit": {"const": "token"}}},
                     "then": {"required": ["n_sequences"]}},
            "models": {"type": "object", "minProperties": 1, "additionalProperties": _MODEL},
            "pairs": {"type": "array", "items": _PAIR},
            "students": {"type": "array", "items": {"type": "object", "required": ["a", "b", "entropy_difference"],
                                                     "properties": {"a": _STRING, "b": _STRING,
                                                                    "entropy_difference": _STAT}}},
            "calibration": {"type": "object", "required": ["data", "n"],
                            "properties": {"data": _STRING, "n": {"type": "integer", "minimum": 1}}},
        },
        # --calibrate: every model's temperature and numbers after scaling, every pair's ratio and verdict after
        "dependentSchemas": {"calibration": {"properties": {
            "models": {"additionalProperties": {
                "required": ["temperature", "calibrated", *CALIBRATED_NUMBERS],
                "properties": {"calibrated": {"required": list(CALIBRATED_NUMBERS)}}}},
            "pairs": {"items": {"required": ["temperature_ratio", "calibrated"]}}}}},
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
                "type": "object",
                "required": ["arm", "method", "setup", "teacher", "teacher_temperature", "entropy", "accuracy",
                             "per_seed"],
                "properties": {
                    "arm": _STRING, "method": _STRING, "setup": _STRING, "teacher": {"type": ["string", "null"]},
                    "teacher_temperature": _NUMBER,
                    "entropy": _DEFINED_STAT, "accuracy": _DEFINED_STAT, "temperature": _DEFINED_STAT,
                    "per_seed": {"type": "array", "items": {
                        "type": "object", "required": ["seed", "entropy"],
                        "properties": {"seed": {"type": "integer"}, "entropy": _NUMBER,
                                       **{k: _MAYBE_NUMBER for k in ("accuracy", "ece", "temperature")}}}}}}},
            "claims": {"type": "array", "items": {
                "type": "object", "required": ["claim", "statement", "statistic", "verdict", "value", "ci"],
                "properties": {"claim": _STRING, "statement": _STRING, "statistic": _STRING,
                               "verdict": _CLAIM_VERDICT, "value": _NUMBER,
                               "ci": {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2},
                               "detail": {"type": ["string", "null"]}}}},
            "claim_verdicts": {"type": "object", "additionalProperties": _CLAIM_VERDICT},
            "inheritance": {"type": "object",
                            "properties": {"teacher_entropy": {"type": "array", "items": _NUMBER},
                                           "student_entropy": {"type": "array", "items": _NUMBER},
                                           "spearman": _STAT},
                            "dependentRequired": {"teacher_entropy": ["student_entropy", "spearman"]}},
            "untrained_arms": {"type": "array", "items": _STRING},
            "shift": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["split", "claim_verdicts", "survives"],
                "properties": {"split": _STRING,
                               "claim_verdicts": {"type": "object", "additionalProperties": _CLAIM_VERDICT},
                               "survives": _SURVIVES, "at_majority_arms": {"type": "array", "items": _STRING}}}},
        },
    },
    REPLICATE_ALL: {
        "type": "object",
        "required": ["schema", "tasks", "profile", "seeds", "versions", "entropy", "claims", "untrained_arms"],
        "properties": {
            **_COMMON,
            "schema": {"const": REPLICATE_ALL},
            "tasks": {"type": "array", "items": _STRING, "minItems": 1, "uniqueItems": True}, "profile": _STRING,
            "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            "entropy": {"type": "array", "items": {
                "type": "object", "required": ["arm", "by_task"],
                "properties": {"arm": _STRING, "by_task": {"type": "object", "additionalProperties": _DEFINED_STAT}}}},
            "claims": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["tasks", "runs", "by_task", "survives"],
                "properties": {
                    **{k: {"type": "object", "propertyNames": _CLAIM_VERDICT, "additionalProperties": _COUNT}
                       for k in ("tasks", "runs")},
                    "by_task": {"type": "object", "additionalProperties": _CLAIM_VERDICT},
                    "survives": {"type": "object", "additionalProperties": _SURVIVES}}}},
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


def _with_on_policy(schema: dict) -> dict:
    """compare/2 with the optional fields of ``--generate`` (:func:`audit.compare.add_on_policy`): every student's
    ``models[name].on_policy`` (a model's numbers, on its own completions, and ``generation``: how many it wrote),
    every pair's ``on_policy`` (the pair's statistics and verdict there under the pair's own names, ``n``,
    ``n_sequences``, the teacher's numbers there as ``teacher_summary``, and the ``generations`` where the student
    diverged most), and the top-level ``on_policy`` (the prompts and the sampling), which requires the others."""
    out = json.loads(json.dumps(schema))
    model = out["properties"]["models"]["additionalProperties"]
    pair = out["properties"]["pairs"]["items"]
    on_text = json.loads(json.dumps(model))  # a model's numbers, on a student's own text
    on_text["required"].remove("role")
    on_text["properties"].pop("role")
    model["properties"]["on_policy"] = {**on_text, "required": [*on_text["required"], "generation"], "properties": {
        **on_text["properties"],
        "generation": {"type": "object", "required": ["prompts", "tokens", "ended_at_eos"],
                       "properties": {"prompts": {"type": "integer", "minimum": 1},
                                      "tokens": {"type": "integer", "minimum": 1}, "ended_at_eos": _COUNT,
                                      "mean_length": _NUMBER}}}}
    names = ("teacher", "student", "scatter", "temperature_ratio", "calibrated")  # not statistics of the text
    generation = {"type": "object", "required": ["id", "prompt", "completion", "tokens", "kl", "kl_reverse"],
                  "properties": {"id": _STRING, "prompt": _STRING, "completion": _STRING,
                                 "tokens": {"type": "integer", "minimum": 1}, "ended_at_eos": {"type": "boolean"},
                                 "kl": _MAYBE_NUMBER, "kl_reverse": _MAYBE_NUMBER}}
    pair["properties"]["on_policy"] = {
        "type": "object",
        "required": [*PAIR_STATISTICS, "kl_reverse", "topk_overlap", "verdict", "verdict_reason", "n", "n_sequences",
                     "teacher_summary", "generations"],
        "properties": {**{k: v for k, v in pair["properties"].items() if k not in names},
                       "n": {"type": "integer", "minimum": 1}, "n_sequences": {"type": "integer", "minimum": 1},
                       "teacher_summary": on_text, "generations": {"type": "array", "items": generation}}}
    out["properties"]["on_policy"] = {
        "type": "object", "required": ["n_prompts", "max_new_tokens", "temperature", "top_p", "seed", "prompts"],
        "properties": {"n_prompts": {"type": "integer", "minimum": 1},
                       "max_new_tokens": {"type": "integer", "minimum": 1}, "temperature": _NUMBER,
                       "top_p": _NUMBER, "seed": {"type": "integer"}, "prompts": _STRING, "sampling": _STRING}}
    # the renderers show the on-policy view where the report says how it sampled, for every student
    out.setdefault("dependentSchemas", {})["on_policy"] = {"properties": {
        "pairs": {"items": {"required": ["on_policy"]}},
        "models": {"additionalProperties": {"if": {"required": ["role"], "properties": {"role": {"const": "student"}}},
                                            "then": {"required": ["on_policy"]}}}}}
    return out


SCHEMAS[COMPARE_LM] = _with_on_policy(SCHEMAS[COMPARE_LM])


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
    """Check a report against its schema, then its cross-references (:func:`inconsistencies`); return the
    schema name. A report that passes renders whole: every field a renderer reads is present and typed.

    Raises:
        AuditError: not an object, an unknown schema, or the first field that breaks the schema or a
            cross-reference (by its path), in one line.
    """
    import jsonschema

    kind_of(report)
    name = report["schema"]
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMAS[name]).iter_errors(report))
    if error is not None:
        where, what = "/".join(str(p) for p in error.absolute_path) or "(top level)", error.message
    else:
        where, what = next(iter(inconsistencies(report)), (None, None))
    if where is not None:
        what = " ".join(str(what).split())
        raise AuditError(f"expected a valid {name} report in {source}, got {where}: "
                         f"{what if len(what) <= 200 else what[:199] + '~'}; re-create the report with kd-audit")
    return name


def _names(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names) if names else "none"


def _compare_inconsistencies(report: dict):
    models = report["models"]
    roles = {name: m["role"] for name, m in models.items()}
    teachers = [name for name, role in roles.items() if role == "teacher"]
    if len(teachers) != 1:
        yield "models", f"expected one model with role teacher, got {len(teachers)} ({_names(teachers)})"
    students = [name for name, role in roles.items() if role == "student"]
    for name, m in models.items():
        for key in ("entropy_histogram", "maxprob_histogram"):
            hist = m[key]
            if len(hist["edges"]) != len(hist["count"]) + 1:
                yield (f"models/{name}/{key}", f"{len(hist['count'])} counts need {len(hist['count']) + 1} edges, "
                                               f"got {len(hist['edges'])}")
        rel = m.get("reliability")
        if rel is not None:
            bins = len(rel["edges"]) - 1
            lengths = {k: len(rel[k]) for k in ("count", "confidence", "accuracy")}
            if set(lengths.values()) != {bins}:
                yield f"models/{name}/reliability", f"{bins} bins (edges) but lengths {lengths}"
                continue
            halves = [b for b in range(bins) if (rel["confidence"][b] is None) != (rel["accuracy"][b] is None)]
            if halves:
                yield (f"models/{name}/reliability/confidence/{halves[0]}", "a bin with only one of its confidence "
                                                                           "and accuracy (an empty bin has neither)")
            if rel["edges"][0] > 1.0 / m["num_classes"]:
                yield (f"models/{name}/reliability/edges/0", f"the first edge {rel['edges'][0]} is above 1/K "
                                                              f"(K={m['num_classes']}): no bin holds 1/K")
    paired: dict[str, int] = {}
    for i, pair in enumerate(report["pairs"]):
        for field, role in (("teacher", "teacher"), ("student", "student")):
            name = pair[field]
            if roles.get(name) != role:
                got = "not a model of the report" if name not in roles else f"a {roles[name]}"
                yield f"pairs/{i}/{field}", f"{name!r} is {got}; the {role}s in models: " + _names(
                    n for n, r in roles.items() if r == role)
        if pair["student"] in paired:
            yield f"pairs/{i}/student", f"a second pair for {pair['student']!r} (the first is pairs/{paired[pair['student']]})"
        paired.setdefault(pair["student"], i)
        scatter = pair["scatter"]
        if len(scatter["teacher_maxprob"]) != len(scatter["student_maxprob"]):
            yield (f"pairs/{i}/scatter", f"{len(scatter['teacher_maxprob'])} teacher points but "
                                         f"{len(scatter['student_maxprob'])} student points")
    for name in students:
        if name not in paired:
            yield f"models/{name}", f"a student without a pair in pairs (pairs: {_names(paired)})"
    for i, diff in enumerate(report["students"]):
        for field in ("a", "b"):
            if roles.get(diff[field]) != "student":
                yield f"students/{i}/{field}", f"{diff[field]!r} is not a student of the report; students: {_names(students)}"


def _replicate_inconsistencies(report: dict):
    arms = [a["arm"] for a in report["arms"]]
    claimed = {c["claim"] for c in report["claims"]}
    verdicts = set(report["claim_verdicts"])
    if claimed != verdicts:
        yield "claim_verdicts", (f"verdicts for {_names(sorted(verdicts))} but claim rows for {_names(sorted(claimed))}; "
                                 "every claim with rows has one overall verdict")
    unknown = [a for a in report.get("untrained_arms", []) if a not in arms]
    if unknown:
        yield "untrained_arms", f"{_names(unknown)} is not an arm of the report (not in arms)"
    inheritance = report.get("inheritance") or {}
    if len(inheritance.get("teacher_entropy", [])) != len(inheritance.get("student_entropy", [])):
        yield "inheritance", (f"{len(inheritance.get('teacher_entropy', []))} teacher entropies but "
                              f"{len(inheritance.get('student_entropy', []))} student entropies")
    for task, shift in report.get("shift", {}).items():
        unknown = [a for a in shift.get("at_majority_arms", []) if a not in arms]
        if unknown:
            yield f"shift/{task}/at_majority_arms", f"{_names(unknown)} is not an arm of the report (not in arms)"
        if set(shift["survives"]) != verdicts or not set(shift["claim_verdicts"]) <= verdicts:
            yield (f"shift/{task}/survives", f"directions for {_names(sorted(shift['survives']))}, verdicts on "
                                             f"{task} for {_names(sorted(shift['claim_verdicts']))}; expected both "
                                             f"for the claims {_names(sorted(verdicts))}")


def _replicate_all_inconsistencies(report: dict):
    tasks = report["tasks"]

    def other_tasks(names) -> str:
        missing, extra = [t for t in tasks if t not in names], [t for t in names if t not in tasks]
        return "; ".join(part for part in (f"missing {_names(missing)}" if missing else "",
                                           f"tasks not run {_names(extra)}" if extra else "") if part)

    for i, arm in enumerate(report["entropy"]):
        if set(arm["by_task"]) != set(tasks):
            yield f"entropy/{i}/by_task", f"expected the tasks {_names(tasks)}: {other_tasks(arm['by_task'])}"
    for claim, entry in report["claims"].items():
        for key in ("tasks", "runs"):
            missing = [v for v in CLAIM_VERDICTS if v not in entry[key]]
            if missing:
                yield f"claims/{claim}/{key}", f"no count for {_names(missing)}; expected one per verdict"
        if any(v not in entry["tasks"] for v in CLAIM_VERDICTS):
            continue
        extra = [t for t in entry["by_task"] if t not in tasks]
        if extra:
            yield f"claims/{claim}/by_task", f"verdicts for tasks not run: {_names(extra)} (tasks: {_names(tasks)})"
        counts = {v: sum(1 for x in entry["by_task"].values() if x == v) for v in CLAIM_VERDICTS}
        if not extra and counts != {v: entry["tasks"][v] for v in CLAIM_VERDICTS}:
            yield (f"claims/{claim}/tasks", f"counts {dict(entry['tasks'])} disagree with the verdicts per task in "
                                            f"by_task ({counts})")
        for eval_task, by_task in entry["survives"].items():
            extra = [t for t in by_task if t not in tasks]
            if extra:
                yield f"claims/{claim}/survives/{eval_task}", f"tasks not run: {_names(extra)} (tasks: {_names(tasks)})"
    extra = [t for t in report["untrained_arms"] if t not in tasks]
    if extra:
        yield "untrained_arms", f"tasks not run: {_names(extra)} (tasks: {_names(tasks)})"


def inconsistencies(report: dict):
    """``(field path, what is wrong)`` for each cross-reference a JSON Schema cannot state, of a report that
    passes its schema: a pair or comparison naming a model that is not in ``models`` (or one of the other
    role), a student without its pair, bins, histograms and scatter points whose lengths disagree; in a
    replicate summary, overall verdicts without claim rows, arms that are not in ``arms``, shift sections
    without a direction per claim; in a summary over tasks, a task missing from ``by_task`` or one that was not
    run, and verdict counts that disagree with the verdicts per task."""
    kind = kind_of(report)
    if kind == "compare":
        yield from _compare_inconsistencies(report)
    elif report["schema"] == REPLICATE:
        yield from _replicate_inconsistencies(report)
    else:
        yield from _replicate_all_inconsistencies(report)


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
