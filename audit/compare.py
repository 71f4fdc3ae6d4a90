"""The auditor: teacher and students + data -> a confidence/calibration report (a JSON-ready dict).

Data flows one way: specs -> :func:`audit.adapters.set_up` (one adapter per model, the audit picked by the
teacher's kind) -> for classifiers, :mod:`audit.data` -> :mod:`audit.predict` (every model's full (N, K) logits)
-> label alignment -> :func:`summarize_model` and :mod:`audit.inheritance` -> the report dict, which
:mod:`audit.report` renders; causal LMs go to :func:`audit.lm.audit_tokens` instead.
:func:`compare_predictions` is the pure core; :func:`compare` loads and runs; :func:`compare_callable` audits
callables over a DataLoader (a notebook's teacher and student, no checkpoints).

The report's JSON schema (``"kd-audit/compare/1"``) is documented in the README.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from audit import metrics
from audit.adapters import Adapter, Setup, callable_batches, load_adapter, resolve_run, set_up, split_batch
from audit.atomic import write_atomic
from audit.cache import CacheUnavailable, PredictionStore, prediction_key
from audit.data import TextData, load_data
from audit.distributed import ProcessGroup, is_main_process
from audit.errors import AuditError, warn
from audit.inheritance import pair_statistics, student_differences, verdict
from audit.lm import CausalLM
from audit.models import Predictions, TextClassifier, check_label_names, predictions_bytes
from audit.outputs import Output, check_outputs, write_files
from audit.predict import predict_text, resolve_batch_size
from audit.settings import MAX_BINS, MAX_BOOTSTRAP, CompareSettings  # noqa: F401 (re-exported)

SCHEMA = "kd-audit/compare/1"
BRIER_CONVENTION = "multiclass: mean over examples of sum_k (p_k - 1[k=y])^2, range [0, 2]"
HISTOGRAM_BINS = 20
CALIBRATION_EXTRAS = ("smece", "ece_debiased", "ece_sweep", "ece_toplabel", "ks")
TEMPERATURE_RESAMPLES = 200  # each refits two temperatures: 200 cost about 2 s on 2k examples
SCATTER_POINTS = 2000

ModelLike = str | Predictions | TextClassifier | CausalLM | Adapter


def summarize_model(logits: torch.Tensor, labels: torch.Tensor | None, *, n_bins: int = 15) -> dict:
    """Confidence and calibration of one model: every per-model number of the report.

    Args:
        logits: (N, K) logits. labels: (N,) int64 class ids, or None (label-free numbers only).
    """
    probs = torch.softmax(logits.float(), -1)
    k = probs.shape[1]
    entropy = metrics.entropy(probs)
    maxprob = metrics.max_probability(probs)
    log_k = float(torch.log(torch.tensor(float(k)))) if k > 1 else 1.0
    out = {
        "n": int(probs.shape[0]),
        "num_classes": k,
        "entropy_mean": float(entropy.mean()),
        "entropy_normalized": float(entropy.mean()) / log_k,
        "maxprob_mean": float(maxprob.mean()),
        "margin_mean": float(metrics.margin(probs).mean()),
        "entropy_histogram": _histogram(entropy, 0.0, log_k),
        "maxprob_histogram": _histogram(maxprob, 1.0 / k, 1.0),
    }
    if labels is None:
        return out
    correct = metrics.correct(probs, labels)
    calibration = metrics.calibration_errors(maxprob, correct, n_bins=n_bins)
    bins = calibration["bins"]
    out.update({
        "accuracy": float(correct.float().mean()),
        "nll": float(metrics.nll(logits.float(), labels).mean()),
        "brier": float(metrics.brier(probs, labels).mean()),
        "brier_convention": BRIER_CONVENTION,
        "ece": float(calibration["ece"]),
        "mce": float(calibration["mce"]),
        "ece_adaptive": float(calibration["ece_adaptive"]),
        "ece_classwise": float(metrics.classwise_ece(probs, labels, n_bins=n_bins)),
        "n_bins": n_bins,
        **{key: float(value) for key, value in metrics.calibration_extras(probs, labels, n_bins=n_bins).items()
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


def align_labels(models: list[Predictions]) -> tuple[list[Predictions], list[str] | None]:
    """Every model with its classes in the first named model's order (new objects; the inputs are left as
    they are), and that order.

    Raises:
        AuditError: different numbers of classes, label names that do not fit the logits (a count other than
            K, or a name twice), or named label sets that differ.
    """
    sizes = {p.name: p.num_classes for p in models}
    if len(set(sizes.values())) > 1:
        raise AuditError(f"expected the same number of classes in every model, got {sizes}; "
                         "compare models trained on the same label set")
    for p in models:
        check_label_names(p.label_names, p.num_classes, p.source)
    reference = next((p.label_names for p in models if p.label_names is not None), None)
    if reference is None:
        return list(models), None
    aligned = [dataclasses.replace(p, logits=logits, label_names=names)
               for p in models for logits, names in [in_class_order(p, reference)]]
    return aligned, list(reference)


def in_class_order(predictions: Predictions, label_names: list[str]) -> tuple[torch.Tensor, list[str] | None]:
    """``predictions``' logits with their columns in ``label_names`` order, matched by name (unnamed logits
    are taken to be in that order already), and the names they now have.

    Raises:
        AuditError: a named label set that differs from ``label_names``.
    """
    names = predictions.label_names
    if names is None or names == label_names:
        return predictions.logits, names
    if sorted(names) != sorted(label_names):
        raise AuditError(f"expected the label set {label_names}, got {names} from {predictions.name}; "
                         "teacher and students must predict the same classes")
    return predictions.logits[:, [names.index(n) for n in label_names]], list(label_names)


def data_labels(data: TextData, label_names: list[str] | None, num_classes: int) -> torch.Tensor | None:
    """The data's labels as class ids of the models' order.

    Raises:
        AuditError: a data label name the models do not know, or an id outside [0, K).
    """
    if data.labels is None:
        return None
    labels = torch.tensor(data.labels, dtype=torch.long)
    if data.label_names is not None and label_names is not None:
        unknown = sorted(set(data.label_names) - set(label_names))
        if unknown:
            raise AuditError(f"expected data labels among the models' labels {label_names}, got {unknown}; "
                             "pass data with the same label set, or --label-column")
        labels = torch.tensor([label_names.index(n) for n in data.label_names])[labels]
    elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise AuditError(f"expected data labels in [0, {num_classes}) for {num_classes}-class models, got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]; check --label-column or the label mapping")
    return labels


def match_to_data(predictions: Predictions, data: TextData) -> Predictions:
    """Reorder saved logits to the data's examples: by id when the file has ids, else by position.

    Raises:
        AuditError: ids missing from the file, or a count that does not match the data.
    """
    if predictions.ids is not None:
        row_of = {example_id: row for row, example_id in enumerate(predictions.ids)}
        missing = [i for i in data.ids if i not in row_of]
        if missing:
            raise AuditError(f"expected predictions for every example of {data.name}, got none for {len(missing)} "
                             f"ids in {predictions.source} (e.g. {missing[0]!r}); predict on the same data")
        rows = [row_of[i] for i in data.ids]
        return Predictions(predictions.name, predictions.logits[rows], list(data.ids), predictions.label_names,
                           predictions.source)
    if predictions.logits.shape[0] != len(data):
        raise AuditError(f"expected {len(data)} rows of logits (one per example of {data.name}), got "
                         f"{predictions.logits.shape[0]} in {predictions.source}; save ids with the logits or "
                         "predict on the same data")
    return Predictions(predictions.name, predictions.logits, list(data.ids), predictions.label_names,
                       predictions.source)


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
    if settings.model_cis and labels is not None:
        for p in (teacher, *students):
            models[p.name]["ci"] = metrics.model_cis(p.logits, labels, n_bins=settings.n_bins,
                                                     n_resamples=settings.n_bootstrap, seed=settings.seed)
    boot = dict(n_bootstrap=settings.n_bootstrap, seed=settings.seed)
    pairs = []
    scatter_rows = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))[:SCATTER_POINTS]
    teacher_maxprob = metrics.max_probability(torch.softmax(teacher.logits, -1))
    for s in students:
        stats = pair_statistics(teacher.logits, s.logits, **boot)
        label, reason = verdict(stats, models[teacher.name]["entropy_mean"], settings.rule)
        student_maxprob = metrics.max_probability(torch.softmax(s.logits, -1))
        pairs.append({"teacher": teacher.name, "student": s.name, **stats, "verdict": label, "verdict_reason": reason,
                      "scatter": {"teacher_maxprob": teacher_maxprob[scatter_rows].tolist(),
                                  "student_maxprob": student_maxprob[scatter_rows].tolist()}})
        if settings.model_cis and labels is not None:  # positive: the student is better calibrated than its teacher
            pairs[-1]["calibration_difference"] = metrics.paired_difference_cis(
                teacher.logits, s.logits, labels, n_bins=settings.n_bins, n_resamples=settings.n_bootstrap,
                seed=settings.seed)
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("progress", "cache")},
        "data": {**(data_info or {}), "n": n, "label_names": teacher.label_names},
        "models": models,
        "pairs": pairs,
        "students": student_differences({s.name: s.logits for s in students}, **boot) if len(students) > 1 else [],
    }


def versions() -> dict[str, str]:
    """Versions of what produced a report (read from package metadata: importing transformers costs memory)."""
    from importlib.metadata import version

    return {"kd-audit": version("kd-audit"), "torch": torch.__version__, "transformers": version("transformers"),
            "python": platform.python_version()}


def compare(teacher: ModelLike, students: list[ModelLike], data: str | TextData | None, *,
            names: list[str] | None = None, settings: CompareSettings | None = None,
            save_logits: str | Path | None = None) -> dict:
    """Load, evaluate and compare a teacher and its students on a data set.

    Args:
        teacher, students: model specs (paths, hub ids, predictions files) or loaded models.
        data: a data spec (see :func:`audit.data.load_data`), loaded data, or None when every model is a
            predictions file (then label-based metrics are left out).
        names: report names for teacher then students (default: from the paths).
        save_logits: a folder to write one ``<name>.safetensors`` per model into, for a model-free re-run.

    Under ``torchrun``/``accelerate launch`` every process evaluates its share of the batches
    (:mod:`audit.distributed`), gets all the logits back in the data's order and returns the same report as a
    single process would; only rank 0 writes ``save_logits``. With ``settings.cache`` the logits are kept in
    the prediction cache as they are computed (:mod:`audit.cache`), so an interrupted run resumes.

    Raises:
        AuditError: any bad input, before anything is written.
    """
    if save_logits is not None:
        check_outputs([Output(Path(save_logits), "folder", "save_logits")],
                      [s for s in (teacher, *students, data) if isinstance(s, str)])
    report, predictions = compare_with_predictions(teacher, students, data, names=names, settings=settings)
    if save_logits is not None and is_main_process():
        write_files(logits_files(predictions, Path(save_logits)))
    return report


def compare_with_predictions(teacher: ModelLike, students: list[ModelLike], data: str | TextData | None, *,
                             names: list[str] | None = None,
                             settings: CompareSettings | None = None) -> tuple[dict, list[Predictions]]:
    """:func:`compare`'s report and every model's logits (teacher first), for callers that keep them.

    The audit follows the teacher's kind (:func:`audit.adapters.set_up`): causal LMs are audited token by token
    by :func:`audit.lm.audit_tokens`, whose per-token logits are never kept, so the list is empty then.
    """
    settings = settings or CompareSettings()
    setup = set_up(teacher, students, names, settings)
    if setup.kind == "lm":
        from audit.lm import audit_tokens

        return audit_tokens(setup, data, settings), []
    if setup.kind == "callable":
        raise AuditError("expected model specs or loaded models, got a callable; audit callables with "
                         "audit.compare_callable and their DataLoader")
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
    the same inputs (batch and output shapes: :class:`audit.adapters.CallableAdapter`). (B, K) logits with (B,)
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
    setup = set_up(teacher, students, names, settings, kind="callable")
    for model in setup.models:
        model.to(setup.device)
    loader = iter(batches)
    first = next(loader, None)
    if first is None:
        raise AuditError("expected at least one batch, got an empty DataLoader; check the data")
    tokens = split_batch(first)[1].ndim == 2
    with torch.inference_mode():
        stream = callable_batches(setup.models, itertools.chain([first], loader), setup.device)
        if tokens:
            from audit.lm import token_columns, token_report

            columns, vocab_size = token_columns(stream, [m.name for m in setup.models])
            data_info = {"name": "dataloader", "kind": "python", "unit": "token", "n": int(columns["sequence"].numel()),
                         "n_sequences": int(columns["sequence"].unique().numel()), "label_names": None}
            return token_report(columns, setup.models, vocab_size, settings=settings, data_info=data_info,
                                run={"device": str(setup.device), "dtype": "as the callables return",
                                     "batch_size": "the DataLoader's"})
        logits: list[list[torch.Tensor]] = [[] for _ in setup.models]
        labels = []
        for batch in stream:
            for out, model_batch in zip(logits, batch):
                out.append(model_batch.logits.float().cpu())
            labels.append(batch[0].targets.cpu())
    predictions = [_finite(Predictions(m.name, torch.cat(out), label_names=label_names, source=m.source))
                   for m, out in zip(setup.models, logits)]
    predictions, label_names = align_labels(predictions)
    labels = torch.cat(labels)
    k = predictions[0].num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise AuditError(f"expected labels in [0, {k}) for {k}-class logits, got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]; map the labels to class ids")
    report = compare_predictions(predictions[0], predictions[1:], labels, settings=settings,
                                 data_info={"name": "dataloader", "kind": "python"})
    report["settings"].update(device=str(setup.device), dtype="as the callables return")
    return report


def calibration_spec(data: str | TextData | None, settings: CompareSettings) -> str:
    """The calibration data of ``--calibrate``: ``--calibration-data``, else the dev split of a built-in.

    Raises:
        AuditError: neither is available.
    """
    from audit.data import builtin_datasets

    if settings.calibration_data is not None:
        return settings.calibration_data
    name = data.partition(":")[0] if isinstance(data, str) else None
    if name in builtin_datasets():
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
    from audit.calibrate import calibrated_metrics, scale_logits, temperature_ratio

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
        stats = pair_statistics(scaled_teacher, scale_logits(student.logits, temperatures[student.name]).float(),
                                n_bootstrap=settings.n_bootstrap, seed=settings.seed)
        label, reason = verdict(stats, float(metrics.entropy(torch.softmax(scaled_teacher, -1)).mean()), settings.rule)
        pair["calibrated"] = {"entropy_shift": stats["entropy_shift"],
                              "corr_entropy_spearman": stats["corr_entropy_spearman"],
                              "verdict": label, "verdict_reason": reason,
                              "verdict_survives": label == pair["verdict"]}
    report["calibration"] = {"data": calibration_spec_label(settings, report), "n": int(cal_labels.numel()),
                             "method": "one temperature per model minimising NLL on the calibration data "
                                       "(audit.calibrate.fit_temperature); metrics after scaling on the test data"}


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
    settings = dataclasses.replace(settings, max_length=_max_length(classifier, settings.max_length))
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
    """The cache entry of this model's logits on this data (see :mod:`audit.cache`); None when the cache
    cannot be written (the run goes on uncached, with a warning)."""
    key = prediction_key(model, data, dtype=dtype, max_length=settings.max_length,
                         batch_size=resolve_batch_size(settings.batch_size, device), device=device)
    try:
        return PredictionStore.open(key, name=model.name, num_classes=model.num_classes)
    except CacheUnavailable as err:
        warn(f"running without the prediction cache: {err}")
        return None


def logits_files(predictions: list[Predictions], folder: Path) -> dict[Path, bytes]:
    """``{folder / "<name>.safetensors": bytes}``: every model's logits as :func:`load_predictions` reads them."""
    return {Path(folder) / f"{p.name}.safetensors": predictions_bytes(p) for p in predictions}


def json_ready(value):
    """``value`` with every non-finite float made ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def json_text(report: dict) -> str:
    """The report as strict JSON text."""
    return json.dumps(json_ready(report), indent=2, allow_nan=False)


def write_json(report: dict, path: str | Path) -> None:
    """Write the report as strict JSON, atomically (a temp file renamed into place)."""
    write_atomic(path, lambda tmp: tmp.write_text(json_text(report)))
