"""The replication recipe: the paper's experiment grid (:data:`audit.recipes.grid.CLASSIFIER_GRID`) trained and
evaluated on one task, and a verdict on each claim C1a-C2b and X1.

Per seed it trains (with :func:`audit.recipes.train.train`) a big ERM teacher, small ERM / LS / KD students
(KD at the grid's T = 2), self-distillation (big -> big), reversed KD (small ERM -> big) and, for inheritance, KD
students of teachers with graded confidence (the big teacher's logits at several temperatures, and a big LS
teacher). Every model is evaluated on the dev split by :func:`audit.compare.compare_with_predictions` (one compare
JSON per teacher group), whose logits give each example's entropy, correctness and confidence and every arm's
post-hoc temperature T*; :mod:`audit.recipes.classifier_claims` decides the claims from them. Runs already in
``out`` are reused, so an interrupted replication resumes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from audit import stats
from audit.compare import MAX_BOOTSTRAP, CompareSettings, compare_with_predictions, logits_files, predict
from audit.errors import AuditError
from audit.load.data import TextData, builtin_datasets, load_data
from audit.load.models import Predictions, save_predictions
from audit.outputs import write_files
from audit.recipes.classifier_claims import (
    aggregate,
    majority_accuracy,
    mean_ci,
    temperature_claim,
    temperature_statistics,
    untrained_arms,
)
from audit.recipes.grid import CLASSIFIER_GRID, Arm, ClassifierProfile
from audit.recipes.train import TrainSettings, train
from audit.report.envelope import versions, write_json
from audit.report.schema import REPLICATE as SCHEMA
from audit.run.device import resolve_device
from audit.run.distributed import is_main_process, launched
from audit.run.evaluate import progress_bar
from audit.stats.claims import ClaimResult, claim_rows, direction_survives, overall_verdicts

ALL = "all"
PROFILES = CLASSIFIER_GRID.profiles


@dataclass
class ReplicateSettings:
    """Options of one replication: a built-in ``task`` (or ``"all"``: every built-in task, each in
    ``out/<task>``), the ``out`` folder, a profile of :data:`PROFILES`, ``seeds`` (None:
    the profile's), the device, the bootstrap resamples of every CI, and ``eval_tasks``: built-in tasks with
    the same labels whose test splits every arm is also audited on (domain shift), and ``jobs``: arms trained
    at once, each in its own worker process (None: 2 on a CPU with at least 2 threads, else 1)."""

    task: str
    out: str
    profile: str = "quick"
    seeds: int | None = None
    device: str | None = None
    n_bootstrap: int = 1000
    eval_tasks: tuple[str, ...] = ()
    jobs: int | None = None

    def validate(self) -> ClassifierProfile:
        """Check every option before anything is written; return the profile.

        Raises:
            AuditError: an unknown task, eval task, profile or device, an eval task whose labels differ from
                the task's, seeds < 1, bootstrap resamples outside [1, MAX_BOOTSTRAP], or an ``out`` that is
                a file or lies under one.
        """
        for task in (self.task, *self.eval_tasks):
            if task not in builtin_datasets() and not (task == ALL and task == self.task):
                raise AuditError(f"expected a built-in task ({', '.join(builtin_datasets())}) or {ALL!r} for "
                                 f"--task, got {task!r}; see python -m audit data list")
        for other in self.eval_tasks:
            if not any(_label_names(other) == _label_names(task) for task in self.tasks()):
                raise AuditError(f"expected --eval-task with the labels of {self.task} "
                                 f"{list(_label_names(self.tasks()[0]))}, got {other} with "
                                 f"{list(_label_names(other))}; audit on a task with the same labels")
        if self.profile not in PROFILES:
            raise AuditError(f"expected --profile {' or '.join(PROFILES)}, got {self.profile!r}")
        if self.seeds is not None and self.seeds < 1:
            raise AuditError(f"expected --seeds >= 1, got {self.seeds}; pass at least one seed")
        if not 1 <= self.n_bootstrap <= MAX_BOOTSTRAP:
            raise AuditError(f"expected --bootstrap in [1, {MAX_BOOTSTRAP}], got {self.n_bootstrap}; every claim "
                             "needs a bootstrap CI")
        out = Path(self.out).expanduser()
        for path in (out, *out.parents):
            if path.exists() and not path.is_dir():
                raise AuditError(f"expected --out to be a folder, got {out}, and {path} is a file; name a folder")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise AuditError(f"expected --jobs >= 1, got {self.jobs!r}; pass 1 to train the arms one after another")
        if (self.jobs or 1) > 1 and launched():
            raise AuditError(f"expected --jobs 1 under torchrun/accelerate, got --jobs {self.jobs}; each arm is "
                             "already data-parallel there")
        resolve_device(self.device)
        return PROFILES[self.profile]

    def worker_count(self) -> int:
        """The arms trained at once: ``jobs``, or by default 2 worker processes of one half of the threads each
        on a CPU (the quick profile's matrices are too small for two threads to help each other much; timings
        in bench/RESULTS.md), and 1 on a GPU or under torchrun."""
        if self.jobs is not None:
            return self.jobs
        if resolve_device(self.device).type != "cpu" or launched():
            return 1
        return min(2, torch.get_num_threads())

    def tasks(self) -> list[str]:
        """The tasks trained: ``[task]``, or every built-in task for ``"all"``."""
        return list(builtin_datasets()) if self.task == ALL else [self.task]


def _label_names(task: str) -> tuple[str, ...]:
    return builtin_datasets()[task].classes


def train_arms(arms: Sequence[Arm], train_arm: Callable[[Arm], object], *, jobs: int, progress: bool) -> None:
    """Call ``train_arm`` on every arm, each once its teacher arm is trained: in order when ``jobs`` is 1,
    else up to ``jobs`` at once in spawned worker processes that share the parent's threads (``train_arm``
    must pickle). The first error stops the grid once the arms in training finish (trained arms stay, so a
    rerun resumes). A worker dies with this process, however it ends (:func:`die_with_parent`); the pool spawns
    its workers from the thread that calls this function, which outlives them (the pool is shut down before it
    returns)."""
    if jobs == 1:
        for arm in arms:
            train_arm(arm)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    pending, trained, running = list(arms), set(), {}
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads, os.getpid()))
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"training arms, {jobs} at a time", total=len(arms))
            while pending or running:
                ready = [a for a in pending if a.teacher is None or a.teacher in trained]
                for arm in ready:
                    pending.remove(arm)
                    running[pool.submit(train_arm, arm)] = arm
                if not running:
                    raise AuditError(f"expected every teacher arm in the grid, got none for {pending[0].name}")
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    trained.add(running.pop(future).name)
                    bar.advance(task)
    finally:
        pool.shutdown(cancel_futures=True)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_worker(threads: int, parent: int) -> None:
    """A worker process's initializer: die with ``parent``, then take its share of the threads."""
    die_with_parent(parent)
    torch.set_num_threads(threads)


