"""The replication recipe: the paper's experiment grid on one task, and a verdict on each claim C1a-C2b.

Per seed it trains (with :func:`audit.train.train`) a big ERM teacher, small ERM / LS / KD students,
self-distillation (big -> big), reversed KD (small ERM -> big) and, for inheritance, KD students of
teachers with graded confidence (the big teacher's logits at several temperatures, and a big LS teacher).
Every model is evaluated on the dev split by :func:`audit.compare.compare` (one compare JSON per teacher
group); claims are decided from the dev logits with paired bootstrap CIs over dev examples (per-example
values averaged over seeds), by :func:`audit.claims.verdict` with the deltas of CLAIMS.md. Every arm's
post-hoc temperature T* is fitted on the dev logits, and the exploratory claim X1 asks whether the KD
students' T* follow their graded teachers'. Runs already in ``out`` are reused, so an
interrupted replication resumes.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from audit import metrics
from audit.calibrate import TemperatureError, bootstrap_temperatures, fit_temperature
from audit.claims import (
    CLAIMS,
    CORRELATION_DELTA,
    RANK_CORRELATION_DELTA,
    VERDICTS,
    ClaimResult,
    entropy_delta,
)
from audit.compare import MAX_BOOTSTRAP, CompareSettings, compare, predict, versions, write_json
from audit.data import TextData, builtin_datasets, load_data
from audit.distributed import launched
from audit.errors import AuditError
from audit.evaluate import progress_bar
from audit.models import Predictions, load_predictions, save_predictions
from audit.predict import resolve_device
from audit.report.schema import REPLICATE as SCHEMA
from audit.report.schema import REPLICATE_ALL as ALL_SCHEMA
from audit.train import TrainSettings, train

ALL = "all"
SMOOTHING = (0.1, 0.3)
KD = {"temperature": 2.0, "kd_weight": 0.5}
TEACHER_TEMPERATURES = (0.5, 2.0, 4.0)  # besides 1.0, which is the standard KD student
OVERALL_ORDER = ("fails", "inconclusive", "negligible", "holds")  # a claim's verdict is its weakest check's


# (teacher, its KD student) pairs of graded teacher confidence, for C2a
INHERITANCE = ([("big-erm", "small-kd")]
               + [(f"big-erm-tau{t:g}", f"small-kd-tau{t:g}") for t in TEACHER_TEMPERATURES]
               + [(f"big-ls-{SMOOTHING[0]}", "small-kd-from-big-ls")])


@dataclass(frozen=True)
class Profile:
    """Model sizes and training budget of one replication profile."""

    big: str
    small: str
    epochs: float
    lr: float
    max_length: int
    train_limit: int | None
    eval_limit: int | None
    seeds: int
    batch_size: int = 32
    head_lr: float | None = None
    warmup: float = 0.1


PROFILES = {
    # 2-core CPU: pretrained MiniLM cut to 2 and 1 layers, 2000 training sentences, 3 epochs of batches of 32
    # (188 steps; 2 epochs of 1200 at batch 16 left the 1-layer student, or every arm on vader-amazon, at the
    # majority class). Measured per task in the README.
    "quick": Profile(big="minilm-l6@layers=2", small="minilm-l6@layers=1", epochs=3, lr=3e-4, head_lr=3e-3,
                     max_length=40, train_limit=2000, eval_limit=500, seeds=1, batch_size=32),
    # a GPU: the whole training split, MiniLM-L6 (6 layers) teaching a 3-layer cut, 3 seeds
    "full": Profile(big="minilm-l6", small="minilm-l6@layers=3", epochs=3, lr=5e-5, max_length=128,
                    train_limit=None, eval_limit=None, seeds=3),
    # tests only: random tiny BERTs on a handful of examples
    "tiny": Profile(big="tiny:hidden=64,layers=2", small="tiny:hidden=32,layers=1", epochs=1, lr=3e-3,
                    max_length=16, train_limit=64, eval_limit=48, seeds=1, batch_size=16),
}


@dataclass(frozen=True)
class Arm:
    """One trained model of the grid: its model size, loss and teacher (another arm, or a scaled teacher)."""

    name: str
    size: str
    loss: str
    setup: str
    label_smoothing: float = 0.0
    teacher: str | None = None
    teacher_temperature: float = 1.0  # the teacher's logits are divided by this before distillation


def grid() -> list[Arm]:
    """The arms, in training order (a teacher before its students)."""
    arms = [Arm("big-erm", "big", "ce", "-"), Arm("small-erm", "small", "ce", "-")]
    arms += [Arm(f"small-ls-{a}", "small", "ls", "-", label_smoothing=a) for a in SMOOTHING]
    arms += [
        Arm("small-kd", "small", "kd", "standard", teacher="big-erm"),
        Arm("big-self-kd", "big", "kd", "self", teacher="big-erm"),
        Arm("big-reversed-kd", "big", "kd", "reversed", teacher="small-erm"),
        Arm(f"big-ls-{SMOOTHING[0]}", "big", "ls", "-", label_smoothing=SMOOTHING[0]),
        Arm("small-kd-from-big-ls", "small", "kd", "inheritance", teacher=f"big-ls-{SMOOTHING[0]}"),
    ]
    arms += [Arm(f"small-kd-tau{t:g}", "small", "kd", "inheritance", teacher="big-erm", teacher_temperature=t)
             for t in TEACHER_TEMPERATURES]
    return arms


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

    def validate(self) -> Profile:
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
        on a CPU (the quick profile's matrices are too small for two threads to help each other much: its
        vader-nyt grid took 14:43 in two 1-thread workers, 16:37 in one 2-thread process), and 1 on a GPU or
        under torchrun."""
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


