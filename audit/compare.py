"""The auditor's Python API: teacher and students + data -> a confidence/calibration report (a JSON-ready dict).

Data flows one way, whatever the model kind: specs -> :func:`audit.run.adapters.set_up` (one adapter per model,
the kind picked by the teacher) -> :mod:`audit.load` (the data; for LMs its token windows) -> the evaluation loop
of :mod:`audit.run.evaluate` (a classifier's (N, K) logits, which its calibration family needs while K is small;
a causal LM's batches reduced to per-token columns at once) -> :mod:`audit.stats.summary` (one per-model summary
of the columns, the pairs' statistics and verdicts) -> :func:`audit.report.envelope.envelope` -> the report dict,
which :mod:`audit.report` renders. :func:`compare_predictions` is the classifier's pure core, :func:`token_report`
the token audit's; :func:`compare` loads and runs; :func:`compare_callable` audits callables over a DataLoader (a
notebook's teacher and student, no checkpoints).

The report schemas (``"kd-audit/compare/1"`` for classifiers, ``"kd-audit/compare/2"`` for tokens) are documented
in the README and :mod:`audit.report.schema`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from audit import stats
from audit.errors import AuditError, warn
from audit.load.causal_lm import CausalLM, check_same_tokenizer
from audit.load.data import TextData, builtin_datasets, load_data
from audit.load.data.builtin import text_corpora
from audit.load.data.text import IGNORE_INDEX, Documents, TokenWindows, read_documents, tokenize_windows
from audit.load.labels import align_labels, data_labels, match_to_data
from audit.load.models import Predictions, TextClassifier, predictions_bytes
from audit.outputs import Output, check_outputs, write_files
from audit.reduce.reduction import column_names
from audit.report.envelope import envelope
from audit.run.adapters import (
    KIND_NAMES,
    Adapter,
    Setup,
    TopkFileAdapter,
    audit_kind,
    callable_batches,
    load_adapter,
    set_up,
    split_batch,
)
from audit.run.cache import PredictionStore, open_store, prediction_key, token_key
from audit.run.device import resolve_batch_size, resolve_run
from audit.run.distributed import ProcessGroup, is_main_process
from audit.run.evaluate import callable_logits, evaluate_tokens, predict_text, token_columns, token_logits
from audit.run.generate import (
    columns_key,
    completion_windows,
    generate_completions,
    generation_key,
    pad_token,
    prompt_tokens,
    stop_tokens,
)
from audit.settings import (  # noqa: F401 (MAX_BINS, MAX_BOOTSTRAP re-exported)
    DEFAULT_MAX_LENGTH,
    MAX_BINS,
    MAX_BOOTSTRAP,
    CompareSettings,
    unused_compare_options,
)
from audit.stats.divergence import divergence_breakdown, example_divergence, row_details
from audit.stats.inheritance import (
    inheritance_verdict,
    pair_statistics,
    student_differences,
    too_few_clusters,
)
from audit.stats.summary import SCATTER_POINTS, summarize_model, summarize_tokens
from audit.stats.temperature import (
    calibrated_metrics,
    fit_temperature,
    scale_logits,
    temperature_ratio,
)

SCHEMA = "kd-audit/compare/1"
TOKEN_SCHEMA = "kd-audit/compare/2"
TOKEN_SCHEMA_CHANGES = ("compare/2 = compare/1 for token-level audits of causal LMs: n counts scored tokens; adds "
                        "n_sequences, perplexity, kl_reverse, topk_overlap and data.unit; CIs are cluster-bootstrap "
                        "intervals by sequence")
TEMPERATURE_RESAMPLES = 200  # the T* ratio's resamples: a classifier's refit two temperatures each
CALIBRATED_TOKEN_FIELDS = ("accuracy", "nll", "ece", "mce", "ece_adaptive", "smece", "ece_debiased", "ece_sweep",
                           "ece_toplabel", "ks")  # a classifier's calibrated fields but Brier (no full distribution kept)
CONTEXT_TOKENS = 24  # tokens of text shown before each of a pair's largest-KL positions
CALIBRATION_POSITIONS = 2048  # dev tokens whose full logits fit a token audit's T* (P x V float32 per model)

ModelLike = str | Predictions | TextClassifier | CausalLM | Adapter


def compare_predictions(teacher: Predictions, students: list[Predictions], labels: torch.Tensor | None, *,
                        settings: CompareSettings | None = None, data_info: dict | None = None) -> dict:
    """The report for logits already on the same examples and class order (the pure core of :func:`compare`)."""
    settings = settings or CompareSettings()
    names = [teacher.name] + [s.name for s in students]
    if len(set(names)) != len(names):
        raise AuditError(f"expected distinct model names, got {names}; pass --name for each model")
    n = teacher.logits.shape[0]
    for s in students:
        if s.logits.shape[0] != n:
            raise AuditError(f"expected {n} predictions from {s.name} (as many as the teacher), got {s.logits.shape[0]}")
    if n == 0:
        raise AuditError("expected at least one example, got empty data; check the data file or split")
    if settings.n_bins > max(n, CompareSettings.n_bins):
        raise AuditError(f"expected --bins at most the number of examples ({n}), got {settings.n_bins}; pass fewer bins")
    models = {teacher.name: {"role": "teacher", "source": teacher.source,
                             **summarize_model(teacher.logits, labels, n_bins=settings.n_bins)}}
    for s in students:
        models[s.name] = {"role": "student", "source": s.source,
                          **summarize_model(s.logits, labels, n_bins=settings.n_bins)}
    if settings.model_cis and labels is None:
        warn("--model-cis has no effect without labels (the data has none); pass data with a label column or drop it")
    if settings.model_cis and labels is not None:
        for p in (teacher, *students):
            models[p.name]["ci"] = stats.model_cis(p.logits, labels, n_bins=settings.n_bins,
                                                     n_resamples=settings.n_bootstrap, seed=settings.seed)
    boot = dict(n_bootstrap=settings.n_bootstrap, seed=settings.seed)
    pairs = []
    scatter_rows = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))[:SCATTER_POINTS]
    teacher_maxprob = stats.max_probability(torch.softmax(teacher.logits, -1))
    for s in students:
        pair_stats = pair_statistics(teacher.logits, s.logits, **boot)
        label, reason = inheritance_verdict(pair_stats, models[teacher.name]["entropy_mean"], settings.rule,
                                            n_clusters=n)
        student_maxprob = stats.max_probability(torch.softmax(s.logits, -1))
        pairs.append({"teacher": teacher.name, "student": s.name, **pair_stats, "verdict": label, "verdict_reason": reason,
                      "scatter": {"teacher_maxprob": teacher_maxprob[scatter_rows].tolist(),
                                  "student_maxprob": student_maxprob[scatter_rows].tolist()},
                      "divergence": _example_divergence(teacher, s)})
        if settings.model_cis and labels is not None:  # positive: the student is better calibrated than its teacher
            pairs[-1]["calibration_difference"] = stats.paired_difference_cis(
                teacher.logits, s.logits, labels, n_bins=settings.n_bins, n_resamples=settings.n_bootstrap,
                seed=settings.seed)
    differences = student_differences({s.name: s.logits for s in students}, **boot) if len(students) > 1 else []
    warn_insufficient(n, "example", settings)
    return envelope(SCHEMA, settings, data={**(data_info or {}), "n": n, "label_names": teacher.label_names},
                    models=models, pairs=pairs, students=differences)


def _example_divergence(teacher: Predictions, student: Predictions) -> dict:
    """The pair's :func:`audit.stats.divergence.example_divergence`, its top examples named by id and label."""
    out = example_divergence(teacher.logits, student.logits)
    names = teacher.label_names or [str(k) for k in range(teacher.num_classes)]
    for row in out["top_contexts"]:
        row["id"] = teacher.ids[row["row"]] if teacher.ids else str(row["row"])
        row["teacher_top1"], row["student_top1"] = names[row["teacher_top1"]], names[row["student_top1"]]
    return out


