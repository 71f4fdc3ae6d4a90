"""The replication recipe: the paper's experiment grid on one task, and a verdict on each claim C1a-C2b.

Per seed it trains (with :func:`audit.train.train`) a big ERM teacher, small ERM / LS / KD students,
self-distillation (big -> big), reversed KD (small ERM -> big) and, for inheritance, KD students of
teachers with graded confidence (the big teacher's logits at several temperatures, and a big LS teacher).
Every model is evaluated on the dev split by :func:`audit.compare.compare` (one compare JSON per teacher
group); claims are decided from the dev logits with paired bootstrap CIs over dev examples (per-example
values averaged over seeds), by :func:`audit.claims.verdict` with the deltas of CLAIMS.md. Runs already in ``out`` are reused, so an
interrupted replication resumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from audit import metrics
from audit.claims import CLAIMS, CORRELATION_DELTA, RANK_CORRELATION_DELTA, ClaimResult, entropy_delta
from audit.compare import MAX_BOOTSTRAP, CompareSettings, compare, predict, versions, write_json
from audit.data import builtin_datasets, load_data
from audit.errors import AuditError
from audit.models import Predictions, load_predictions, save_predictions
from audit.predict import resolve_device
from audit.train import TrainSettings, train

SCHEMA = "kd-audit/replicate/1"
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
    # 2-core CPU, about 10 minutes a task: pretrained MiniLM cut to 2 and 1 layers, 1200 training sentences
    "quick": Profile(big="minilm-l6@layers=2", small="minilm-l6@layers=1", epochs=2, lr=2e-4, head_lr=2e-3,
                     max_length=40, train_limit=1200, eval_limit=500, seeds=1, batch_size=16),
    # a GPU: the whole training split, MiniLM-L6 (6 layers) teaching a 3-layer cut, 3 seeds
    "full": Profile(big="minilm-l6", small="minilm-l6@layers=3", epochs=3, lr=5e-5, max_length=128,
                    train_limit=None, eval_limit=None, seeds=3),
    # tests only: random tiny BERTs on a handful of examples
    "tiny": Profile(big="tiny:hidden=32,layers=2", small="tiny:hidden=16,layers=1", epochs=1, lr=3e-3,
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
    """Options of one replication: a built-in ``task``, the ``out`` folder, a profile of :data:`PROFILES`,
    ``seeds`` (None: the profile's), the device and the bootstrap resamples of every CI."""

    task: str
    out: str
    profile: str = "quick"
    seeds: int | None = None
    device: str | None = None
    n_bootstrap: int = 1000

    def validate(self) -> Profile:
        """Check every option before anything is written; return the profile.

        Raises:
            AuditError: an unknown task, profile or device, seeds < 1, bootstrap resamples outside
                [1, MAX_BOOTSTRAP], or an ``out`` that is a file or lies under one.
        """
        if self.task not in builtin_datasets():
            raise AuditError(f"expected a built-in task ({', '.join(builtin_datasets())}), got {self.task!r}; "
                             "see python -m audit data list")
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
        resolve_device(self.device)
        return PROFILES[self.profile]


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
                         settings=CompareSettings(device=settings.device, dtype="float32", progress=False,
                                                  max_length=profile.max_length))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_predictions(replace(source, logits=source.logits / temperature), path)
    return path


def _evaluate_seed(seed_dir: Path, arms: list[Arm], settings: ReplicateSettings, profile: Profile,
                   progress: bool) -> dict[str, Predictions]:
    """Dev logits of every arm and scaled teacher, through compare (one JSON per teacher group)."""
    dev = load_data(settings.task, split="dev", limit=profile.eval_limit)
    compare_settings = CompareSettings(n_bootstrap=settings.n_bootstrap, device=settings.device, progress=progress,
                                       max_length=profile.max_length)
    logits_dir = seed_dir / "dev-logits"
    groups: dict[str, list[str]] = {}
    for arm in arms:
        teacher = arm.teacher or ("big-erm" if arm.name != "big-erm" else None)
        if teacher is not None and arm.teacher_temperature == 1.0:
            groups.setdefault(teacher, []).append(arm.name)
    for teacher, students in groups.items():
        report = compare(str(seed_dir / teacher), [str(seed_dir / s) for s in students], dev,
                         names=[teacher, *students], settings=compare_settings, save_logits=logits_dir)
        write_json(report, seed_dir / f"compare-{teacher}.json")
    logits = {p.stem: load_predictions(p, name=p.stem) for p in logits_dir.glob("*.safetensors")}
    for arm in arms:
        if arm.teacher_temperature != 1.0:
            teacher_name = f"{arm.teacher}-tau{arm.teacher_temperature:g}"
            scaled = replace(logits[arm.teacher], name=teacher_name,
                             logits=logits[arm.teacher].logits / arm.teacher_temperature)
            save_predictions(scaled, logits_dir / f"{teacher_name}.safetensors")
            report = compare(str(logits_dir / f"{teacher_name}.safetensors"), [str(seed_dir / arm.name)], dev,
                             names=[teacher_name, arm.name], settings=compare_settings, save_logits=logits_dir)
            write_json(report, seed_dir / f"compare-{teacher_name}.json")
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
    """Run (or resume) the grid on ``settings.task``; return the summary (also ``out/summary.json``)."""
    profile = settings.validate()
    seeds = list(range(settings.seeds or profile.seeds))
    out = Path(settings.out)
    arms = grid()
    per_seed: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    seed_logits = []
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        for arm in arms:
            _train_arm(arm, seed_dir, profile, settings, seed, progress)
        logits = _evaluate_seed(seed_dir, arms, settings, profile, progress)
        seed_logits.append(logits)
        labels = torch.tensor(load_data(settings.task, split="dev", limit=profile.eval_limit).labels)
        for arm in arms:
            p = torch.softmax(logits[arm.name].logits, -1)
            correct = metrics.correct(p, labels)
            per_seed[arm.name].append({"seed": seed, "entropy": float(metrics.entropy(p).mean()),
                                       "accuracy": float(correct.float().mean()),
                                       "ece": float(metrics.ece(metrics.max_probability(p), correct))})
    names = seed_logits[0].keys()
    entropy = {n: torch.stack([_entropy(logits[n]) for logits in seed_logits]).mean(0) for n in names}
    labels = torch.tensor(load_data(settings.task, split="dev", limit=profile.eval_limit).labels)
    accuracy = {n: torch.stack([metrics.correct(torch.softmax(lg[n].logits, -1), labels).float()
                                for lg in seed_logits]).mean(0) for n in names}
    claims = decide_claims(entropy, settings.n_bootstrap, num_classes=seed_logits[0]["big-erm"].logits.shape[-1])
    # students of deliberately flattened teachers are meant to be near-uniform: they are not checked
    untrained = untrained_arms(entropy, accuracy, labels, [a.name for a in arms if a.teacher_temperature == 1.0])
    summary = {
        "schema": SCHEMA, "task": settings.task, "profile": settings.profile, "seeds": seeds,
        "settings": {**asdict(settings), **asdict(profile), **KD, "smoothing": list(SMOOTHING)},
        "versions": versions(),
        "arms": [{"arm": arm.name, "method": {"ce": "erm"}.get(arm.loss, arm.loss), "setup": arm.setup,
                  "model": getattr(profile, arm.size), "teacher": arm.teacher,
                  "teacher_temperature": arm.teacher_temperature,
                  "entropy": _mean_ci(entropy[arm.name], settings.n_bootstrap),
                  "accuracy": _mean_ci(accuracy[arm.name], settings.n_bootstrap),
                  "per_seed": per_seed[arm.name]} for arm in arms],
        "claims": [{"claim": r.claim_id, "statement": CLAIMS[r.claim_id].statement, "verdict": r.verdict,
                    "statistic": r.statistic, "value": r.value, "ci": list(r.ci), "delta": r.delta, "detail": r.detail}
                   for r in claims],
        "claim_verdicts": overall_verdicts(claims),
        "inheritance": inheritance_statistics(entropy, settings.n_bootstrap),
        "untrained_arms": untrained,
    }
    write_json(summary, out / "summary.json")
    return summary