def train_arms(arms: list[Arm], train_arm: Callable[[Arm], object], *, jobs: int, progress: bool) -> None:
    """Call ``train_arm`` on every arm, each once its teacher arm is trained: in order when ``jobs`` is 1,
    else up to ``jobs`` at once in spawned worker processes that share the parent's threads (``train_arm``
    must pickle). The first error stops the grid once the arms in training finish (trained arms stay, so a
    rerun resumes)."""
    if jobs == 1:
        for arm in arms:
            train_arm(arm)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    pending, trained, running = list(arms), set(), {}
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=torch.set_num_threads, initargs=(threads,))
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


def _train_arm(arm: Arm, seed_dir: Path, profile: Profile, settings: ReplicateSettings, seed: int,
               progress: bool) -> Path:
    out = seed_dir / arm.name
    teacher = None
    if arm.teacher is not None:
        teacher = str(seed_dir / arm.teacher)
        if arm.teacher_temperature != 1.0:
            teacher = str(_scaled_teacher(seed_dir, arm.teacher, arm.teacher_temperature, profile, settings))
    options = dict(label_smoothing=arm.label_smoothing, teacher=teacher, **KD) if arm.loss != "ce" else {}
    train(TrainSettings(data=settings.task, model=getattr(profile, arm.size), out=str(out), loss=arm.loss,
                        epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr, head_lr=profile.head_lr,
                        warmup=profile.warmup, max_length=profile.max_length, train_limit=profile.train_limit,
                        eval_limit=profile.eval_limit, seed=seed, device=settings.device, **options),
          progress=progress)
    return out


def _scaled_teacher(seed_dir: Path, teacher: str, temperature: float, profile: Profile,
                    settings: ReplicateSettings) -> Path:
    """The trained arm ``teacher``'s logits on the training split divided by ``temperature``: a sharper or
    flatter teacher (computed once per seed, then read from ``seed_dir/teachers``)."""
    path = seed_dir / "teachers" / f"{teacher}-tau{temperature:g}.safetensors"
    if not path.exists():
        data = load_data(settings.task, split="train", limit=profile.train_limit)
        source = predict(str(seed_dir / teacher), data, name=teacher,
                         settings=CompareSettings(device=settings.device, dtype="fp32", progress=False,
                                                  max_length=profile.max_length))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_predictions(replace(source, logits=source.logits / temperature), path)
    return path


