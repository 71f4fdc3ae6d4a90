"""The loop of every evaluation: a plan of batches, dealt to the processes of a run, resumed from the cache.

A caller describes its run as a plan, the rows each batch fills in a fixed order that depends only on the data
and the batch size (so a resumed run and every process of a launched run agree on it), and a function that
computes the batches it is given. :func:`evaluate_plan` does the rest, the same way for every kind of model:

1. this process takes its share of the plan: batch ``b`` runs on rank ``b % world_size``;
2. its batches already in the prediction cache (:class:`audit.cache.PredictionStore`) are read, not run;
3. the others are computed under ``torch.inference_mode`` and written to the cache as they finish, so a killed
   run resumes from them;
4. every process gets every row back (:func:`audit.distributed.gather_rows`).

The callers: :func:`audit.predict.predict_text` (a classifier's logits, one row per example) and
:func:`audit.lm.evaluate_tokens` (the columns of the token audit, one row per scored position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from audit.distributed import ProcessGroup, gather_rows

if TYPE_CHECKING:
    from rich.progress import Progress

    from audit.cache import PredictionStore

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
        group: the processes of a launched run (:func:`audit.distributed.process_group`); one process without.
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