def untrained_arms(entropy: dict[str, torch.Tensor], accuracy: dict[str, torch.Tensor], labels: torch.Tensor,
                   names: list[str]) -> list[str]:
    """Arms that did not learn: near-uniform predictions (mean entropy >= 97% of log K) or dev accuracy no
    better than always answering the majority class (+1 point). Claims about them are not evidence."""
    counts = torch.bincount(labels)
    log_k, majority = math.log(len(counts)), float(counts.max()) / len(labels)
    return [n for n in names if float(entropy[n].mean()) >= 0.97 * log_k or float(accuracy[n].mean()) <= majority + 0.01]


def overall_verdicts(results: list[ClaimResult]) -> dict[str, str]:
    """One verdict per claim id, from the weakest of its checks: fails if any check fails, else inconclusive
    if any is inconclusive, else negligible if any is negligible (a part of the claim measured too small to
    matter), else holds (every check holds)."""
    by_claim: dict[str, set[str]] = {}
    for r in results:
        by_claim.setdefault(r.claim_id, set()).add(r.verdict)
    return {claim: next(v for v in OVERALL_ORDER if v in verdicts) for claim, verdicts in by_claim.items()}


def render_summary(summary: dict, console=None) -> None:
    """The paper's table (mean dev entropy and accuracy per arm, with CIs) and the claim verdicts."""
    from rich.console import Console
    from rich.table import Table

    from audit.report.charts import terminal_charts

    console = console or Console()
    seeds = len(summary["seeds"])
    table = Table(title=f"{summary['task']} ({summary['profile']} profile, {seeds} seed{'s' * (seeds > 1)}): "
                        "mean dev entropy and accuracy, 95% bootstrap CI", title_justify="left")
    for column in ("arm", "method", "setup", "teacher", "entropy (nats)", "accuracy"):
        table.add_column(column, justify="right" if column in ("entropy (nats)", "accuracy") else "left")
    fmt = lambda s: f"{s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"  # noqa: E731
    for arm in summary["arms"]:
        teacher = arm["teacher"] or "-"
        if arm["teacher_temperature"] != 1.0:
            teacher += f" / {arm['teacher_temperature']:g}"
        table.add_row(arm["arm"], arm["method"], arm["setup"], teacher, fmt(arm["entropy"]), fmt(arm["accuracy"]))
    console.print(table)
    claims = Table(title="Claims (../shared/CLAIMS.md)", title_justify="left")
    for column in ("claim", "statistic", "value [95% CI]", "verdict"):
        claims.add_column(column)
    style = {"holds": "green", "fails": "red", "inconclusive": "yellow", "negligible": "dim"}
    for c in summary["claims"]:
        claims.add_row(c["claim"], c["statistic"], f"{c['value']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]",
                       f"[{style[c['verdict']]}]{c['verdict']}[/]")
    console.print(claims)
    console.print("overall: " + ", ".join(f"{c} {v}" for c, v in summary["claim_verdicts"].items()))
    if summary.get("untrained_arms"):
        console.print(f"[bold red]warning:[/] these arms did not learn (near-uniform predictions or majority-class "
                      f"accuracy): {', '.join(summary['untrained_arms'])}; verdicts that involve them are not evidence "
                      "for or against a claim: train longer (--profile full) or on more data")
    console.print(terminal_charts(summary))