def _evaluate_seed(seed_dir: Path, arms: list[Arm], data: TextData, folder: Path, settings: ReplicateSettings,
                   profile: Profile, progress: bool) -> dict[str, Predictions]:
    """Logits of every arm and scaled teacher on ``data``, through compare (one JSON per teacher group in
    ``folder``, the logits in ``folder/<split>-logits``)."""
    compare_settings = CompareSettings(n_bootstrap=settings.n_bootstrap, device=settings.device, progress=progress,
                                       max_length=profile.max_length)
    logits_dir = folder / f"{data.info.get('split', 'eval')}-logits"
    groups: dict[str, list[str]] = {}
    for arm in arms:
        teacher = arm.teacher or ("big-erm" if arm.name != "big-erm" else None)
        if teacher is not None and arm.teacher_temperature == 1.0:
            groups.setdefault(teacher, []).append(arm.name)
    for teacher, students in groups.items():
        report = compare(str(seed_dir / teacher), [str(seed_dir / s) for s in students], data,
                         names=[teacher, *students], settings=compare_settings, save_logits=logits_dir)
        write_json(report, folder / f"compare-{teacher}.json")
    logits = {p.stem: load_predictions(p, name=p.stem) for p in logits_dir.glob("*.safetensors")}
    for arm in arms:
        if arm.teacher_temperature != 1.0:
            teacher_name = f"{arm.teacher}-tau{arm.teacher_temperature:g}"
            scaled = replace(logits[arm.teacher], name=teacher_name,
                             logits=logits[arm.teacher].logits / arm.teacher_temperature)
            scaled_path = folder / "teachers" / f"{data.info.get('split', 'eval')}-{teacher_name}.safetensors"
            scaled_path.parent.mkdir(parents=True, exist_ok=True)
            save_predictions(scaled, scaled_path)
            report = compare(str(scaled_path), [str(seed_dir / arm.name)], data,
                             names=[teacher_name, arm.name], settings=compare_settings, save_logits=logits_dir)
            write_json(report, folder / f"compare-{teacher_name}.json")
            logits[teacher_name] = scaled
            logits[arm.name] = load_predictions(logits_dir / f"{arm.name}.safetensors", name=arm.name)
    return logits


def _entropy(p: Predictions) -> torch.Tensor:
    return metrics.entropy(torch.softmax(p.logits, -1))


def _mean_ci(x: torch.Tensor, n_bootstrap: int) -> dict:
    ci = metrics.bootstrap_ci(lambda v: v.mean(-1), x, n_resamples=n_bootstrap)
    return {"value": float(x.mean()), "ci": list(ci)}


def _difference(claim: str, statistic: str, x: torch.Tensor, direction: int, n_bootstrap: int, delta: float,
                detail: str = "") -> ClaimResult:
    stat = _mean_ci(x, n_bootstrap)
    return ClaimResult.from_interval(claim, statistic, stat["value"], tuple(stat["ci"]), direction=direction,
                                     delta=delta, detail=detail)


def inheritance_statistics(entropy: dict[str, torch.Tensor], n_bootstrap: int) -> dict:
    """Mean dev entropy of each graded teacher and its KD student, and their rank correlation with a CI."""
    t_matrix = torch.stack([entropy[t] for t, _ in INHERITANCE], -1)  # (N, teachers)
    s_matrix = torch.stack([entropy[s] for _, s in INHERITANCE], -1)
    rank_corr = lambda t, s: metrics.spearman(t.mean(-2), s.mean(-2))  # noqa: E731  (B, N, M) -> (B,)
    ci = metrics.bootstrap_ci(rank_corr, t_matrix, s_matrix, n_resamples=n_bootstrap)
    return {"teachers": [t for t, _ in INHERITANCE], "students": [s for _, s in INHERITANCE],
            "teacher_entropy": t_matrix.mean(0).tolist(), "student_entropy": s_matrix.mean(0).tolist(),
            "spearman": {"value": float(rank_corr(t_matrix[None], s_matrix[None])[0]), "ci": list(ci)}}


