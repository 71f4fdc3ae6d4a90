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
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from audit import stats
from audit.errors import AuditError, warn
from audit.load.data import TextData, calibration_spec, load_data
from audit.load.labels import align_labels, data_labels, match_to_data
from audit.load.models import Predictions, TextClassifier, predictions_bytes
from audit.outputs import Output, check_outputs, write_files
from audit.report.envelope import envelope
from audit.run.adapters import (
    Adapter,
    Setup,
    audit_kind,
    callable_batches,
    load_adapter,
    set_up,
    split_batch,
)
from audit.run.cache import PredictionStore, open_store, prediction_key
from audit.run.device import resolve_batch_size, resolve_run
from audit.run.distributed import ProcessGroup, is_main_process
from audit.run.evaluate import callable_logits, predict_text, token_columns
from audit.settings import (  # noqa: F401 (MAX_BINS, MAX_BOOTSTRAP re-exported)
    DEFAULT_MAX_LENGTH,
    MAX_BINS,
    MAX_BOOTSTRAP,
    CompareSettings,
    unused_compare_options,
)
from audit.stats.divergence import example_divergence
from audit.stats.inheritance import (
    inheritance_verdict,
    pair_statistics,
    student_differences,
    warn_insufficient,
)
from audit.stats.summary import SCATTER_POINTS, summarize_model
from audit.stats.temperature import (
    calibrated_metrics,
    scale_logits,
    temperature_ratio,
)
from audit.token_audit import (  # noqa: F401 (compare_lm, TOKEN_SCHEMA: re-exported, the API's)
    TEMPERATURE_RESAMPLES,
    TOKEN_SCHEMA,
    ModelLike,
    audit_tokens,
    compare_lm,
    refuse_generation,
    token_report,
)

SCHEMA = "kd-audit/compare/1"


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
    by :func:`audit.token_audit.audit_tokens`, whose per-token logits are never kept, so the list is empty then.
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