def warn_insufficient(n_clusters: int, unit: str, settings: CompareSettings) -> None:
    """One warning line for an audit whose verdicts are all ``insufficient`` (too few bootstrap clusters)."""
    if n_clusters < settings.rule.min_clusters:
        warn(f"every verdict is insufficient: {too_few_clusters(n_clusters, unit, settings.rule)}")


def compare(teacher: ModelLike, students: list[ModelLike], data: str | TextData | None, *,
            names: list[str] | None = None, settings: CompareSettings | None = None,
            save_logits: str | Path | None = None) -> dict:
    """Load, evaluate and compare a teacher and its students on a data set.

    Args:
        teacher, students: model specs (paths, hub ids, predictions files) or loaded models.
        data: a data spec (see :func:`audit.load.data.load_data`), loaded data, or None when every model is a
            predictions file (then label-based metrics are left out).
        names: report names for teacher then students (default: from the paths).
        save_logits: a folder to write one ``<name>.safetensors`` per model into, for a model-free re-run.

    Under ``torchrun``/``accelerate launch`` every process evaluates its share of the batches
    (:mod:`audit.run.distributed`), gets all the logits back in the data's order and returns the same report as a
    single process would; only rank 0 writes ``save_logits``. With ``settings.cache`` the logits are kept in
    the prediction cache as they are computed (:mod:`audit.run.cache`), so an interrupted run resumes.

    Raises:
        AuditError: any bad input, before anything is written.
    """
    if save_logits is not None:
        check_outputs([Output(Path(save_logits), "folder", "save_logits")],
                      [s for s in (teacher, *students, data) if isinstance(s, str)])
        refuse_saved_token_logits(teacher, settings or CompareSettings())
    report, predictions = compare_with_predictions(teacher, students, data, names=names, settings=settings)
    if save_logits is not None and is_main_process():
        write_files(logits_files(predictions, Path(save_logits)))
    return report


def refuse_saved_token_logits(teacher: ModelLike, settings: CompareSettings) -> None:
    """Refuse, before any work, to keep the logits of a token audit.

    Raises:
        AuditError: the teacher is a causal LM (or a top-k file).
    """
    if audit_kind(teacher, settings) == "lm":
        raise AuditError("expected --save-logits only for classifiers, got a language-model audit: per-token logits "
                         "are as wide as the vocabulary; keep the report (--json) instead")


def compare_with_predictions(teacher: ModelLike, students: list[ModelLike], data: str | TextData | None, *,
                             names: list[str] | None = None,
                             settings: CompareSettings | None = None) -> tuple[dict, list[Predictions]]:
    """:func:`compare`'s report and every model's logits (teacher first), for callers that keep them.

    The audit follows the teacher's kind (:func:`audit.run.adapters.set_up`): causal LMs are audited token by token
    by :func:`audit.compare.audit_tokens`, whose per-token logits are never kept, so the list is empty then.
    """
    settings = settings or CompareSettings()
    refuse_generation(teacher, settings)
    setup = set_up(teacher, students, names, settings)
    if setup.kind == "callable":
        raise AuditError("expected model specs or loaded models, got a callable; audit callables with "
                         "audit.compare_callable and their DataLoader")
    audit = "lm" if setup.kind == "lm" else "logits" if all(m.saved for m in setup.models) else "classifier"
    for unused in unused_compare_options(settings, audit):
        warn(f"{unused}; drop it")
    if audit == "lm":
        return audit_tokens(setup, data, settings), []
    if settings.max_length is None:
        settings = dataclasses.replace(settings, max_length=DEFAULT_MAX_LENGTH)
    return audit_classifiers(setup, data, settings)


