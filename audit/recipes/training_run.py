"""The one training loop both recipes fill (:mod:`audit.recipes.train`, :mod:`audit.recipes.train_lm`), and what
goes with it: the run's output folder, its resumable checkpoint, and each process's slice of a batch in a
data-parallel run.

A recipe reads and checks its inputs, claims the folder, builds its student and hands :func:`fit` the model, a
loss of one batch, its parameters and a ``record`` hook; :func:`fit` does the rest the same way for both: the
optimiser and schedule, resuming from the checkpoint, the DDP wrap, the batch order, each process's slice, the
steps, the checkpoints, and at the end the saved model, tokenizer and record. This is the shape TRL gives its
trainers, without the auditor: no training module imports :mod:`audit.compare`.

A run folder holds ``run.json`` (the settings' ``run_key()``: what makes two runs the same run), a
``checkpoint.pt`` while training, and at the end the model, its tokenizer and ``training_record.json``. A folder
of the same run is resumed; a folder of another run is replaced only with ``overwrite``; a folder holding files
no run writes (:data:`RUN_FILES`) is refused whatever the flags.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from audit.atomic import write_atomic
from audit.errors import AuditError
from audit.run.device import resolve_device
from audit.run.distributed import ProcessGroup, local_device, process_group
from audit.run.evaluate import progress_bar
from audit.settings import LMTrainSettings, TrainSettings

RECORD = "training_record.json"
CHECKPOINT = "checkpoint.pt"
TEACHER_LOGITS = "teacher_logits.safetensors"  # the classifier recipe's cached teacher logits
# every file a run writes; anything else in --out belongs to someone else and is never deleted
RUN_FILES = ("run.json", CHECKPOINT, RECORD, TEACHER_LOGITS, "config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "generation_config.json")


@dataclass(frozen=True)
class TrainingBatch:
    """What a recipe's loss gets each step: the step (0-based, counted over the whole run) and this process's
    rows of that step's batch (indices into the recipe's examples)."""

    step: int
    rows: torch.Tensor


@dataclass(frozen=True)
class Trained:
    """What :func:`fit` did.

    Attributes:
        steps: the run's total steps.
        first_step: the step this call started from (0 unless it resumed a checkpoint).
        losses: the loss of each step this call took.
        wall_seconds: seconds trained, earlier calls of a resumed run included.
        stopped_at: the step ``stop_after`` ended the call at, None when the run finished.
        record: the training record the run wrote, None when stopped.
    """

    steps: int
    first_step: int
    losses: list[float]
    wall_seconds: float
    stopped_at: int | None = None
    record: dict | None = None


BatchLoss = Callable[[torch.nn.Module, TrainingBatch], torch.Tensor]


def fit(settings: TrainSettings | LMTrainSettings, model: torch.nn.Module, loss: BatchLoss, *,
        examples: int, parameters: list, tokenizer, record: Callable[[Trained], dict], group: ProcessGroup,
        steps: int | None = None, terms: Callable[[torch.Tensor], int] = len, unit: str | None = None,
        progress: bool = True, stop_after: int | None = None) -> Trained:
    """Train ``model`` on ``examples`` rows in ``settings.out``; return what was done.

    Each epoch is a permutation of the rows drawn from ``settings.seed`` and the epoch alone, cut into batches of
    ``settings.batch_size``, so step ``s`` sees the same rows whether the run resumed or not. A step is
    ``loss(forward, batch)`` (``forward`` is the DDP-wrapped ``model`` in a launched run, ``batch`` this process's
    rows), backward, gradients clipped to norm 1, an AdamW step over ``parameters`` (a list of tensors or of
    parameter groups) at ``settings.lr`` and ``weight_decay``, and a linear schedule with ``settings.warmup`` of
    the steps as warm-up. A checkpoint is written every ``settings.checkpoint_every`` steps and at the end; a
    folder holding one resumes from it (model, optimiser, schedule and the CPU generator, so dropout continues as
    in an uninterrupted run). At the end ``model`` is put in eval mode, ``record(trained)`` builds the training
    record (the recipe's fields and its dev evaluation; it runs on every process), and rank 0 saves the model,
    ``tokenizer`` and record and removes the checkpoint.

    Args:
        settings: the recipe's settings (lr, weight_decay, warmup, batch_size, epochs, seed, checkpoint_every,
            loss, out).
        steps: the run's total steps; None: ``settings.epochs`` passes over the rows (at least one step).
        terms: the number of terms the loss averages over in some rows (rows by default, scored tokens for a
            causal LM): a process's slice is weighted by its share of them (:func:`batch_slice`).
        unit: the name of those terms, to show their rate per second in the progress bar; None shows no rate.
        stop_after: end after that many steps as if killed (a checkpoint is written first); calling again resumes.
    """
    out = Path(settings.out)
    steps_per_epoch = math.ceil(examples / settings.batch_size)
    total_steps = steps or max(1, round(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(settings.warmup * total_steps), total_steps)
    step, wall = resume(out, model, optimizer, schedule)
    started = time.perf_counter() - wall
    forward = data_parallel(model, group)
    first_step, losses, counted, loop_started = step, [], 0, time.perf_counter()

    model.train()
    with progress_bar(progress and group.is_main) as bar:
        task = bar.add_task(f"training {settings.loss}", total=total_steps, completed=step)
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            order = torch.randperm(examples, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            rows, weight = batch_slice(order[index * settings.batch_size:(index + 1) * settings.batch_size], group,
                                       terms)
            value = loss(forward, TrainingBatch(step, rows))
            optimizer.zero_grad(set_to_none=True)
            (value * weight).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(value.item())
            description = f"training {settings.loss} loss {losses[-1]:.4f}"
            if unit is not None:
                counted += terms(rows)
                description += f" {counted / max(time.perf_counter() - loop_started, 1e-9):,.0f} {unit}/s"
            bar.update(task, advance=1, description=description)
            done = step == total_steps or step == stop_after
            if (step % settings.checkpoint_every == 0 or done) and group.is_main:
                save_checkpoint(out, model, optimizer, schedule, step, time.perf_counter() - started)
            if step == stop_after and step < total_steps:
                return Trained(total_steps, first_step, losses, time.perf_counter() - started, stopped_at=step)

    model.eval()
    trained = Trained(total_steps, first_step, losses, time.perf_counter() - started)
    finished = record(trained)
    if group.is_main:
        model.save_pretrained(out)
        # the chat template inside tokenizer_config.json: a separate .jinja file is not one of RUN_FILES, so
        # --overwrite would take the folder for someone else's
        tokenizer.save_pretrained(out, save_jinja_files=False)
        write_atomic(out / RECORD, lambda p: p.write_text(json.dumps(finished, indent=2)))
        (out / CHECKPOINT).unlink(missing_ok=True)
    return replace(trained, record=finished)


def mixed_precision(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (a recipe's forward passes), a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def training_device(spec: str | None) -> tuple[torch.device, ProcessGroup]:
    """The device this process trains on (``cuda:LOCAL_RANK`` in a launched run) and its process group."""
    device = resolve_device(spec)
    group = process_group(device)
    return local_device(device, group), group


def finished_record(out: Path, run_key: dict, overwrite: bool) -> dict | None:
    """The record of this same run when ``out`` holds it finished, else None (a run to start or resume).

    Raises:
        AuditError: ``out`` holds a different run (without ``overwrite``) or files kd-audit did not write.
    """
    check_folder(out, run_key, overwrite)
    if same_run(out, run_key) and (out / RECORD).exists():
        return json.loads((out / RECORD).read_text())
    return None


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


def batch_slice(rows: torch.Tensor, group: ProcessGroup,
                terms: Callable[[torch.Tensor], int] = len) -> tuple[torch.Tensor, float]:
    """This process's contiguous slice of a global batch of ``rows``, and the weight of its mean loss.

    DDP averages gradients over the processes, so a slice's mean loss (over ``terms(slice)`` terms: rows, or
    a causal LM's scored tokens) is weighted by ``world_size * terms(slice) / terms(batch)``: the average is
    then the gradient of the whole batch's mean. A process whose slice is empty (a last batch smaller than the
    world) runs one row at weight 0.
    """
    if not group.distributed:
        return rows, 1.0
    mine = rows.tensor_split(group.world_size)[group.rank]
    if mine.numel() == 0:
        return rows[:1], 0.0
    return mine, group.world_size * terms(mine) / terms(rows)
