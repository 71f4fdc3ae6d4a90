"""Data-parallel runs under ``torchrun`` or ``accelerate launch``: the process group and the two collectives.

Both launchers start one process per device and set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus
``MASTER_ADDR``/``MASTER_PORT``); :func:`process_group` reads them and initialises ``torch.distributed``
once (NCCL for CUDA devices, gloo on CPU). Without a launcher everything here is the single-process
identity, so library code calls it unconditionally. Evaluation deals whole batches round-robin to the
ranks (batch ``b`` runs on rank ``b % world_size``) and :func:`gather_rows` puts every rank's rows back in
the data's order, so metrics see exactly the logits of a single-process run.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from audit.errors import AuditError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run.

    Attributes:
        rank: global rank in ``[0, world_size)``; rank 0 alone prints and writes files.
        world_size: number of processes (1 without a launcher).
        local_rank: rank on this machine; picks the CUDA device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> bool:
    """True inside a multi-process launch (``WORLD_SIZE`` > 1); reads the environment only."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True on rank 0 or without a launcher: the process that prints the report and writes files.

    Reads ``RANK`` from the environment, so it works before (and without) :func:`process_group`.

    >>> is_main_process()  # no launcher
    True
    """
    return int(os.environ.get("RANK", "0")) == 0


def process_group(device: torch.device | None = None) -> ProcessGroup:
    """Join the launcher's process group (once per process) and return this process's place in it.

    Args:
        device: the device evaluation runs on; a CUDA device selects NCCL, anything else gloo.

    Raises:
        AuditError: the launcher's environment is incomplete (``RANK``/``LOCAL_RANK`` missing).

    >>> process_group()  # no launcher: the single-process group, nothing initialised
    ProcessGroup(rank=0, world_size=1, local_rank=0)
    """
    if not launched():
        return ProcessGroup()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise AuditError(f"expected the launcher's variables RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT with "
                         f"WORLD_SIZE={os.environ['WORLD_SIZE']}, got {missing} unset; start with torchrun or "
                         "accelerate launch")
    group = ProcessGroup(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", group.local_rank)
                                if cuda else None)
        atexit.register(_leave)
    return group


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """``device`` with the CUDA index of this rank (``cuda`` -> ``cuda:LOCAL_RANK``) in a launched run."""
    if group.distributed and device.type == "cuda":
        return torch.device("cuda", group.local_rank)
    return device


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: torch.Tensor, values: torch.Tensor, total: int, group: ProcessGroup) -> torch.Tensor:
    """Every rank's ``values`` placed at their ``rows`` of one ``(total, K)`` tensor, on every rank.

    Args:
        rows: (n_r,) int64 row indices this rank computed (disjoint across ranks, covering ``[0, total)``).
        values: (n_r, K) float32 CPU values of those rows.
        total: number of rows of the result.

    Returns:
        (total, K) float32 CPU tensor, bitwise the values each rank sent.

    >>> gather_rows(torch.tensor([1, 0]), torch.tensor([[1.0], [0.0]]), 2, ProcessGroup())
    tensor([[0.],
            [1.]])
    """
    out = torch.empty(total, values.shape[1], dtype=values.dtype)
    if not group.distributed:
        out[rows] = values
        return out
    device = _comm_device()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(group.world_size)]
    dist.all_gather(counts, torch.tensor([rows.numel()], device=device))
    longest = int(max(c.item() for c in counts))
    # all_gather needs equal shapes: pad every rank's block to the longest, then drop the padding
    padded = torch.zeros(longest, 1 + values.shape[1], dtype=torch.float64, device=device)
    padded[: rows.numel(), 0] = rows.double()
    padded[: rows.numel(), 1:] = values.double()  # float64 holds float32 values and int indices exactly
    blocks = [torch.empty_like(padded) for _ in range(group.world_size)]
    dist.all_gather(blocks, padded)
    for block, count in zip(blocks, counts):
        block = block[: int(count.item())].cpu()
        out[block[:, 0].long()] = block[:, 1:].to(values.dtype)
    return out


def broadcast(obj: object, group: ProcessGroup) -> object:
    """Rank 0's ``obj`` on every rank (a picklable object, e.g. the report dict)."""
    if not group.distributed:
        return obj
    box = [obj if group.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def barrier(group: ProcessGroup) -> None:
    """Wait until every rank gets here (e.g. rank 0 has written a file the others read)."""
    if group.distributed:
        dist.barrier()


def on_main(fn: Callable[[], T], group: ProcessGroup) -> T:
    """``fn()`` run on rank 0 alone (e.g. creating the output folder); every rank returns its result.

    An :class:`~audit.errors.AuditError` raised by ``fn`` is raised on every rank, so all of them exit 2 with
    the same message instead of the others waiting for rank 0.

    >>> on_main(lambda: 41 + 1, ProcessGroup())
    42
    """
    result, error = None, None
    if group.is_main:
        try:
            result = fn()
        except AuditError as err:
            error = str(err)
    result, error = broadcast((result, error), group)
    if error is not None:
        raise AuditError(error)
    return result