def die_with_parent(parent: int, *, poll_seconds: float = 1.0) -> None:
    """End this process when process ``parent`` ends, even by SIGKILL (when no handler or ``finally`` of the
    parent runs to stop its children).

    On Linux the kernel does it: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` kills this process the moment its parent
    exits, whatever this process is doing (in a long C kernel, holding the GIL); no polling. A parent that died
    before the call (while this worker was still importing) leaves no signal to come: this process was already
    adopted, its ``os.getppid()`` is no longer ``parent``, and it exits at once. Elsewhere (no prctl) a daemon
    thread checks ``os.getppid()`` every ``poll_seconds`` and exits when it changes. The exit is ``os._exit``:
    the arm in training is lost, and its folder (written atomically, a checkpoint every few steps) resumes on
    the next run."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _train_arm(arm: Arm, seed_dir: Path, profile: ClassifierProfile, settings: ReplicateSettings, seed: int,
               progress: bool) -> Path:
    out = seed_dir / arm.name
    teacher = None
    if arm.teacher is not None:
        teacher = str(seed_dir / arm.teacher)
        if arm.teacher_temperature != 1.0:
            teacher = str(_scaled_teacher(seed_dir, arm, profile, settings))
    options = (dict(label_smoothing=arm.label_smoothing, teacher=teacher, **CLASSIFIER_GRID.kd_settings)
               if arm.loss != "ce" else {})
    train(TrainSettings(data=settings.task, model=getattr(profile, arm.model), out=str(out), loss=arm.loss,
                        epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr, head_lr=profile.head_lr,
                        warmup=profile.warmup, max_length=profile.max_length, train_limit=profile.train_limit,
                        eval_limit=profile.eval_limit, seed=seed, device=settings.device, **options),
          progress=progress)
    return out


def _scaled_teacher(seed_dir: Path, arm: Arm, profile: ClassifierProfile, settings: ReplicateSettings) -> Path:
    """``arm``'s teacher: its teacher arm's logits on the training split divided by its teacher temperature, a
    sharper or flatter teacher (computed once per seed, then read from ``seed_dir/teachers``)."""
    path = seed_dir / "teachers" / f"{CLASSIFIER_GRID.teacher_of(arm)}.safetensors"
    if not path.exists():
        data = load_data(settings.task, split="train", limit=profile.train_limit)
        source = predict(str(seed_dir / arm.teacher), data, name=arm.teacher,
                         settings=CompareSettings(device=settings.device, dtype="fp32", progress=False,
                                                  max_length=profile.max_length))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_predictions(replace(source, logits=source.logits / arm.teacher_temperature), path)
    return path


def _evaluate_seed(seed_dir: Path, arms: Sequence[Arm], data: TextData, folder: Path, settings: ReplicateSettings,
                   profile: ClassifierProfile, progress: bool) -> dict[str, Predictions]:
    """Logits of every arm and scaled teacher on ``data``, through compare (one JSON per teacher group in
    ``folder``, the logits also saved in ``folder/<split>-logits``)."""
    compare_settings = CompareSettings(n_bootstrap=settings.n_bootstrap, device=settings.device, progress=progress,
                                       max_length=profile.max_length)
    split = data.info.get("split", "eval")
    audit = partial(_audit, data=data, folder=folder, logits_dir=folder / f"{split}-logits", settings=compare_settings)
    groups: dict[str, list[str]] = {}
    for arm in arms:
        teacher = arm.teacher or ("big-erm" if arm.name != "big-erm" else None)
        if teacher is not None and arm.teacher_temperature == 1.0:
            groups.setdefault(teacher, []).append(arm.name)
    logits: dict[str, Predictions] = {}
    for teacher, students in groups.items():
        logits |= audit(str(seed_dir / teacher), [str(seed_dir / s) for s in students], names=[teacher, *students])
    for arm in arms:
        if arm.teacher_temperature != 1.0:
            teacher_name = CLASSIFIER_GRID.teacher_of(arm)
            scaled = replace(logits[arm.teacher], name=teacher_name,
                             logits=logits[arm.teacher].logits / arm.teacher_temperature)
            scaled_path = folder / "teachers" / f"{split}-{teacher_name}.safetensors"
            scaled_path.parent.mkdir(parents=True, exist_ok=True)
            save_predictions(scaled, scaled_path)
            logits |= audit(str(scaled_path), [str(seed_dir / arm.name)], names=[teacher_name, arm.name])
    return logits


def _audit(teacher: str, students: list[str], *, names: list[str], data: TextData, folder: Path, logits_dir: Path,
           settings: CompareSettings) -> dict[str, Predictions]:
    """Every model's logits on ``data`` by name, from compare (its report in ``folder/compare-<teacher>.json``, the
    logits also saved in ``logits_dir``)."""
    report, predictions = compare_with_predictions(teacher, students, data, names=names, settings=settings)
    if is_main_process():
        write_files(logits_files(predictions, logits_dir))
    write_json(report, folder / f"compare-{names[0]}.json")
    return {p.name: p for p in predictions}


def _columns(logits: dict[str, Predictions], labels: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per model: its (N, K) ``logits`` and per example (N,) its ``entropy``, ``correct`` (top-1) and ``maxprob``."""
    columns = {}
    for name, predictions in logits.items():
        probs = torch.softmax(predictions.logits, -1)
        columns[name] = {"logits": predictions.logits, "entropy": stats.entropy(probs),
                         "correct": stats.correct(probs, labels), "maxprob": stats.max_probability(probs)}
    return columns