def decide_claims(entropy: dict[str, torch.Tensor], n_bootstrap: int, num_classes: int) -> list[ClaimResult]:
    """C1a-C2b from per-example dev entropies (N,) per arm and teacher (averaged over seeds).

    Each check's delta is the one CLAIMS.md gives its statistic: 1% of log K for entropy differences,
    :data:`~audit.claims.CORRELATION_DELTA` for per-example correlations and their differences,
    :data:`~audit.claims.RANK_CORRELATION_DELTA` for the rank correlation over teachers.
    """
    h = entropy
    ls_lo, big_ls = f"small-ls-{SMOOTHING[0]}", f"big-ls-{SMOOTHING[0]}"
    d_h = entropy_delta(num_classes)
    results = [
        _difference("C1a", f"H(LS a={a}) - H(ERM), small", h[f"small-ls-{a}"] - h["small-erm"], +1, n_bootstrap, d_h)
        for a in SMOOTHING
    ]
    results += [
        _difference("C1b", f"H(KD) - H(LS a={SMOOTHING[0]}), small", h["small-kd"] - h[ls_lo], -1, n_bootstrap, d_h),
        _difference("C1b", "H(KD) - H(ERM), standard", h["small-kd"] - h["small-erm"], -1, n_bootstrap, d_h),
        _difference("C1b", "H(self-KD) - H(ERM), big", h["big-self-kd"] - h["big-erm"], -1, n_bootstrap, d_h),
        _difference("C1c", "H(reversed KD) - H(ERM), big", h["big-reversed-kd"] - h["big-erm"], +1, n_bootstrap, d_h),
        # CLAIMS.md: one architecture, each against the big ERM model
        _difference("C1c", f"rise of LS a={SMOOTHING[0]} minus rise of reversed KD, big",
                    (h[big_ls] - h["big-erm"]) - (h["big-reversed-kd"] - h["big-erm"]), +1, n_bootstrap, d_h),
    ]
    inheritance = inheritance_statistics(h, n_bootstrap)
    results.append(ClaimResult.from_interval(
        "C2a", f"Spearman(teacher H, student H) over {len(INHERITANCE)} teachers", inheritance["spearman"]["value"],
        tuple(inheritance["spearman"]["ci"]), delta=RANK_CORRELATION_DELTA,
        detail=", ".join(f"{t}: {ht:.3f} -> {hs:.3f}" for (t, _), ht, hs in
                         zip(INHERITANCE, inheritance["teacher_entropy"], inheritance["student_entropy"]))))
    results.append(_correlation("C2b", "Spearman(T, KD) per example", lambda t, kd: metrics.spearman(t, kd),
                                (h["big-erm"], h["small-kd"]), n_bootstrap))
    for other in ("small-erm", ls_lo):
        corr_gap = lambda t, kd, o: metrics.spearman(t, kd) - metrics.spearman(t, o)  # noqa: E731
        results.append(_correlation("C2b", f"Spearman(T, KD) - Spearman(T, {other})", corr_gap,
                                    (h["big-erm"], h["small-kd"], h[other]), n_bootstrap))
    return results


def _correlation(claim: str, statistic: str, function, samples: tuple[torch.Tensor, ...],
                 n_bootstrap: int) -> ClaimResult:
    """A per-example correlation statistic ``function`` of paired (N,) samples, with its bootstrap CI, against
    :data:`~audit.claims.CORRELATION_DELTA` (a correlation is its difference from zero)."""
    value = float(function(*(x[None] for x in samples))[0])
    ci = metrics.bootstrap_ci(function, *samples, n_resamples=n_bootstrap)
    return ClaimResult.from_interval(claim, statistic, value, ci, delta=CORRELATION_DELTA)


