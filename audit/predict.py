"""Run models over data and collect their logits.

Batches are sorted by token length within windows of rows (less padding, bounded memory), run under
``torch.inference_mode``; with ``batch_size="auto"`` a CUDA out-of-memory error halves the batch and retries
instead of failing. Hooks: a :class:`audit.cache.PredictionStore` makes a run resumable, and an
:class:`audit.distributed.ProcessGroup` splits the batches over the processes of a launched run (both through
:func:`audit.evaluate.evaluate_plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from audit.adapters import CallableAdapter, ClassifierAdapter, callable_batches
from audit.cache import PredictionStore
from audit.data import TextData
from audit.distributed import ProcessGroup
from audit.errors import AuditError
from audit.evaluate import evaluate_plan
from audit.models import Predictions, TextClassifier

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_BATCH = {"cuda": 256, "cpu": 64}
WINDOW = 8192  # rows tokenized and length-sorted together


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


def batch_plan(n: int, size: int, window: int = WINDOW) -> list[tuple[int, int]]:
    """The batches of :func:`predict_text` as ``(window_start, batch_size)``, in run order.

    Rows are taken a window of ``window`` consecutive rows at a time (only one window is tokenized at
    once, which bounds host memory on large data); a window is sorted by token length, longest first, and
    cut into batches of ``size``. The plan depends only on ``n``, ``size`` and ``window``, so a resumed run
    and every process of a launched run agree on it: batch ``b`` runs on rank ``b % world_size``.

    >>> batch_plan(5, 2, window=4)
    [(0, 2), (0, 2), (4, 1)]
    """
    return [(lo, min(size, min(window, n - lo) - start))
            for lo in range(0, n, window) for start in range(0, min(window, n - lo), size)]


def predict_text(
    classifier: TextClassifier, data: TextData, *, device: torch.device, dtype: torch.dtype,
    batch_size: int | str = "auto", max_length: int = 256, progress: bool = True,
    store: PredictionStore | None = None, group: ProcessGroup | None = None,
) -> Predictions:
    """Logits of a Hugging Face classifier on every example of ``data``, in the data's order.

    Batches follow :func:`batch_plan`. With ``store`` (a :class:`audit.cache.PredictionStore`), batches
    already on disk are read instead of run and new ones are written as they finish, so a killed run
    resumes. With ``group`` (:func:`audit.distributed.process_group` in a launched run), this process runs
    its share of the batches and every process returns all the logits.

    Returns:
        Predictions with (N, K) float32 CPU logits and the data's ids.

    Raises:
        AuditError: a batch that does not fit in GPU memory even at batch size 1 (or at a fixed batch size).
    """
    size = resolve_batch_size(batch_size, device)
    plan = batch_plan(len(data), size)
    adapter = ClassifierAdapter(classifier)

    def logits_of(wanted: set[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for batch in adapter.batches(data, plan, wanted, device=device, dtype=dtype, max_length=max_length,
                                     batch_size=size, halving=batch_size == "auto", window=WINDOW):
            yield batch.index, batch.groups, batch.logits.float().cpu()

    logits = evaluate_plan([rows for _, rows in plan], logits_of, total=len(data), width=classifier.num_classes,
                           description=f"evaluating {classifier.name}", store=store, group=group, progress=progress)
    return Predictions(name=classifier.name, logits=logits, ids=list(data.ids), label_names=classifier.label_names,
                       source=classifier.source)


def resolve_batch_size(batch_size: int | str, device: torch.device) -> int:
    """"auto" -> :data:`AUTO_BATCH` for the device type; an int as given."""
    return AUTO_BATCH[device.type if device.type in AUTO_BATCH else "cpu"] if batch_size == "auto" else int(batch_size)


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
    adapter = CallableAdapter(model, name)
    adapter.to(device)
    outputs, labels = [], []
    with torch.inference_mode():
        for [batch] in callable_batches([adapter], batches, device):
            outputs.append(batch.logits.float().cpu())
            labels.append(batch.targets.cpu())
    return Predictions(name=name, logits=torch.cat(outputs), label_names=label_names), torch.cat(labels)