def replicate(settings: ReplicateSettings, *, progress: bool = True) -> dict:
    """Run (or resume) the grid on ``settings.task``, or on every built-in task for ``"all"``; return the
    summary (also ``out/summary.json``: schema ``kd-audit/recipes/replicate/1`` for one task, ``kd-audit/replicate-all/1``
    aggregating the tasks, each of which keeps its own summary in ``out/<task>``).

    Raises:
        AuditError: a refused option (:meth:`ReplicateSettings.validate`), before anything is written.
    """
    profile = settings.validate()
    if settings.task != ALL:
        return _replicate_task(settings, profile, progress)
    summaries = [_replicate_task(replace(settings, task=task, out=str(Path(settings.out) / task)), profile, progress)
                 for task in settings.tasks()]
    summary = aggregate(summaries)
    write_json(summary, Path(settings.out) / "summary.json")
    return summary


@dataclass(frozen=True)
class _Statistics:
    """Of every arm and scaled teacher: per-example entropy and accuracy averaged over seeds (N,), the claims
    (C1a-C2b and the exploratory X1), the inheritance table and the fitted temperatures
    (:func:`temperature_statistics`)."""

    entropy: dict[str, torch.Tensor]
    accuracy: dict[str, torch.Tensor]
    claims: list[ClaimResult]
    inheritance: dict
    temperatures: dict


