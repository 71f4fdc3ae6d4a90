"""Predictions put on common ground: every model's classes in one order, saved logits matched to the data's
examples, and the data's labels as class ids of that order."""

from __future__ import annotations

import dataclasses

import torch

from audit.errors import AuditError
from audit.load.data import TextData
from audit.load.models import Predictions, check_label_names


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