def audit_classifiers(setup: Setup, data: str | TextData | None,
                      settings: CompareSettings) -> tuple[dict, list[Predictions]]:
    """The classifier audit of :func:`compare_with_predictions` (every model's full (N, K) logits kept)."""
    device, dtype, group, loaded = setup.device, setup.dtype, setup.group, setup.models
    if settings.calibrate:  # refused before any model runs
        calibration_spec(data, settings)
        files = [m.name for m in loaded if m.saved]
        if files:
            raise AuditError(f"expected models to run on the calibration data with --calibrate, got logits files "
                             f"({', '.join(files)}); pass checkpoints, or audit without --calibrate")
    text_data = load_eval_data(data, settings) if isinstance(data, str) else data
    predictions = [_predictions(m, text_data, device, dtype, settings, group) for m in loaded]
    predictions, label_names = align_labels(predictions)
    labels = None
    data_info = {}
    if text_data is not None:
        labels = data_labels(text_data, label_names, predictions[0].num_classes)
        data_info = {"name": text_data.name, **text_data.info}
    report = compare_predictions(predictions[0], predictions[1:], labels, settings=settings, data_info=data_info)
    if text_data is not None:
        for pair in report["pairs"]:
            for row in pair["divergence"]["top_contexts"]:
                row["text"] = text_data.texts[row["row"]]
    report["settings"].update(device=str(device), dtype=str(dtype).removeprefix("torch."))
    if settings.calibrate:
        calibration = _calibration_predictions(loaded, data, text_data, label_names, device, dtype, settings, group)
        add_calibration(report, predictions, labels, *calibration, settings=settings)
    return report, predictions


def compare_callable(teacher: Callable, students: list[Callable], batches: Iterable, *,
                     names: list[str] | None = None, settings: CompareSettings | None = None,
                     label_names: list[str] | None = None) -> dict:
    """Audit callables (torch modules, functions) over the batches of a DataLoader: a notebook's teacher and
    students, no checkpoints.

    The loader is iterated once and every callable runs on each batch, so a shuffling loader gives all of them
    the same inputs (batch and output shapes: :class:`audit.run.adapters.CallableAdapter`). (B, K) logits with (B,)
    labels get the classifier audit of :func:`compare` (every model's full logits kept; schema compare/1);
    (B, T, V) logits with (B, T) labels (-100 where unscored) get the token audit of causal LMs (per-position
    scalars only, each row of the loader one cluster of the bootstrap; schema compare/2). It runs in this
    process alone (under torchrun every rank runs the whole loader) and caches nothing.

    Args:
        teacher, students: callables returning logits (or an object with ``.logits``) for a batch's inputs;
            torch modules are moved to ``settings.device`` in eval mode.
        batches: a DataLoader, or any iterable of ``(inputs, labels)`` or dicts with a ``labels`` key.
        names: report names, teacher first (default "teacher", "student", "student#2", ...).
        settings: bins, bootstrap, seed, verdict rule, ``model_cis``, device.
        label_names: class names of (B, K) logits, for the report.

    Raises:
        AuditError: no students, a spec instead of a callable, an empty loader, a batch without labels, outputs
            whose shape does not fit the labels, labels outside the classes, non-finite logits.

    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> settings = CompareSettings(n_bootstrap=20, progress=False, device="cpu")
    >>> report = compare_callable(torch.nn.Linear(4, 3), [torch.nn.Linear(4, 3)], [(x, y)], settings=settings)
    >>> report["models"]["student"]["n"], report["pairs"][0]["verdict"] in ("inherits", "moves_away", "inconclusive")
    (64, True)
    """
    if callable(students):
        raise AuditError("expected a list of students, got one callable; pass [student]")
    settings = settings or CompareSettings()
    if settings.calibrate:
        raise AuditError("expected calibrate=False for callables (a DataLoader comes without calibration data), got "
                         "True; fit temperatures on held-out logits with audit.stats.temperature.calibrated_metrics")
    setup = set_up(teacher, students, names, settings, kind="callable")
    for model in setup.models:
        model.to(setup.device)
    loader = iter(batches)
    first = next(loader, None)
    if first is None:
        raise AuditError("expected at least one batch, got an empty DataLoader; check the data")
    batches = itertools.chain([first], loader)
    if split_batch(first)[1].ndim == 2:
        with torch.inference_mode():
            columns, vocab_size = token_columns(callable_batches(setup.models, batches, setup.device),
                                                [m.name for m in setup.models])
        data_info = {"name": "dataloader", "kind": "python", "unit": "token", "n": int(columns["sequence"].numel()),
                     "n_sequences": int(columns["sequence"].unique().numel()), "label_names": None}
        return token_report(columns, setup.models, vocab_size, settings=settings, data_info=data_info,
                            run={"device": str(setup.device), "dtype": "as the callables return",
                                 "batch_size": "the DataLoader's"})
    logits, labels = callable_logits(setup.models, batches, setup.device)
    predictions = [_finite(Predictions(m.name, z, label_names=label_names, source=m.source))
                   for m, z in zip(setup.models, logits)]
    predictions, label_names = align_labels(predictions)
    k = predictions[0].num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise AuditError(f"expected labels in [0, {k}) for {k}-class logits, got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]; map the labels to class ids")
    report = compare_predictions(predictions[0], predictions[1:], labels, settings=settings,
                                 data_info={"name": "dataloader", "kind": "python"})
    report["settings"].update(device=str(setup.device), dtype="as the callables return")
    return report


