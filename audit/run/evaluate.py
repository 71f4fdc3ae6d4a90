"""The loop of every evaluation: a plan of batches, dealt to the processes of a run, resumed from the cache.

A caller describes its run as a plan, the rows each batch fills in a fixed order that depends only on the data
and the batch size (so a resumed run and every process of a launched run agree on it), and a function that
computes the batches it is given. :func:`evaluate_plan` does the rest, the same way for every kind of model:

1. this process takes its share of the plan: batch ``b`` runs on rank ``b % world_size``;
2. its batches already in the prediction cache (:class:`audit.run.cache.PredictionStore`) are read, not run;
3. the others are computed under ``torch.inference_mode`` and written to the cache as they finish, so a killed
   run resumes from them;
4. every process gets every row back (:func:`audit.run.distributed.gather_rows`).

The callers: :func:`audit.run.evaluate.predict_text` (a classifier's logits, one row per example) and
:func:`audit.run.evaluate.evaluate_tokens` (the columns of the token audit, one row per scored position).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from audit.errors import AuditError
from audit.load.data import TextData
from audit.load.data.text import IGNORE_INDEX, TokenWindows
from audit.load.models import Predictions, TextClassifier
from audit.reduce.reduction import column_names, reduce_batches, reduction_block
from audit.run.adapters import (
    WINDOW,
    CallableAdapter,
    CausalLMAdapter,
    ClassifierAdapter,
    adapter_of,
    batch_plan,
    callable_batches,
)
from audit.run.device import resolve_batch_size, resolve_device
from audit.run.distributed import ProcessGroup, gather_rows

if TYPE_CHECKING:
    from rich.progress import Progress

    from audit.run.cache import PredictionStore

Computed = Iterable[tuple[int, torch.Tensor, torch.Tensor]]


def progress_bar(enabled: bool) -> Progress:
    """A transient rich progress bar on stderr; rich only draws it when the task outlives its refresh."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=not enabled)


def evaluate_plan(sizes: Sequence[int], compute: Callable[[set[int]], Computed], *, total: int, width: int,
                  description: str, store: PredictionStore | None = None, group: ProcessGroup | None = None,
                  progress: bool = False) -> torch.Tensor:
    """The values of every batch of a plan, on every process.

    Args:
        sizes: how many rows each batch fills, in plan order (batch ``b`` is ``sizes[b]``); for the progress bar.
        compute: given the set of batch indices to run, yields ``(index, rows, values)`` for each of them:
            (n,) int64 rows of the result and (n, width) float32 CPU values.
        total: rows of the result; the batches of the plan fill each exactly once.
        width: columns of the values (the ``num_classes`` of ``store``).
        description: the progress bar's label.
        store: the cache entry of this run (its key is the caller's): cached batches are read, computed ones added.
        group: the processes of a launched run (:func:`audit.run.distributed.process_group`); one process without.
        progress: draw a progress bar (on the main process only).

    Returns:
        (total, width) float32 CPU tensor, bitwise the values ``compute`` yielded or the cache held.

    >>> sizes = [2, 1]
    >>> def compute(wanted):
    ...     for b in sorted(wanted):
    ...         rows = torch.arange(2 * b, 2 * b + sizes[b])
    ...         yield b, rows, 10 * rows[:, None].float()
    >>> evaluate_plan(sizes, compute, total=3, width=1, description="demo")
    tensor([[ 0.],
            [10.],
            [20.]])
    """
    group = group or ProcessGroup()
    mine = set(range(group.rank, len(sizes), group.world_size))
    cached = mine & store.cached_batches() if store is not None else set()
    done_rows, done_values = (store.load(cached) if cached
                              else (torch.empty(0, dtype=torch.int64), torch.empty(0, width)))
    rows, values = [done_rows], [done_values]
    with progress_bar(progress and group.is_main) as bar, torch.inference_mode():
        task = bar.add_task(description, total=sum(sizes[b] for b in mine))
        bar.advance(task, done_rows.numel())
        for index, batch_rows, batch_values in compute(mine - cached):
            rows.append(batch_rows)
            values.append(batch_values)
            if store is not None:
                store.add(index, batch_rows, batch_values)
            bar.advance(task, batch_rows.numel())
    if store is not None:
        store.flush()
    return gather_rows(torch.cat(rows), torch.cat(values), total, group)


