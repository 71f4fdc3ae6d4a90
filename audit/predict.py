"""Run models over data and collect their logits.

Batches are sorted by token length (less padding), run under ``torch.inference_mode``; with
``batch_size="auto"`` a CUDA out-of-memory error halves the batch and retries instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from audit.data import TextData
from audit.errors import AuditError
from audit.models import Predictions, TextClassifier

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_BATCH = {"cuda": 256, "cpu": 64}


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise AuditError(f"expected a device like cpu, cuda or cuda:1, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AuditError(f"expected an available device, got {device!r} but CUDA is not available; use --device cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise AuditError(f"expected device cpu, cuda or mps, got {device!r}")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> bf16 on GPUs that support it, else fp32."""
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if dtype not in DTYPES:
        raise AuditError(f"expected --dtype auto, fp32, bf16 or fp16, got {dtype!r}")
    return DTYPES[dtype]


def progress_bar(enabled: bool) -> Progress:
    """A transient rich progress bar on stderr; rich only draws it when the task outlives its refresh."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=not enabled)


def predict_text(
    classifier: TextClassifier, data: TextData, *, device: torch.device, dtype: torch.dtype,
    batch_size: int | str = "auto", max_length: int = 256, progress: bool = True,
) -> Predictions:
    """Logits of a Hugging Face classifier on every example of ``data``, in the data's order.

    Returns:
        Predictions with (N, K) float32 CPU logits and the data's ids.
    """
    encodings = classifier.tokenizer(
        data.texts, data.text_pairs, truncation=True, max_length=max_length, padding=False
    )["input_ids"]
    order = sorted(range(len(data)), key=lambda i: len(encodings[i]), reverse=True)
    size = AUTO_BATCH[device.type if device.type in AUTO_BATCH else "cpu"] if batch_size == "auto" else int(batch_size)
    model = classifier.model.to(device=device, dtype=dtype)
    logits = torch.empty(len(data), classifier.num_classes, dtype=torch.float32)
    start = 0
    with progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task(f"evaluating {classifier.name}", total=len(data))
        while start < len(order):
            rows = order[start:start + size]
            batch = classifier.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, return_tensors="pt")
            try:
                out = model(**{k: v.to(device) for k, v in batch.items()}).logits
            except torch.cuda.OutOfMemoryError:
                if batch_size != "auto" or size == 1:
                    raise AuditError(f"expected the batch to fit in GPU memory, got out of memory at batch size "
                                     f"{size}; pass a smaller --batch-size or --batch-size auto") from None
                size //= 2
                torch.cuda.empty_cache()
                continue
            logits[rows] = out.float().cpu()
            start += len(rows)
            bar.advance(task, len(rows))
    return Predictions(name=classifier.name, logits=logits, ids=list(data.ids), label_names=classifier.label_names,
                       source=classifier.source)


def predict_module(
    model: Callable[..., torch.Tensor], batches: Iterable, *, name: str, device: torch.device | str | None = None,
    label_names: list[str] | None = None,
) -> tuple[Predictions, torch.Tensor]:
    """Logits of any callable (an ``nn.Module``, a vision model, a jitted function) over a DataLoader.

    Each batch is ``(inputs, labels)``, or a dict with a ``labels`` key whose other entries are passed as
    keyword arguments. The callable returns logits (N, K) or an object with a ``.logits`` attribute.

    Returns:
        (Predictions, labels) with float32 CPU logits and int64 labels.
    """
    device = resolve_device(device if isinstance(device, str) or device is None else str(device))
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    outputs, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            if isinstance(batch, dict):
                batch = dict(batch)
                labels.append(torch.as_tensor(batch.pop("labels")))
                out = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            else:
                inputs, batch_labels = batch
                labels.append(torch.as_tensor(batch_labels))
                out = model(inputs.to(device) if torch.is_tensor(inputs) else inputs)
            outputs.append(getattr(out, "logits", out).float().cpu())
    if not outputs:
        raise AuditError("expected at least one batch, got an empty DataLoader; check the data")
    return Predictions(name=name, logits=torch.cat(outputs), label_names=label_names), torch.cat(labels).long()
