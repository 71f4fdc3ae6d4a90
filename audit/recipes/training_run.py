"""What both training recipes (:mod:`audit.recipes.train`, :mod:`audit.recipes.train_lm`) share: the run's output folder, its
resumable checkpoint, and each process's slice of a batch in a data-parallel run.

A run folder holds ``run.json`` (the settings' ``run_key()``: what makes two runs the same run), a
``checkpoint.pt`` while training, and at the end the model, its tokenizer and ``training_record.json``. A folder
of the same run is resumed; a folder of another run is replaced only with ``overwrite``; a folder holding files
no run writes (:data:`RUN_FILES`) is refused whatever the flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.errors import AuditError
from audit.run.distributed import ProcessGroup

RECORD = "training_record.json"
CHECKPOINT = "checkpoint.pt"
TEACHER_LOGITS = "teacher_logits.safetensors"  # the classifier recipe's cached teacher logits
# every file a run writes; anything else in --out belongs to someone else and is never deleted
RUN_FILES = ("run.json", CHECKPOINT, RECORD, TEACHER_LOGITS, "config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "generation_config.json")


def same_run(out: Path, run_key: dict) -> bool:
    """True when ``out/run.json`` holds ``run_key`` (the folder is this run's, finished or not)."""
    try:
        return json.loads((out / "run.json").read_text()) == run_key
    except (OSError, ValueError):
        return False


def check_folder(out: Path, run_key: dict, overwrite: bool) -> None:
    """Refuse an ``out`` that holds a different run (without ``overwrite``) or files kd-audit did not write.

    Raises:
        AuditError: either of those.
    """
    if not out.is_dir() or not any(out.iterdir()) or same_run(out, run_key):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if foreign:
        raise AuditError(f"expected an empty output folder or a kd-audit run, got {out} with other files "
                         f"({', '.join(foreign[:3])}); pass another --out (--overwrite never deletes files it did "
                         "not write)")
    if not overwrite:
        raise AuditError(f"expected an empty output folder or one of this same run, got {out} holding a "
                         "different run; pass --overwrite or another --out")


def claim_folder(out: Path, run_key: dict) -> None:
    """Create ``out``, or accept it when it holds this same run (to resume); replace a different run's files
    (call :func:`check_folder` first: it refuses what may not be replaced)."""
    if not same_run(out, run_key) and out.is_dir():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(run_key, indent=2)))


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                    step: int, wall: float) -> None:
    """Write ``out/checkpoint.pt`` atomically: the model, optimiser and schedule states after ``step`` steps,
    the seconds trained so far and the CPU generator's state."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "step": step, "wall": wall, "rng": torch.get_rng_state()}
    write_atomic(out / CHECKPOINT, lambda p: torch.save(state, p))


def resume(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule) -> tuple[int, float]:
    """Load ``out/checkpoint.pt`` into ``model``, ``optimizer`` and ``schedule`` when there is one; return
    (steps done, seconds trained), (0, 0.0) for a fresh run."""
    path = out / CHECKPOINT
    if not path.exists():
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])  # dropout masks continue as in an uninterrupted run
    return state["step"], state["wall"]


def data_parallel(model: torch.nn.Module, group: ProcessGroup) -> torch.nn.Module:
    """``model`` wrapped in DDP in a launched run (gradients averaged over the processes), else itself."""
    if not group.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [group.local_rank] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)


def batch_slice(rows: torch.Tensor, group: ProcessGroup) -> tuple[torch.Tensor, float]:
    """This process's contiguous slice of a global batch of ``rows``, and the weight of its mean loss.

    DDP averages gradients over the processes, so a slice's mean loss is weighted by
    ``world_size * len(slice) / len(batch)``: the average is then the gradient of the whole batch's mean.
    A process whose slice is empty (a last batch smaller than the world) runs one row at weight 0.
    """
    if not group.distributed:
        return rows, 1.0
    mine = rows.tensor_split(group.world_size)[group.rank]
    if mine.numel() == 0:
        return rows[:1], 0.0
    return mine, group.world_size * mine.numel() / rows.numel()