def predict_text(
    classifier: TextClassifier, data: TextData, *, device: torch.device, dtype: torch.dtype,
    batch_size: int | str = "auto", max_length: int = 256, progress: bool = True,
    store: PredictionStore | None = None, group: ProcessGroup | None = None,
) -> Predictions:
    """Logits of a Hugging Face classifier on every example of ``data``, in the data's order.

    Batches follow :func:`batch_plan`. With ``store`` (a :class:`audit.run.cache.PredictionStore`), batches
    already on disk are read instead of run and new ones are written as they finish, so a killed run
    resumes. With ``group`` (:func:`audit.run.distributed.process_group` in a launched run), this process runs
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
    [logits], labels = callable_logits([adapter], batches, device)
    return Predictions(name=name, logits=logits, label_names=label_names), labels


def callable_logits(models: list[CallableAdapter], batches: Iterable,
                    device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every callable's (N, K) float32 CPU logits over the batches of a DataLoader, iterated once (teacher first),
    and the (N,) int64 labels."""
    logits: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    with torch.inference_mode():
        for batch in callable_batches(models, batches, device):
            for out, model_batch in zip(logits, batch):
                out.append(model_batch.logits.float().cpu())
            labels.append(batch[0].targets.cpu())
    return [torch.cat(out) for out in logits], torch.cat(labels)


def _batches(windows: TokenWindows, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, len(windows))) for start in range(0, len(windows), size)]