def calibration_spec(data: str | TextData | None, settings: CompareSettings) -> str:
    """The calibration data of ``--calibrate``: ``--calibration-data``, else the dev split of a built-in data set
    or text corpus.

    Raises:
        AuditError: neither is available.
    """
    if settings.calibration_data is not None:
        return settings.calibration_data
    name = data.partition(":")[0] if isinstance(data, str) else None
    if name in builtin_datasets() or name in text_corpora():
        return f"{name}:dev"
    raise AuditError(f"expected --calibration-data (or a built-in data set, whose dev split is used) with --calibrate, "
                     f"got {data if isinstance(data, str) else 'loaded data'}; pass held-out labelled data to fit "
                     "the temperatures on")


def _calibration_predictions(loaded: list[Adapter], data, text_data: TextData | None, label_names: list[str] | None, device,
                             dtype, settings: CompareSettings, group) -> tuple[list[Predictions], torch.Tensor]:
    spec = calibration_spec(data, settings)
    cal_data = load_data(spec, split=None, text_column=settings.text_column, text_pair_column=settings.text_pair_column,
                         label_column=settings.label_column, id_column=settings.id_column)
    if cal_data.labels is None:
        raise AuditError(f"expected labelled calibration data, got no label column in {spec}; pass --label-column or "
                         "other --calibration-data")
    if text_data is not None and text_data.label_names and cal_data.label_names and \
            not set(cal_data.label_names) <= set(text_data.label_names):
        raise AuditError(f"expected calibration labels {sorted(text_data.label_names)} (those of the test data), got "
                         f"{sorted(cal_data.label_names)} in {spec}; calibrate on data of the same task")
    cal = [_predictions(m, cal_data, device, dtype, settings, group) for m in loaded]
    cal, _ = align_labels(cal)
    cal_labels = data_labels(cal_data, label_names, cal[0].num_classes)
    if int(cal_labels.unique().numel()) < 2:
        raise AuditError(f"expected at least 2 classes present in the calibration data {spec}, got "
                         f"{int(cal_labels.unique().numel())}; pass more varied held-out data")
    return cal, cal_labels


def add_calibration(report: dict, test: list[Predictions], test_labels: torch.Tensor | None,
                    calibration: list[Predictions], cal_labels: torch.Tensor, *, settings: CompareSettings) -> None:
    """Temperature scaling of every model (fitted on the calibration data, measured on the test data), the ratio
    T*_student / T*_teacher with a bootstrap CI, and whether each verdict survives calibration (in place).

    Raises:
        AuditError: test data without labels, or a fitted temperature at its search bound (degenerate logits).
    """
    if test_labels is None:
        raise AuditError("expected labelled test data with --calibrate, got none; pass --data with labels")
    temperatures = {}
    for t, c in zip(test, calibration):
        fitted = calibrated_metrics(c.logits, cal_labels, t.logits, test_labels, n_bins=settings.n_bins)
        report["models"][t.name].update(temperature=fitted["temperature"], calibrated=fitted["calibrated"])
        temperatures[t.name] = fitted["temperature"]
    teacher = test[0]
    scaled_teacher = scale_logits(teacher.logits, temperatures[teacher.name]).float()
    for pair, student, cal_student in zip(report["pairs"], test[1:], calibration[1:]):
        pair["temperature_ratio"] = temperature_ratio(calibration[0].logits, cal_student.logits, cal_labels,
                                                      n_resamples=min(settings.n_bootstrap, TEMPERATURE_RESAMPLES),
                                                      seed=settings.seed)
        pair_stats = pair_statistics(scaled_teacher, scale_logits(student.logits, temperatures[student.name]).float(),
                                n_bootstrap=settings.n_bootstrap, seed=settings.seed)
        label, reason = inheritance_verdict(pair_stats, float(stats.entropy(torch.softmax(scaled_teacher, -1)).mean()),
                                            settings.rule, n_clusters=int(test_labels.numel()))
        pair["calibrated"] = {"entropy_shift": pair_stats["entropy_shift"],
                              "corr_entropy_spearman": pair_stats["corr_entropy_spearman"],
                              "verdict": label, "verdict_reason": reason,
                              "verdict_survives": label == pair["verdict"]}
    report["calibration"] = {"data": calibration_spec_label(settings, report), "n": int(cal_labels.numel()),
                             "method": "one temperature per model minimising NLL on the calibration data "
                                       "(audit.stats.temperature.fit_temperature); metrics after scaling on the test data"}


def calibration_spec_label(settings: CompareSettings, report: dict) -> str:
    return settings.calibration_data or f"{report['data'].get('name', 'data')} (dev split)"


def load_eval_data(spec: str, settings: CompareSettings) -> TextData:
    """The data a comparison runs on: ``spec`` with the settings' split, columns and limit."""
    data = load_data(spec, split=settings.split, text_column=settings.text_column,
                     text_pair_column=settings.text_pair_column, label_column=settings.label_column,
                     id_column=settings.id_column, limit=settings.limit)
    if len(data) == 0:
        raise AuditError(f"expected at least one example, got empty data from {spec}; check the file or split")
    return data