def _statistics(seed_columns: list[dict[str, dict[str, torch.Tensor]]], labels: torch.Tensor,
                n_bootstrap: int) -> _Statistics:
    """The statistics of the :func:`_columns` of every seed."""
    names = seed_columns[0].keys()
    entropy = {n: torch.stack([columns[n]["entropy"] for columns in seed_columns]).mean(0) for n in names}
    accuracy = {n: torch.stack([columns[n]["correct"].float() for columns in seed_columns]).mean(0) for n in names}
    claims, inheritance = CLASSIFIER_GRID.decide_claims(
        entropy, n_bootstrap=n_bootstrap, num_classes=seed_columns[0]["big-erm"]["logits"].shape[-1])
    temperatures = temperature_statistics({n: [columns[n]["logits"] for columns in seed_columns] for n in names},
                                          labels, n_bootstrap)
    claims.append(temperature_claim(temperatures, CLASSIFIER_GRID.inheritance))
    return _Statistics(entropy, accuracy, claims, inheritance, temperatures)


def _replicate_task(settings: ReplicateSettings, profile: ClassifierProfile, progress: bool) -> dict:
    seeds = list(range(settings.seeds or profile.seeds))
    out = Path(settings.out)
    arms = CLASSIFIER_GRID.arms
    dev = load_data(settings.task, split="dev", limit=profile.eval_limit)
    labels = torch.tensor(dev.labels)
    shifts = [t for t in settings.eval_tasks if t != settings.task and _label_names(t) == _label_names(settings.task)]
    shift_data = {t: load_data(t, split="test", limit=profile.eval_limit) for t in shifts}
    shift_labels = {t: torch.tensor(data.labels) for t, data in shift_data.items()}
    per_seed: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    seed_columns, shift_columns, seed_verdicts = [], {t: [] for t in shifts}, []
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        jobs = settings.worker_count()
        train_arms(arms, partial(_train_arm, seed_dir=seed_dir, profile=profile, settings=settings, seed=seed,
                                 progress=progress and jobs == 1), jobs=jobs, progress=progress)
        columns = _columns(_evaluate_seed(seed_dir, arms, dev, seed_dir, settings, profile, progress), labels)
        seed_columns.append(columns)
        for task, data in shift_data.items():
            shift_columns[task].append(_columns(_evaluate_seed(seed_dir, arms, data, seed_dir / f"shift-{task}",
                                                               settings, profile, progress), shift_labels[task]))
        seed_statistics = _statistics([columns], labels, settings.n_bootstrap)
        seed_verdicts.append({"seed": seed, "claim_verdicts": overall_verdicts(seed_statistics.claims)})
        for arm in arms:
            c = columns[arm.name]
            per_seed[arm.name].append({"seed": seed, "entropy": float(c["entropy"].mean()),
                                       "accuracy": float(c["correct"].float().mean()),
                                       "ece": float(stats.ece(c["maxprob"], c["correct"])),
                                       "temperature": seed_statistics.temperatures["models"][arm.name]["value"]})
    result = _statistics(seed_columns, labels, settings.n_bootstrap)
    temperatures = result.temperatures["models"]
    verdicts = overall_verdicts(result.claims)
    pairs = CLASSIFIER_GRID.inheritance
    # students of deliberately flattened teachers are meant to be near-uniform: they are not checked
    checked = [a.name for a in arms if a.teacher_temperature == 1.0]
    summary = {
        "schema": SCHEMA, "task": settings.task, "profile": settings.profile, "seeds": seeds,
        "settings": {**asdict(settings), **asdict(profile), **CLASSIFIER_GRID.kd_settings,
                     "smoothing": list(CLASSIFIER_GRID.smoothing)},
        "versions": versions(),
        "arms": [{**arm.description(profile),
                  "entropy": mean_ci(result.entropy[arm.name], settings.n_bootstrap),
                  "accuracy": mean_ci(result.accuracy[arm.name], settings.n_bootstrap),
                  "temperature": temperatures[arm.name],
                  "per_seed": per_seed[arm.name]} for arm in arms],
        "claims": claim_rows(result.claims),
        "claim_verdicts": verdicts,
        "seed_verdicts": seed_verdicts,
        "inheritance": result.inheritance,
        "temperature_inheritance": {"teachers": [t for t, _ in pairs], "students": [s for _, s in pairs],
                                    "temperature": {n: temperatures[n] for pair in pairs for n in pair},
                                    "degenerate_resamples": result.temperatures["degenerate_resamples"]},
        "untrained_arms": untrained_arms(result.entropy, result.accuracy, labels, checked),
    }
    if shifts:
        summary["shift"] = {}
        for task in shifts:
            shifted = _statistics(shift_columns[task], shift_labels[task], settings.n_bootstrap)
            shifted_verdicts = overall_verdicts(shifted.claims)
            majority = majority_accuracy(shift_labels[task])
            summary["shift"][task] = {
                "split": "test", "claims": claim_rows(shifted.claims), "claim_verdicts": shifted_verdicts,
                "survives": direction_survives(verdicts, shifted_verdicts),
                "arms": [{"arm": a.name, "entropy": mean_ci(shifted.entropy[a.name], settings.n_bootstrap),
                          "accuracy": mean_ci(shifted.accuracy[a.name], settings.n_bootstrap)} for a in arms],
                # trained in-domain (``untrained_arms`` says which were not); here only whether the shift left
                # them at or below the eval split's majority class, which on an imbalanced split is no failure to learn
                "at_majority_arms": [n for n in checked if float(shifted.accuracy[n].mean()) <= majority + 0.01],
            }
    write_json(summary, out / "summary.json")
    return summary