def token_columns(stream: Iterable[list], names: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The columns of :func:`evaluate_tokens` (``"sequence"`` = each position's group) from a stream of
    per-batch lists of :class:`audit.run.adapters.Batch` (teacher first), and the vocabulary size.

    Raises:
        AuditError: no scored position in the stream.
    """
    blocks, groups, vocab_size = [], [], 0
    for batches in stream:
        blocks.append(reduction_block(reduce_batches(batches)))
        groups.append(batches[0].groups)
        vocab_size = batches[-1].logits.shape[1]
    values = torch.cat(blocks)
    if values.shape[0] == 0:
        raise AuditError("expected at least one scored position, got labels that are all -100; label the tokens "
                         "to score")
    columns = {c: values[:, i] for i, c in enumerate(column_names(names, len(names) - 1))}
    columns["sequence"] = torch.cat(groups)
    return columns, vocab_size


def _clock(device: torch.device) -> float:
    """Seconds on the CPU clock once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _timed(stream: Iterable, timings: dict[str, float], key: str, device: torch.device) -> Iterator:
    """``stream``'s items, the seconds spent producing them added to ``timings[key]``."""
    items = iter(stream)
    while True:
        start = _clock(device)
        try:
            item = next(items)
        except StopIteration:
            return
        timings[key] = timings.get(key, 0.0) + _clock(device) - start
        yield item


def evaluate_tokens(models: list, windows: TokenWindows, *, device: torch.device, dtype: torch.dtype,
                    batch_size: int, progress: bool = False, store: PredictionStore | None = None,
                    group: ProcessGroup | None = None,
                    scaled: Mapping[str, Mapping[int, float]] | None = None,
                    timings: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Per-position columns of the teacher (``models[0]``) and its students on every scored token.

    ``models`` are :class:`CausalLM` or adapters (:mod:`audit.run.adapters`); a top-k teacher
    (:class:`audit.run.adapters.TopkFileAdapter`, read for these windows) stands in with its file, and its columns
    and KLs use the tail bucket of :mod:`audit.reduce.topk` (approximations stated there). Per batch every model's
    adapter yields its logits of the same positions and :func:`reduce_batches` turns them into columns.

    ``scaled`` adds views of the same forwards at other temperatures: ``{name: {model index: T}}`` reduces those
    models' logits divided by their T together (the first index as their teacher), into the columns
    ``"<name>.<column>"`` (``--calibrate``: every model at its T*; the LM grid: the teacher at each of its
    temperatures).

    ``timings`` (a dict, filled in): seconds each model's adapter spent producing its batches (``"model.<i>"``;
    a causal LM's body, its output layer being applied in the reduction), seconds in the reduction
    (``"reduction"``: output layers and columns of every model) and the positions computed (``"positions"``;
    batches read from the cache are not), on the CPU clock after a device synchronisation.

    Returns:
        ``{"0.entropy": (P,), ..., "pair0.kl": (P,), ..., "sequence": (P,) int64}`` float32 CPU columns in the
        row-major order of ``windows.targets != -100``.
    """
    adapters = [adapter_of(m) for m in models]
    scored = (windows.targets != IGNORE_INDEX).sum(1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), scored.cumsum(0)])
    columns = column_names([m.name for m in adapters], len(adapters) - 1)
    for name, view in (scaled or {}).items():
        columns += [f"{name}.{c}" for c in column_names([adapters[i].name for i in view], len(view) - 1)]
    plan = _batches(windows, batch_size)

    def blocks(wanted: set[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        # a causal LM's logits stay its hidden states and output layer until the reduction multiplies them out,
        # a tile of positions and vocabulary at a time, into its own buffer
        streams = [m.batches(windows, plan, wanted, device=device, dtype=dtype,
                             **({"lazy": True} if isinstance(m, CausalLMAdapter) else {})) for m in adapters]
        if timings is not None:
            streams = [_timed(s, timings, f"model.{i}", device) for i, s in enumerate(streams)]
        for batches in zip(*streams):  # each model's batch of the same windows, teacher first
            index = batches[0].index
            start = _clock(device)
            block = reduction_block(reduce_batches(list(batches)))
            for view in (scaled or {}).values():
                views = [dataclasses.replace(batches[i], logits=batches[i].logits / t) for i, t in view.items()]
                block = torch.cat([block, reduction_block(reduce_batches(views))], 1)
                del views
            del batches  # no frame keeps the logits while the caller stores the block
            a, b = plan[index]
            if timings is not None:
                timings["reduction"] = timings.get("reduction", 0.0) + _clock(device) - start
                timings["positions"] = timings.get("positions", 0) + int(offsets[b] - offsets[a])
            yield index, torch.arange(int(offsets[a]), int(offsets[b])), block

    all_values = evaluate_plan([int(offsets[b] - offsets[a]) for a, b in plan], blocks, total=int(offsets[-1]),
                               width=len(columns), description="evaluating tokens", store=store, group=group,
                               progress=progress)
    out = {c: all_values[:, i] for i, c in enumerate(columns)}
    out["sequence"] = windows.sequence_ids[:, None].expand_as(windows.targets)[windows.targets != IGNORE_INDEX]
    return out


def token_logits(models: list, windows: TokenWindows, *, device: torch.device, dtype: torch.dtype, batch_size: int,
                 max_positions: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Every model's full logits on a seeded random sample of at most ``max_positions`` scored positions of
    ``windows`` (all of them when there are fewer): what fitting a temperature needs, in bounded memory.

    Returns:
        ``(logits, targets, sequence)``: one (P, V) float32 CPU tensor per model (teacher first), the (P,) targets
        and the (P,) document of each position, in the row-major order of ``windows.targets != -100``.
    """
    adapters = [adapter_of(m) for m in models]
    scored = (windows.targets != IGNORE_INDEX).sum(1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), scored.cumsum(0)])
    total = int(offsets[-1])
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_positions]] = True
    plan = _batches(windows, batch_size)
    logits: list[list[torch.Tensor]] = [[] for _ in adapters]
    targets = []
    with torch.inference_mode():
        streams = [m.batches(windows, plan, set(range(len(plan))), device=device, dtype=dtype) for m in adapters]
        for batches in zip(*streams):
            a, b = plan[batches[0].index]
            rows = keep[int(offsets[a]):int(offsets[b])].to(device)
            for out, batch in zip(logits, batches):
                out.append(batch.logits[rows].float().cpu())
            targets.append(batches[0].targets[rows].cpu())
    sequence = windows.sequence_ids[:, None].expand_as(windows.targets)[windows.targets != IGNORE_INDEX]
    return [torch.cat(out) for out in logits], torch.cat(targets), sequence[keep]