def replicate(settings: ReplicateSettings, *, progress: bool = True) -> dict:
    """Run (or resume) the grid on ``settings.task``, or on every built-in task for ``"all"``; return the
    summary (also ``out/summary.json``: schema ``kd-audit/replicate/1`` for one task, ``kd-audit/replicate-all/1``
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


def _arm_statistics(arms: list[Arm], seed_logits: list[dict[str, Predictions]], labels: torch.Tensor,
                    n_bootstrap: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[ClaimResult], dict]:
    """Per-example entropy and accuracy of every arm and teacher averaged over seeds (N,), the claims (C1a-C2b
    and the exploratory X1) and the fitted temperatures (:func:`temperature_statistics`)."""
    names = seed_logits[0].keys()
    entropy = {n: torch.stack([_entropy(logits[n]) for logits in seed_logits]).mean(0) for n in names}
    accuracy = {n: torch.stack([metrics.correct(torch.softmax(lg[n].logits, -1), labels).float()
                                for lg in seed_logits]).mean(0) for n in names}
    claims = decide_claims(entropy, n_bootstrap, num_classes=seed_logits[0]["big-erm"].logits.shape[-1])
    temperatures = temperature_statistics({n: [lg[n].logits for lg in seed_logits] for n in names}, labels,
                                          n_bootstrap)
    claims.append(temperature_claim(temperatures))
    return entropy, accuracy, claims, temperatures


def _fitted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, bool]:
    """T* and whether it sits at a search bound (degenerate logits keep the bound as their temperature)."""
    try:
        return fit_temperature(logits, labels), False
    except TemperatureError as error:
        return error.bound, True


def temperature_statistics(logits: dict[str, list[torch.Tensor]], labels: torch.Tensor, n_bootstrap: int) -> dict:
    """The temperature T* that post-hoc scaling fits on the evaluation logits, per model and averaged over
    seeds, with a percentile bootstrap CI: every model of every seed is refitted on the same resamples of the
    examples (:func:`audit.calibrate.bootstrap_temperatures`). T* is a property of the model (how much its
    logits should be divided by to minimise NLL), so fitting it on the split it is reported on is what the
    question needs; no scaled metric is reported here.

    Args:
        logits: model name -> its (N, K) logits in each seed.
        labels: (N,) class indices.
        n_bootstrap: resamples.

    Returns:
        ``{"models": {name: {"value", "ci", "at_bound"}}, "resamples": (B, M) tensor in the order of
        ``models``, "degenerate_resamples": fits at a bound}``; ``at_bound`` counts seeds whose fit on all
        examples sat at a bound (its bound is used).
    """
    names = list(logits)
    seeds = len(logits[names[0]])
    point, at_bound, resampled, degenerate = [], [], [], 0
    for seed in range(seeds):
        fits = [_fitted(logits[n][seed], labels) for n in names]
        point.append([t for t, _ in fits])
        at_bound.append([bound for _, bound in fits])
        draws, bad = bootstrap_temperatures([logits[n][seed] for n in names], labels, n_resamples=n_bootstrap)
        resampled.append(draws)
        degenerate += bad
    point_t = torch.tensor(point, dtype=torch.float64).mean(0)
    draws = torch.stack(resampled).mean(0)  # (B, M): the same example resamples in every seed
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    models = {n: {"value": float(point_t[m]), "ci": [float(low[m]), float(high[m])],
                  "at_bound": sum(row[m] for row in at_bound)} for m, n in enumerate(names)}
    return {"models": models, "resamples": draws, "degenerate_resamples": degenerate}


def temperature_claim(temperatures: dict) -> ClaimResult:
    """X1 (exploratory, not in the paper): across the teachers of graded confidence (:data:`INHERITANCE`), the
    KD student's fitted temperature rises with its teacher's: Spearman of teacher T* and student T* over the
    teachers, with the CI of its values on the bootstrap resamples. A resample whose temperatures are all
    equal on one side (all at a bound) has no rank correlation and counts as 0 (no monotone relation)."""
    names = list(temperatures["models"])
    teachers = [names.index(t) for t, _ in INHERITANCE]
    students = [names.index(s) for _, s in INHERITANCE]
    point = torch.tensor([[temperatures["models"][names[i]]["value"] for i in idx] for idx in (teachers, students)],
                         dtype=torch.float64)
    draws = temperatures["resamples"]
    value = float(torch.nan_to_num(metrics.spearman(point[0], point[1]), nan=0.0))
    rho = torch.nan_to_num(metrics.spearman(draws[:, teachers], draws[:, students]), nan=0.0)
    low, high = torch.quantile(rho, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    # over five ranks the percentile interval can miss its own point estimate: widen it to include it
    low, high = min(low, value), max(high, value)
    detail = ", ".join(f"{t}: {tt:.3g} -> {ts:.3g}" for (t, _), tt, ts in zip(INHERITANCE, *point.tolist()))
    return ClaimResult.from_interval("X1", f"Spearman(teacher T*, student T*) over {len(INHERITANCE)} teachers",
                                     value, (low, high), delta=RANK_CORRELATION_DELTA, detail=detail)


def _claim_rows(claims: list[ClaimResult]) -> list[dict]:
    return [{"claim": r.claim_id, "statement": CLAIMS[r.claim_id].statement, "verdict": r.verdict,
             "statistic": r.statistic, "value": r.value, "ci": list(r.ci), "delta": r.delta, "detail": r.detail}
            for r in claims]


def _replicate_task(settings: ReplicateSettings, profile: Profile, progress: bool) -> dict:
    seeds = list(range(settings.seeds or profile.seeds))
    out = Path(settings.out)
    arms = grid()
    dev = load_data(settings.task, split="dev", limit=profile.eval_limit)
    labels = torch.tensor(dev.labels)
    shifts = [t for t in settings.eval_tasks if t != settings.task and _label_names(t) == _label_names(settings.task)]
    shift_data = {t: load_data(t, split="test", limit=profile.eval_limit) for t in shifts}
    per_seed: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    seed_logits, shift_logits, seed_verdicts = [], {t: [] for t in shifts}, []
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        jobs = settings.worker_count()
        train_arms(arms, partial(_train_arm, seed_dir=seed_dir, profile=profile, settings=settings, seed=seed,
                                 progress=progress and jobs == 1), jobs=jobs, progress=progress)
        logits = _evaluate_seed(seed_dir, arms, dev, seed_dir, settings, profile, progress)
        seed_logits.append(logits)
        for task, data in shift_data.items():
            shift_logits[task].append(_evaluate_seed(seed_dir, arms, data, seed_dir / f"shift-{task}", settings,
                                                     profile, progress))
        for arm in arms:
            p = torch.softmax(logits[arm.name].logits, -1)
            correct = metrics.correct(p, labels)
            per_seed[arm.name].append({"seed": seed, "entropy": float(metrics.entropy(p).mean()),
                                       "accuracy": float(correct.float().mean()),
                                       "ece": float(metrics.ece(metrics.max_probability(p), correct))})
        _, _, seed_claims, seed_temperatures = _arm_statistics(arms, [logits], labels, settings.n_bootstrap)
        seed_verdicts.append({"seed": seed, "claim_verdicts": overall_verdicts(seed_claims)})
        for arm in arms:
            per_seed[arm.name][-1]["temperature"] = seed_temperatures["models"][arm.name]["value"]
    entropy, accuracy, claims, temperatures = _arm_statistics(arms, seed_logits, labels, settings.n_bootstrap)
    verdicts = overall_verdicts(claims)
    # students of deliberately flattened teachers are meant to be near-uniform: they are not checked
    checked = [a.name for a in arms if a.teacher_temperature == 1.0]
    summary = {
        "schema": SCHEMA, "task": settings.task, "profile": settings.profile, "seeds": seeds,
        "settings": {**asdict(settings), **asdict(profile), **KD, "smoothing": list(SMOOTHING)},
        "versions": versions(),
        "arms": [{"arm": arm.name, "method": {"ce": "erm"}.get(arm.loss, arm.loss), "setup": arm.setup,
                  "model": getattr(profile, arm.size), "teacher": arm.teacher,
                  "teacher_temperature": arm.teacher_temperature,
                  "entropy": _mean_ci(entropy[arm.name], settings.n_bootstrap),
                  "accuracy": _mean_ci(accuracy[arm.name], settings.n_bootstrap),
                  "temperature": temperatures["models"][arm.name],
                  "per_seed": per_seed[arm.name]} for arm in arms],
        "claims": _claim_rows(claims),
        "claim_verdicts": verdicts,
        "seed_verdicts": seed_verdicts,
        "inheritance": inheritance_statistics(entropy, settings.n_bootstrap),
        "temperature_inheritance": {"teachers": [t for t, _ in INHERITANCE], "students": [s for _, s in INHERITANCE],
                                    "temperature": {n: temperatures["models"][n] for pair in INHERITANCE for n in pair},
                                    "degenerate_resamples": temperatures["degenerate_resamples"]},
        "untrained_arms": untrained_arms(entropy, accuracy, labels, checked),
    }
    if shifts:
        summary["shift"] = {}
        for task in shifts:
            shifted_labels = torch.tensor(shift_data[task].labels)
            h, acc, shifted, _ = _arm_statistics(arms, shift_logits[task], shifted_labels, settings.n_bootstrap)
            shifted_verdicts = overall_verdicts(shifted)
            summary["shift"][task] = {
                "split": "test", "claims": _claim_rows(shifted), "claim_verdicts": shifted_verdicts,
                "survives": direction_survives(verdicts, shifted_verdicts),
                "arms": [{"arm": a.name, "entropy": _mean_ci(h[a.name], settings.n_bootstrap),
                          "accuracy": _mean_ci(acc[a.name], settings.n_bootstrap)} for a in arms],
                # trained in-domain (``untrained_arms`` says which were not); here only whether the shift left
                # them at or below the eval split's majority class, which on an imbalanced split is no failure to learn
                "at_majority_arms": [n for n in checked if float(acc[n].mean()) <= _majority(shifted_labels) + 0.01],
            }
    write_json(summary, out / "summary.json")
    return summary


def direction_survives(in_domain: dict[str, str], shifted: dict[str, str]) -> dict[str, bool | None]:
    """Per claim: did the direction measured in-domain survive the shift? True when the in-domain verdict
    (holds or fails) is the shifted one too, False when it is not, None when in-domain gave no direction
    (inconclusive or negligible).

    >>> direction_survives({"C1a": "holds", "C1b": "fails", "C2a": "negligible"},
    ...                    {"C1a": "holds", "C1b": "inconclusive", "C2a": "holds"})
    {'C1a': True, 'C1b': False, 'C2a': None}
    """
    return {c: (shifted.get(c) == v if v in ("holds", "fails") else None) for c, v in in_domain.items()}


def aggregate(summaries: list[dict]) -> dict:
    """One summary over tasks x seeds from per-task summaries: mean dev entropy (with its CI) per arm per task,
    and per claim how many tasks and how many (task, seed) runs it holds / fails / is inconclusive / negligible
    on; with ``shift`` sections, per claim and eval task, on how many tasks its direction survived.

    Raises:
        AuditError: no summaries, or summaries of different grids.
    """
    if not summaries or len({tuple(a["arm"] for a in s["arms"]) for s in summaries}) != 1:
        raise AuditError(f"expected replicate summaries of one grid, got {len(summaries)} with different arms; "
                         "aggregate runs of one kd-audit version")
    tasks = [s["task"] for s in summaries]
    claims: dict[str, dict] = {}
    for s in summaries:
        for claim, v in s["claim_verdicts"].items():
            entry = claims.setdefault(claim, {"tasks": dict.fromkeys(VERDICTS, 0), "runs": dict.fromkeys(VERDICTS, 0),
                                              "by_task": {}, "survives": {}})
            entry["tasks"][v] += 1
            entry["by_task"][s["task"]] = v
            for seed in s.get("seed_verdicts", []):
                entry["runs"][seed["claim_verdicts"][claim]] += 1
            for eval_task, shift in s.get("shift", {}).items():
                entry["survives"].setdefault(eval_task, {})[s["task"]] = shift["survives"][claim]
    return {
        "schema": ALL_SCHEMA, "tasks": tasks, "profile": summaries[0]["profile"], "seeds": summaries[0]["seeds"],
        "versions": summaries[0]["versions"],
        "entropy": [{"arm": arm["arm"], "method": arm["method"], "setup": arm["setup"],
                     "by_task": {s["task"]: s["arms"][i]["entropy"] for s in summaries}}
                    for i, arm in enumerate(summaries[0]["arms"])],
        "claims": claims,
        "untrained_arms": {s["task"]: s.get("untrained_arms", []) for s in summaries},
    }


def untrained_arms(entropy: dict[str, torch.Tensor], accuracy: dict[str, torch.Tensor], labels: torch.Tensor,
                   names: list[str]) -> list[str]:
    """Arms that did not learn: near-uniform predictions (mean entropy >= 97% of log K) or dev accuracy no
    better than always answering the majority class (+1 point). Claims about them are not evidence."""
    log_k, majority = math.log(len(torch.bincount(labels))), _majority(labels)
    return [n for n in names if float(entropy[n].mean()) >= 0.97 * log_k or float(accuracy[n].mean()) <= majority + 0.01]


def _majority(labels: torch.Tensor) -> float:
    """The accuracy of always answering the most frequent class."""
    return float(torch.bincount(labels).max()) / len(labels)


def overall_verdicts(results: list[ClaimResult]) -> dict[str, str]:
    """One verdict per claim id, from the weakest of its checks: fails if any check fails, else inconclusive
    if any is inconclusive, else negligible if any is negligible (a part of the claim measured too small to
    matter), else holds (every check holds)."""
    by_claim: dict[str, set[str]] = {}
    for r in results:
        by_claim.setdefault(r.claim_id, set()).add(r.verdict)
    return {claim: next(v for v in OVERALL_ORDER if v in verdicts) for claim, verdicts in by_claim.items()}