def predict(model: ModelLike, data: str | TextData | None, *, name: str | None = None,
            settings: CompareSettings | None = None) -> Predictions:
    """One model's logits on ``data``, loaded and run as :func:`compare` does (for reuse across comparisons)."""
    settings = settings or CompareSettings()
    settings.validate()
    device, group, dtype = resolve_run(settings)
    text_data = load_eval_data(data, settings) if isinstance(data, str) else data
    return _predictions(load_adapter(model, name, "classifier", settings, teacher=True), text_data, device, dtype,
                        settings, group)


def _predictions(model: Adapter, data: TextData | None, device, dtype, settings: CompareSettings,
                 group: ProcessGroup | None = None) -> Predictions:
    """A classifier adapter's (N, K) logits on ``data``: saved ones matched to it, or the model run over it."""
    if model.saved:
        return model.model if data is None else match_to_data(model.model, data)
    if data is None:
        raise AuditError("expected --data for Hugging Face models, got none; pass a data file or a built-in name")
    classifier = model.model
    wanted = settings.max_length or DEFAULT_MAX_LENGTH
    settings = dataclasses.replace(settings, max_length=_max_length(classifier, wanted))
    store = _store(classifier, data, device, dtype, settings) if settings.cache else None
    predictions = predict_text(classifier, data, device=device, dtype=dtype, batch_size=settings.batch_size,
                               max_length=settings.max_length, progress=settings.progress, store=store, group=group)
    return _finite(predictions)


def _finite(predictions: Predictions) -> Predictions:
    """``predictions``, refused when a row holds NaN or inf (the model's weights do)."""
    bad = ~torch.isfinite(predictions.logits).all(-1)
    if bad.any():
        raise AuditError(f"expected finite logits from {predictions.name} ({predictions.source}), got NaN or inf on "
                         f"{int(bad.sum())} of {len(bad)} examples; its weights hold NaN or inf: check or re-save the "
                         "checkpoint")
    return predictions


def _max_length(model: TextClassifier, wanted: int) -> int:
    """``wanted``, clamped (with a warning) to the positions the model has."""
    positions = getattr(model.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < wanted:
        warn(f"--max-length {wanted} is more than {model.name} has positions for; using {positions}")
        return positions
    return wanted


def _store(model: TextClassifier, data: TextData, device, dtype, settings: CompareSettings) -> PredictionStore | None:
    """The cache entry of this model's logits on this data (see :mod:`audit.run.cache`), or None."""
    key = prediction_key(model, data, dtype=dtype, max_length=settings.max_length,
                         batch_size=resolve_batch_size(settings.batch_size, device), device=device)
    return open_store(key, name=model.name, width=model.num_classes)


def logits_files(predictions: list[Predictions], folder: Path) -> dict[Path, bytes]:
    """``{folder / "<name>.safetensors": bytes}``: every model's logits as :func:`load_predictions` reads them."""
    return {Path(folder) / f"{p.name}.safetensors": predictions_bytes(p) for p in predictions}


def compare_lm(teacher: str | CausalLM, students: list[str | CausalLM], data: str | Documents, *,
               names: list[str] | None = None, settings: CompareSettings | None = None) -> dict:
    """Audit a causal-LM teacher and its students token by token on ``data`` (text documents).

    Args:
        teacher, students: specs for :func:`load_causal_lm` (the teacher also a top-k logits file), or loaded
            :class:`CausalLM`.
        data: a spec for :func:`audit.load.data.text.read_documents`, or loaded :class:`Documents`.
        names: report names, teacher first (they replace loaded models' own names).
        settings: ``max_length`` (window length; None: the smallest context of the models), ``stride``, ``split``,
            ``text_column``, ``prompt_column``, ``completion_column``, ``limit`` (documents), ``limit_tokens``
            (scored tokens, whole windows), device, dtype, batch size, bins, bootstrap, seed, cache.

    Raises:
        AuditError: any bad input (different tokenizers, a window longer than a model's context, text too short),
            before the models run.
    """
    settings = settings or CompareSettings()
    return audit_tokens(set_up(teacher, students, names, settings, kind="lm"), data, settings)


def audit_tokens(setup: Setup, data: str | Documents, settings: CompareSettings) -> dict:
    """:func:`compare_lm` on models already set up (:func:`audit.run.adapters.set_up`, kind "lm")."""
    models = list(setup.models)
    lms = [m.model for m in models if not m.saved]
    check_same_tokenizer(lms)
    if settings.max_length is None:  # not given: windows as long as every model can read
        contexts = [m.context for m in lms if m.context is not None]
        settings = dataclasses.replace(settings, max_length=min(contexts, default=DEFAULT_MAX_LENGTH))
    for m in lms:
        if m.context is not None and settings.max_length > m.context:
            raise AuditError(f"expected --max-length at most {m.name}'s context of {m.context} tokens, got "
                             f"{settings.max_length}; pass --max-length {m.context} or less")
    documents = data if isinstance(data, Documents) else read_documents(
        data, split=settings.split, text_column=settings.text_column, prompt_column=settings.prompt_column,
        completion_column=settings.completion_column, limit=settings.limit)
    windows = tokenize_windows(documents, lms[0].tokenizer, max_length=settings.max_length, stride=settings.stride,
                               limit_tokens=settings.limit_tokens)
    documents = documents.part(0, windows.info["documents"])  # the documents read before --limit-tokens stopped
    prompts = generation_prompts(models, lms, documents, settings) if settings.generate else None
    vocab_size = int(lms[0].model.config.vocab_size)
    topk = None
    if isinstance(models[0], TopkFileAdapter):
        models[0] = models[0].read(windows, vocab_size)
        topk = models[0].k
    device, dtype = setup.device, setup.dtype
    batch_size = resolve_batch_size(settings.batch_size, device, "lm")
    calibration = None
    if settings.calibrate:
        if topk is not None:
            raise AuditError(f"expected a teacher with full logits for --calibrate, got the top-{topk} logits file "
                             f"{models[0].source} (its temperature cannot be fitted); pass the teacher's checkpoint "
                             "or drop --calibrate")
        calibration = fit_token_temperatures(models, lms[0].tokenizer, data, settings, device=device, dtype=dtype,
                                             batch_size=batch_size)
    scaled = None if calibration is None else {"calibrated": dict(enumerate(calibration["temperatures"]))}
    n_columns = len(column_names([m.name for m in models], len(models) - 1)) * (1 if scaled is None else 2)
    store = open_store(token_key([m.model for m in models], documents, windows, dtype=dtype, device=device,
                                 batch_size=batch_size, scaled=scaled),
                       name="+".join(m.name for m in models), width=n_columns) if settings.cache else None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    columns = evaluate_tokens(models, windows, device=device, dtype=dtype, batch_size=batch_size,
                              progress=settings.progress, store=store, group=setup.group, scaled=scaled,
                              timings=timings)
    evaluation_seconds = time.perf_counter() - start
    data_info = {"name": documents.name, **documents.info, "unit": "token", "n": int(columns["sequence"].numel()),
                 "n_sequences": len(documents), "windows": windows.info, "label_names": None}
    if settings.limit_tokens is not None:
        data_info["limit_tokens"] = {"requested": settings.limit_tokens, "taken": data_info["n"],
                                     "documents": len(documents)}
    report = token_report(columns, models, vocab_size, settings=settings, data_info=data_info, topk=topk,
                          run={"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                               "batch_size": batch_size}, calibration=calibration)
    add_token_divergence(report, columns, windows, lms[0].tokenizer)
    add_timing(report, models, timings, evaluation_seconds)
    if prompts is not None:
        add_on_policy(report, models, documents, prompts, vocab_size, settings, device=device, dtype=dtype,
                      batch_size=batch_size, group=setup.group)
    return report


GENERATIONS_SHOWN = 10  # completions per student written into the report: those where it diverged most
PAIR_NAMES = ("teacher", "student", "scatter")  # a pair's fields that are not statistics of the text it is on


def refuse_generation(teacher: ModelLike, settings: CompareSettings) -> None:
    """Refuse ``--generate`` before any work where the teacher is not a causal LM (a classifier, saved logits, a
    callable): only a causal LM writes text to audit.

    Raises:
        AuditError: ``settings.generate`` with a teacher of another kind.
    """
    kind = audit_kind(teacher, settings) if settings.generate else "lm"
    if kind != "lm":
        raise AuditError(f"expected a causal-LM teacher and students with --generate (models that write text), got a "
                         f"{KIND_NAMES[kind]} teacher; drop --generate, or pass *ForCausalLM checkpoints")


def generation_prompts(models: list[Adapter], lms: list[CausalLM], documents: Documents,
                       settings: CompareSettings) -> list[list[int]]:
    """``--generate``'s refusals and prompts (:func:`audit.run.generate.prompt_tokens`), before any model runs.

    Raises:
        AuditError: a teacher known only through a top-k logits file; ``--max-new-tokens`` that leaves no room for
            a prompt in the smallest context of the models; a prompt that leaves no room for it.
    """
    if isinstance(models[0], TopkFileAdapter):
        raise AuditError(f"expected a teacher that runs with --generate, got the top-k logits file {models[0].source}:"
                         " it holds the teacher's log-probabilities on the data's own tokens only and cannot score the "
                         "students' new text; pass the teacher's checkpoint, or drop --generate")
    contexts = [m.context for m in lms if m.context is not None]
    return prompt_tokens(documents, lms[0].tokenizer, max_length=settings.max_length,
                         max_new_tokens=settings.max_new_tokens, context=min(contexts, default=None))


def add_on_policy(report: dict, models: list[Adapter], documents: Documents, prompts: list[list[int]],
                  vocab_size: int, settings: CompareSettings, *, device: torch.device, dtype: torch.dtype,
                  batch_size: int, group: ProcessGroup | None = None) -> None:
    """``--generate``: audit each student on its own completions of the prompts, into ``report`` (in place).

    Each student completes every prompt (:func:`audit.run.generate.generate_completions`, cached); the teacher and
    that student are scored on the completion's tokens alone (:func:`audit.run.evaluate.evaluate_tokens` on
    :func:`audit.run.generate.completion_windows`) and summarised as the reference text is
    (:func:`audit.stats.summary.summarize_tokens`, each prompt one cluster of the bootstrap). Adds
    ``models[student]["on_policy"]`` (the student's per-model numbers on its own text, and how it wrote it),
    ``pairs[i]["on_policy"]`` (the pair's statistics and verdict on that text under the pair's own names, the
    teacher's numbers there as ``teacher_summary``, and the :data:`GENERATIONS_SHOWN` completions of largest mean
    KL(teacher || student)), and ``report["on_policy"]`` (what the prompts are and how the students sampled).
    """
    teacher, students = models[0], models[1:]
    sampling = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                "top_p": settings.top_p, "seed": settings.seed}
    for pair, student in zip(report["pairs"], students):
        lm = student.model
        store = open_store(generation_key(lm, prompts, dtype=dtype, device=device, batch_size=batch_size, **sampling),
                           name=f"{student.name} (generations)", width=settings.max_new_tokens) if settings.cache else None
        completions = generate_completions(lm, prompts, device=device, dtype=dtype, batch_size=batch_size, store=store,
                                           group=group, progress=settings.progress, **sampling)
        windows = completion_windows(prompts, completions, pad=pad_token(lm))
        pair_models = [teacher, student]
        width = len(column_names([m.name for m in pair_models], 1))
        store = open_store(columns_key([m.model for m in pair_models], windows, dtype=dtype, device=device,
                                       batch_size=batch_size),
                           name=f"{teacher.name}+{student.name} (own text)", width=width) if settings.cache else None
        columns = evaluate_tokens(pair_models, windows, device=device, dtype=dtype, batch_size=batch_size,
                                  progress=settings.progress, store=store, group=group)
        model_stats, (own,), _ = summarize_tokens(columns, [teacher.name, student.name], vocab_size, settings=settings)
        stops = stop_tokens(lm)
        ended = sum(1 for c in completions if c[-1] in stops)
        report["models"][student.name]["on_policy"] = {
            **{k: v for k, v in model_stats[student.name].items() if k != "role"},
            "generation": {"prompts": len(prompts), "tokens": sum(map(len, completions)), "ended_at_eos": ended,
                           "mean_length": sum(map(len, completions)) / len(completions)}}
        pair["on_policy"] = {**{k: v for k, v in own.items() if k not in PAIR_NAMES},
                             "n": int(columns["sequence"].numel()), "n_sequences": len(prompts),
                             "teacher_summary": {k: v for k, v in model_stats[teacher.name].items() if k != "role"},
                             "generations": most_divergent(columns, documents, prompts, completions, lm, stops)}
    report["on_policy"] = {
        **sampling, "n_prompts": len(prompts),
        "prompts": ("the prompt column" if documents.prompts is not None else
                    "each conversation rendered by the chat template up to its last assistant reply, with the "
                    "assistant header" if documents.messages is not None else
                    f"the first half of each document's first window (min(tokens, {settings.max_length}) // 2 tokens, "
                    f"at most the models' context less --max-new-tokens)"),
        "sampling": ("greedy decoding" if settings.temperature == 0 else
                     f"sampling at temperature {settings.temperature:g}, top-p {settings.top_p:g}, no top-k"),
        "scored": "each student's completion tokens (EOS included), by the teacher and that student, at temperature 1",
        "ci_method": "percentile cluster bootstrap by prompt"}


def most_divergent(columns: dict[str, torch.Tensor], documents: Documents, prompts: list[list[int]],
                   completions: list[list[int]], lm: CausalLM, stops: set[int]) -> list[dict]:
    """The :data:`GENERATIONS_SHOWN` completions with the largest mean KL(teacher || student) over their tokens,
    largest first: document id, prompt and completion text, tokens, whether it ended at EOS, and its mean KLs."""
    sequence = columns["sequence"]
    counts = torch.bincount(sequence, minlength=len(prompts)).double()
    means = {key: torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, sequence, columns[f"pair0.{key}"].double())
             / counts for key in ("kl", "kl_reverse")}
    order = sorted(range(len(prompts)), key=lambda i: -float(means["kl"][i]))[:GENERATIONS_SHOWN]
    decode = lm.tokenizer.decode
    return [{"id": documents.ids[i],
             "prompt": documents.prompts[i] if documents.prompts is not None else decode(prompts[i]),
             "completion": decode(completions[i], skip_special_tokens=True), "tokens": len(completions[i]),
             "ended_at_eos": completions[i][-1] in stops, "kl": float(means["kl"][i]),
             "kl_reverse": float(means["kl_reverse"][i])} for i in order]


def add_timing(report: dict, models: list, timings: dict[str, float], evaluation_seconds: float) -> None:
    """How long the token audit's evaluation took: per model its own forwards (``forward_seconds``, a causal
    LM's output layer excluded: the reduction applies it) and ``tokens_per_second`` over the positions it computed
    (null when every batch came from the cache); the whole loop and the reduction in ``report["timing"]``."""
    computed = int(timings.get("positions", 0))
    for i, m in enumerate(models):
        seconds = timings.get(f"model.{i}", 0.0)
        report["models"][m.name].update(forward_seconds=seconds,
                                        tokens_per_second=computed / seconds if computed and seconds > 0 else None)
    report["timing"] = {"evaluation_seconds": evaluation_seconds, "reduction_seconds": timings.get("reduction", 0.0),
                        "positions_computed": computed, "positions_cached": report["data"]["n"] - computed,
                        "tokens_per_second": computed / evaluation_seconds if computed else None}


def add_token_divergence(report: dict, columns: dict[str, torch.Tensor], windows: TokenWindows, tokenizer) -> None:
    """Each pair's ``divergence`` (:func:`audit.stats.divergence.divergence_breakdown` of its per-token columns),
    with its top tokens as strings and its largest-KL positions as text: the :data:`CONTEXT_TOKENS` tokens up to
    the position, the target token and both models' top-1 tokens."""
    mask = windows.targets != IGNORE_INDEX
    length = windows.input_ids.shape[1]
    window_row = torch.arange(len(windows))[:, None].expand_as(mask)[mask]
    position = torch.arange(length).expand_as(mask)[mask]
    token = windows.targets[mask]
    h_t = columns["0.entropy"]
    for j, pair in enumerate(report["pairs"], 1):
        kl, h_s = columns[f"pair{j - 1}.kl"], columns[f"{j}.entropy"]
        out = divergence_breakdown(kl, h_s - h_t, h_t, position=position, window_length=length, token=token)
        for entry in out["top_tokens"]:
            entry["token"] = tokenizer.decode([entry["token_id"]])
        contexts = row_details(out.pop("top_rows"), kl, h_t, h_s, columns["0.top1"], columns[f"{j}.top1"])
        for entry in contexts:
            w, c = int(window_row[entry["row"]]), int(position[entry["row"]])
            entry.update(sequence=int(windows.sequence_ids[w]), position=c,
                         context=tokenizer.decode(windows.input_ids[w, max(0, c + 1 - CONTEXT_TOKENS):c + 1].tolist()),
                         target=tokenizer.decode([int(token[entry["row"]])]),
                         teacher_top1=tokenizer.decode([entry["teacher_top1"]]),
                         student_top1=tokenizer.decode([entry["student_top1"]]))
        out["top_contexts"] = contexts
        pair["divergence"] = out


def fit_token_temperatures(models: list, tokenizer, data: str | Documents, settings: CompareSettings, *,
                           device: torch.device, dtype: torch.dtype, batch_size: int) -> dict:
    """``--calibrate`` for a token audit: one T* per model minimising the NLL of a seeded random sample of
    :data:`CALIBRATION_POSITIONS` scored tokens of the calibration text (:func:`calibration_spec`, windowed as
    the test text), and each student's T* ratio to the teacher's with a cluster-bootstrap CI by sequence.

    Returns:
        ``{"temperatures": [T* per model], "ratios": [per student], "data": spec, "n": tokens, "n_sequences"}``.

    Raises:
        AuditError: no calibration text, or text the tokenizer cannot window; TemperatureError (an AuditError)
            for degenerate logits.
    """
    spec = calibration_spec(data, settings)
    documents = read_documents(spec, text_column=settings.text_column, prompt_column=settings.prompt_column,
                               completion_column=settings.completion_column, limit=settings.limit)
    windows = tokenize_windows(documents, tokenizer, max_length=settings.max_length, stride=settings.stride)
    logits, targets, sequence = token_logits(models, windows, device=device, dtype=dtype, batch_size=batch_size,
                                             max_positions=CALIBRATION_POSITIONS, seed=settings.seed)
    resamples = min(settings.n_bootstrap, TEMPERATURE_RESAMPLES)
    return {"temperatures": [fit_temperature(z, targets) for z in logits],
            "ratios": [temperature_ratio(logits[0], z, targets, groups=sequence, n_resamples=resamples,
                                         seed=settings.seed) for z in logits[1:]],
            "data": spec, "n": int(targets.numel()), "n_sequences": int(sequence.unique().numel())}


def token_report(columns: dict[str, torch.Tensor], models: list, vocab_size: int, *, settings: CompareSettings,
                 data_info: dict, run: dict, topk: int | None = None, calibration: dict | None = None) -> dict:
    """The compare/2 report dict of per-position ``columns`` (:func:`evaluate_tokens`) of ``models`` (anything
    with ``name`` and ``source``, teacher first); ``run`` records how they ran (device, dtype, batch size);
    ``calibration`` (:func:`fit_token_temperatures`) adds the numbers after temperature scaling, read from the
    ``calibrated.*`` columns."""
    names = [m.name for m in models]
    warn_insufficient(int(columns["sequence"].unique().numel()), "token", settings)
    plain = {k: v for k, v in columns.items() if not k.startswith("calibrated.")}
    model_stats, pairs, differences = summarize_tokens(plain, names, vocab_size, settings=settings, topk=topk)
    for m in models:
        model_stats[m.name]["source"] = m.source
    extra = {}
    if calibration is not None:
        scaled = {k.removeprefix("calibrated."): v for k, v in columns.items() if k.startswith("calibrated.")}
        scaled_stats, scaled_pairs, _ = summarize_tokens({**scaled, "sequence": columns["sequence"]}, names,
                                                         vocab_size, settings=dataclasses.replace(settings,
                                                                                                  model_cis=False))
        for name, temperature in zip(names, calibration["temperatures"]):
            after = scaled_stats[name]
            model_stats[name].update(temperature=temperature, calibrated={
                "entropy": after["entropy_mean"], **{k: after[k] for k in CALIBRATED_TOKEN_FIELDS}})
        for pair, after, ratio in zip(pairs, scaled_pairs, calibration["ratios"]):
            pair["temperature_ratio"] = ratio
            pair["calibrated"] = {"entropy_shift": after["entropy_shift"],
                                  "corr_entropy_spearman": after["corr_entropy_spearman"],
                                  "verdict": after["verdict"], "verdict_reason": after["verdict_reason"],
                                  "verdict_survives": after["verdict"] == pair["verdict"]}
        extra["calibration"] = {
            "data": calibration["data"], "n": calibration["n"],
            "method": f"one temperature per model minimising NLL on {calibration['n']} random scored tokens of "
                      f"{calibration['n_sequences']} calibration documents (audit.stats.temperature.fit_temperature); "
                      "metrics after scaling on the test tokens"}
    return envelope(TOKEN_SCHEMA, settings, run={**run, "ci_method": "percentile cluster bootstrap by sequence (document)"},
                    data=data_info, models=model_stats, pairs=pairs, students=differences,
                    schema_changes=TOKEN_SCHEMA_CHANGES, **extra)
