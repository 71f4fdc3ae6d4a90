"""The causal-LM training recipe: a student trained on next tokens with CE, label smoothing or distillation.

Reads top to bottom: settings -> teacher and student (same tokenizer) -> train windows -> the batch loss (teacher
logits computed per batch under ``no_grad`` in the same step, the loss from :mod:`audit.losses`) and the record
(the dev audit of the student against its teacher, :func:`dev_audit`) handed to the one training loop
(:func:`audit.recipes.training_run.fit`: resumable checkpoints, DDP, save, ``training_record.json``).

Why the teacher runs in every step instead of once into a cache: a full-vocabulary logit row is
V x 4 bytes, 196 KB per token at SmolLM2's V = 49,152 (98 KB in bf16), so the Shakespeare train split's
1.34M tokens would need 264 GB (132 GB in bf16). A teacher's top k per token is the cache that fits (k = 20:
160 bytes a token, 214 MB for that split): with ``teacher_topk`` the KD targets come from such a file
(:class:`TopkTargets`, :func:`audit.reduce.topk.topk_kd_loss`) and the teacher runs only for the dev audit.

Data: any text spec of :func:`audit.load.data.text.read_documents`: running text (every token a target), prompt
and completion columns (the loss on the completion's tokens only) or a ``messages`` column (rendered with the
tokenizer's chat template, the loss on the assistant replies only). Documents longer than a window are cut into
windows of ``max_length`` tokens; shorter ones (prompt/completion pairs, chats) are **packed** several to a window
(:func:`audit.load.data.text.pack_windows`, best-fit decreasing) with **position ids that restart at 0 for each
document and no attention mask**: transformers reads such rows as packed sequences and masks attention block by
block, so no token attends to another document and each document's logits are those it has alone (TRL's
``padding_free`` packing, not its EOS-separated packing, where attention crosses documents). The student and the
teacher are checked for that on two random sequences before training (:func:`attends_within_documents`); where a
model lets attention cross, each short document trains alone in its own padded window instead.

**On-policy distillation** (GKD, Agarwal et al. 2024, as TRL's ``GKDTrainer`` does it), for KD on
prompt/completion or chat data: with probability ``lmbda`` a step's documents are replaced by the student's own
replies to their prompts (:func:`own_samples`: the prompt as the audit's ``--generate`` takes it, the student
sampling from its own distribution at temperature 1 with :func:`audit.run.generate.generate_completions`, up to
``max_new_tokens`` tokens or its EOS, seeded from the run's seed and the step), and the loss is the soft term alone
on the sampled tokens, with the teacher scoring them: T² D(student_T, teacher_T) for the run's ``divergence``
(``beta`` for JSD; a CE term on the student's own sample would teach it its own text, so GKD has none). Whether a
step samples is a seeded draw of the step too (:func:`on_policy_step`), so a resumed run samples where an
uninterrupted one does. TRL's ``seq_kd`` (training on the teacher's samples) is not offered.

The dev evaluation at the end is :func:`dev_audit`, or the ``evaluate`` hook a caller passes (``audit train``
passes :func:`audit.integrations.dev_evaluation`, which runs the training callback's audit and writes its step
report into ``out/kd_audit``; the recipes stay below the auditor, so the hook comes from above).

The maths lives in :mod:`audit.losses`; the loop, folder handling, checkpoints and data parallelism are the
classifier recipe's too (:mod:`audit.recipes.training_run`).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from audit.errors import AuditError, warn
from audit.load.causal_lm import CausalLM, check_same_tokenizer, keep_first_layers, load_causal_lm
from audit.load.data.text import (
    IGNORE_INDEX,
    Documents,
    TokenWindows,
    pack_windows,
    read_documents,
    tokenize_windows,
)
from audit.losses import distillation_loss, label_smoothed_cross_entropy
from audit.outputs import Output, check_outputs
from audit.recipes.training_run import (
    Trained,
    TrainingBatch,
    claim_folder,
    finished_record,
    fit,
    mixed_precision,
    training_device,
)
from audit.reduce.topk import WINDOW_METADATA, read_topk_logits, topk_kd_loss
from audit.run.adapters import adapter_of
from audit.run.device import resolve_batch_size, resolve_dtype
from audit.run.distributed import ProcessGroup, on_main
from audit.run.evaluate import evaluate_tokens
from audit.run.generate import batch_seed, completion_windows, generate_completions, pad_token, reply_prompts
from audit.settings import TINY_LM, CompareSettings, LMTrainSettings, tiny_lm_sizes
from audit.stats.summary import summarize_tokens

DEV_BOOTSTRAP = 200  # resamples of the dev audit's cluster bootstrap (the record's CIs)
# report fields left out of the record's dev entries: the large ones, and the audit's own timing (a property of
# that evaluation, not of the student)
REPORT_ONLY = ("entropy_histogram", "maxprob_histogram", "reliability", "scatter", "divergence", "forward_seconds",
               "tokens_per_second")


class TeacherLogits:
    """The teacher's logits at the scored positions of a step's batch, (P, V) float32, computed under no_grad.

    With ``share=True`` each step's logits are kept (float16: steps x P x V x 2 bytes, 1.8 GB for 200 steps of
    94 tokens at V = 49,152) and handed to every later run that asks for the same step: a replication's KD arms
    see the same windows in the same order (same seed, batch size and windows), so the teacher runs once for all
    of them. float16 keeps logits to 3 significant digits (a relative error of 5e-4 in each teacher probability
    at |logit| < 32); without sharing nothing is rounded.
    """

    def __init__(self, teacher: CausalLM, *, share: bool = False) -> None:
        self.teacher, self.share, self.kept = teacher, share, {}

    def __call__(self, step: int, inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """The (P, V) logits at the ``keep`` positions of the batch ``inputs`` (the student's model inputs)."""
        if step in self.kept:
            return self.kept[step].to(keep.device).float()
        logits = self.score(inputs, keep)
        if self.share:
            self.kept[step] = logits.half().cpu()
            return self.kept[step].to(keep.device).float()
        return logits

    def score(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """The (P, V) logits at the ``keep`` positions of ``inputs``, never shared (an on-policy step's tokens are
        its run's own)."""
        with torch.no_grad():
            return self.teacher.model(**inputs).logits[keep].float()  # (P, V)


class DevEvaluation(Protocol):
    """A dev evaluation for :func:`train_lm` (``audit train`` passes :func:`audit.integrations.dev_evaluation`)."""

    def __call__(self, settings: LMTrainSettings, teacher: CausalLM, student: CausalLM, documents: Documents, *,
                 step: int, epoch: float, out: Path | None, progress: bool) -> dict:
        """The token-level compare report (``"kd-audit/compare/2"``) of ``teacher`` (named ``teacher``) against the
        trained ``student`` (named ``student``) on the dev ``documents`` in windows of ``settings.max_length`` tokens
        (stride ``max_length // 2``), at training step ``step``; ``out``: the run's folder to write step files in
        (None on processes other than the main one)."""


class TopkTargets:
    """A teacher's top-k log-probabilities (:mod:`audit.reduce.topk`) at the scored positions of the training windows,
    handed out per batch in the order of ``logits[targets != ignore_index]``.

    The file must hold exactly the windows' scored positions in document order (those of
    :func:`audit.load.data.text.tokenize_windows` on the same data, limit and tokenizer: packing moves short documents
    into shared rows, which this class follows), and name their ``max_length`` and ``stride`` in its metadata
    (:data:`audit.reduce.topk.WINDOW_METADATA`): every window length and stride scores each token once, so only the
    metadata tells which context the teacher saw.

    Raises (on construction):
        AuditError: the file fails :func:`audit.reduce.topk.read_topk_logits` against ``windows`` (positions of other
            data or tokenizer, ids outside ``[0, vocab_size)``, NaN log-probabilities), or its metadata names
            other windows or none.
    """

    def __init__(self, path: str, windows: TokenWindows, vocab_size: int) -> None:
        sequence_ids, positions = windows.scored()
        # the file's rows follow the documents; packed windows put short documents out of that order
        order = torch.argsort(sequence_ids * (int(positions.max()) + 1) + positions)
        self.file = read_topk_logits(path, vocab_size=vocab_size, sequence_ids=sequence_ids[order],
                                     positions=positions[order])
        self.file_rows = torch.empty_like(order)
        self.file_rows[order] = torch.arange(len(order))  # (P,) the file row of each scored position
        expected = {key: str(windows.info[key]) for key in WINDOW_METADATA}
        got = {key: self.file.metadata.get(key) for key in WINDOW_METADATA}
        if got != expected:
            raise AuditError(f"expected a top-k file of windows with max_length {expected['max_length']} and stride "
                             f"{expected['stride']} (its metadata), got {got} in {path}; write it from the training "
                             "windows with write_topk_logits(..., metadata={'max_length': ..., 'stride': ...})")
        self.counts = (windows.targets != IGNORE_INDEX).sum(1)  # (W,) scored positions per window
        self.starts = self.counts.cumsum(0) - self.counts  # (W,) each window's first row in the file

    def __call__(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, k) int64 ids and (P, k) float32 log-probabilities of windows ``rows``, on ``device``."""
        index = torch.cat([torch.arange(start, start + count)
                           for start, count in zip(self.starts[rows].tolist(), self.counts[rows].tolist())])
        index = self.file_rows[index]
        return self.file.ids[index].long().to(device), self.file.logprobs[index].float().to(device)


def build_lm_student(spec: str, teacher: CausalLM, *, seed: int) -> CausalLM:
    """The student of ``spec`` (see :class:`LMTrainSettings`), in train mode, on CPU, float32.

    ``tiny-llama[:hidden=H,layers=L]`` is a fresh Llama (H / 16 heads, 4H MLP, tied embeddings) over the
    teacher's tokenizer; ``TEACHER@layers=k`` (the teacher's own spec) is a copy of the loaded teacher cut to
    its first k layers (a GGUF teacher is not dequantised again); anything else is loaded by
    :func:`audit.load.causal_lm.load_causal_lm` and must share the teacher's tokenizer.

    Raises:
        AuditError: a bad spec, ``@layers=k`` above the model's layers, or a tokenizer other than the teacher's.
    """
    torch.manual_seed(seed)
    if spec.startswith(TINY_LM):
        from transformers import LlamaConfig, LlamaForCausalLM

        hidden, layers = tiny_lm_sizes(spec)
        tokenizer = teacher.tokenizer
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=hidden // 16,
                             num_key_value_heads=hidden // 16, max_position_embeddings=teacher.context or 2048,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        student = CausalLM(spec, LlamaForCausalLM(config), tokenizer, spec)
    elif "@" in spec and spec.partition("@")[0] == teacher.source.partition("@")[0]:
        model = copy.deepcopy(teacher.model)
        keep_first_layers(model, spec.partition("@")[2], spec)
        # a GGUF teacher's weights were dequantised to float on load, but transformers keeps its GGUF marker,
        # which makes save_pretrained refuse the copy: the student is a plain float model
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        student = CausalLM("student", model, teacher.tokenizer, spec)
    else:
        student = load_causal_lm(spec, name="student")
    check_same_tokenizer([teacher, student])
    if student.model.config.vocab_size != teacher.model.config.vocab_size:
        raise AuditError(f"expected the student's output layer over the teacher's {teacher.model.config.vocab_size} "
                         f"tokens, got {student.model.config.vocab_size}; pick a student of the same vocabulary")
    student.model.train()
    return student


def training_windows(documents: Documents, tokenizer, settings: LMTrainSettings, *, pack: bool = True) -> TokenWindows:
    """Windows of ``max_length`` tokens advancing by ``stride`` (default ``max_length - 1``: each token a
    target once, with up to ``max_length - 1`` tokens of context); with ``pack``, documents shorter than a window
    share rows (:func:`audit.load.data.text.pack_windows`), else each has a padded row of its own.

    Raises:
        AuditError: what :func:`audit.load.data.text.tokenize_windows` refuses.
    """
    windows = tokenize_windows(documents, tokenizer, max_length=settings.max_length,
                               stride=settings.stride or settings.max_length - 1)
    return pack_windows(windows) if pack else windows


def attends_within_documents(lm: CausalLM) -> bool:
    """Whether ``lm`` keeps attention inside each packed document: given position ids that restart at 0 and no
    attention mask (as in :func:`audit.load.data.text.pack_windows`' rows), a random sequence placed after another
    gets the logits it gets alone (to 1e-4). transformers' models whose masks come from its packed-sequence
    detection do; others let the second sequence attend to the first."""
    model = lm.model
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(int(model.config.vocab_size), (1, n), generator=generator).to(device)
                     for n in (5, 4))
    training = model.training
    model.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            alone = model(input_ids=second, use_cache=False).logits.float()
            packed = model(input_ids=torch.cat([first, second], 1), use_cache=False,
                           position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]], device=device)).logits.float()
    except (TypeError, ValueError):  # a forward without position ids
        return False
    finally:
        model.train(training)
    return torch.allclose(packed[:, 5:], alone, atol=1e-4, rtol=1e-4)


def unigram_perplexity(train: TokenWindows, test: TokenWindows, vocab_size: int) -> float:
    """Perplexity of ``test``'s targets under add-one smoothed unigram frequencies of ``train``'s: the
    baseline a student must clearly beat to count as having learned."""
    counts = torch.bincount(train.targets[train.targets != IGNORE_INDEX], minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(float(-logp[test.targets[test.targets != IGNORE_INDEX]].mean()))


def on_policy_step(settings: LMTrainSettings, step: int) -> bool:
    """Whether step ``step`` trains on the student's own samples: a uniform draw in [0, 1) seeded by the run's seed
    and the step, below ``settings.lmbda`` (never at 0, always at 1; a resumed run draws the same)."""
    return random.Random(f"kd-audit on-policy {settings.seed} {step}").random() < settings.lmbda


def sampling_seed(settings: LMTrainSettings, step: int) -> int:
    """The ``seed`` of step ``step``'s samples (:func:`audit.run.generate.generate_completions`)."""
    return batch_seed(settings.seed, step)


def batch_documents(windows: TokenWindows, rows: torch.Tensor) -> list[int]:
    """The documents (indices into the training documents) with tokens in windows ``rows``, ascending."""
    found = windows.sequence_ids[rows] if windows.documents is None else windows.documents[rows]
    return sorted(set(found[found >= 0].tolist()))


def own_samples(student: CausalLM, prompts: list[list[int]], settings: LMTrainSettings, step: int,
                device: torch.device) -> TokenWindows:
    """The student's replies to ``prompts`` as windows that score the reply's tokens only
    (:func:`audit.run.generate.completion_windows`: one right-padded row per prompt, with an attention mask).

    Each prompt keeps its last ``max_length - max_new_tokens`` tokens, so that it and its reply fit a window. The
    student samples from its own distribution (temperature 1, top-p 1, no top-k) up to ``max_new_tokens`` tokens or
    its EOS, in eval mode (no dropout) and in its own dtype, seeded by :func:`sampling_seed`.
    """
    room = settings.max_length - settings.max_new_tokens
    prompts = [prompt[-room:] for prompt in prompts]
    model = student.model
    training = model.training
    model.eval()
    try:
        completions = generate_completions(student, prompts, max_new_tokens=settings.max_new_tokens, temperature=1.0,
                                           top_p=1.0, seed=sampling_seed(settings, step), device=device,
                                           dtype=next(model.parameters()).dtype, batch_size=len(prompts))
    finally:
        model.train(training)
    return completion_windows(prompts, completions, pad=pad_token(student))


def lm_loss(settings: LMTrainSettings, logits: torch.Tensor, targets: torch.Tensor,
            teacher_logits: torch.Tensor | None = None,
            teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None, *, on_policy: bool = False) -> torch.Tensor:
    """The training loss of (P, V) student logits at P scored positions with (P,) next tokens; KD's targets
    are the teacher's (P, V) logits or its (P, k) top-k ids and log-probabilities (``settings.teacher_topk``).
    ``on_policy``: the tokens are the student's own samples, and the loss is KD's soft term alone."""
    if on_policy:
        return distillation_loss(logits, teacher_logits, None, divergence=settings.divergence or "forward-kl",
                                 beta=settings.beta, temperature=settings.temperature, kd_weight=1.0,
                                 backend=settings.backend)
    if settings.loss == "kd" and teacher_topk is not None:
        return topk_kd_loss(logits, *teacher_topk, targets, kd_weight=settings.kd_weight, backend=settings.backend)
    if settings.loss == "kd":
        return distillation_loss(logits, teacher_logits, targets, divergence=settings.divergence or "forward-kl",
                                 beta=settings.beta, temperature=settings.temperature, kd_weight=settings.kd_weight,
                                 backend=settings.backend)
    smoothing = settings.label_smoothing if settings.loss == "ls" else 0.0
    return label_smoothed_cross_entropy(logits, targets, label_smoothing=smoothing, backend=settings.backend)


def train_lm(settings: LMTrainSettings, *, overwrite: bool = False, progress: bool = True,
             stop_after: int | None = None, teacher: CausalLM | None = None,
             teacher_logits: TeacherLogits | None = None, audit_dev: bool = True,
             evaluate: DevEvaluation | None = None) -> dict:
    """Train a causal-LM student; return its training record (also written to ``out/training_record.json``).

    Deterministic for a seed (window order from ``seed`` and the epoch; no dropout in the tiny student);
    ``stop_after`` ends the run after that many steps as if killed (a checkpoint is written first), and
    calling :func:`train_lm` again resumes it to the same weights as an uninterrupted run. Under ``torchrun``
    every process takes its slice of each batch (DDP), as in :func:`audit.recipes.train.train`.

    ``teacher``: ``settings.teacher`` already loaded (a replication trains many students of one teacher);
    ``teacher_logits``: a :class:`TeacherLogits` of it shared with runs of the same windows, seed and batch size.
    ``audit_dev=False`` leaves out the dev audit (the record's ``dev`` entries are None; a replication audits
    all its students together). ``evaluate``: the dev audit to run instead of :func:`dev_audit` (its report's
    student, teacher, pair and data make the record's entries).

    Raises:
        AuditError: bad settings or input (see :meth:`LMTrainSettings.validate`, :func:`build_lm_student`,
            :func:`training_windows`; dev documents the dev audit's windows cannot hold; ``lmbda`` on documents
            without prompts), all before ``out`` is created.
    """
    settings.validate()
    out = Path(settings.out)
    check_outputs([Output(out, "folder", "--out")], [settings.data, settings.model.partition("@")[0],
                                                     settings.teacher.partition("@")[0], settings.teacher_topk])
    finished = finished_record(out, settings.run_key(), overwrite)
    if finished is not None:
        return finished
    device, group = training_device(settings.device)
    progress = progress and group.is_main
    # everything that can be refused is read before the output folder is made
    teacher = teacher or load_causal_lm(settings.teacher, name="teacher")
    student = build_lm_student(settings.model, teacher, seed=settings.seed)
    for lm in (teacher, student):
        if lm.context is not None and settings.max_length > lm.context:
            raise AuditError(f"expected --max-length at most the {lm.name}'s context of {lm.context} tokens, got "
                             f"{settings.max_length}")
    columns = dict(prompt_column=settings.prompt_column, completion_column=settings.completion_column)
    train_docs = read_documents(settings.data, split=settings.train_split, limit=settings.train_limit, **columns)
    dev_docs = read_documents(settings.data, split=settings.eval_split, limit=settings.eval_limit, **columns)
    prompts = None
    if settings.lmbda > 0:
        if train_docs.prompts is None and train_docs.messages is None:
            raise AuditError(f"expected prompt/completion or chat data with --lmbda (the student replies to its "
                             f"prompts), got plain text in {train_docs.name}; pass --prompt-column and "
                             "--completion-column or data with a messages column, or drop --lmbda")
        prompts = reply_prompts(train_docs, teacher.tokenizer)
        empty = next((i for i, prompt in enumerate(prompts) if not prompt), None)
        if empty is not None:
            raise AuditError(f"expected a prompt of at least one token to reply to in every document with --lmbda, "
                             f"got none in document {train_docs.ids[empty]!r} of {train_docs.name}; drop that row")
    windows = training_windows(train_docs, teacher.tokenizer, settings)
    if windows.position_ids is not None:
        crossing = [lm.name for lm in (student, teacher) if not attends_within_documents(lm)]
        if crossing:
            warn(f"{' and '.join(crossing)} let attention cross packed documents (no packed-sequence masks from "
                 "position ids): each document shorter than --max-length trains in a padded window of its own")
            windows = training_windows(train_docs, teacher.tokenizer, settings, pack=False)
    # the dev audit's windows too: a dev document it would refuse is refused now, not after the training
    dev_windows = tokenize_windows(dev_docs, teacher.tokenizer, max_length=settings.max_length) if audit_dev else None
    topk = None
    if settings.teacher_topk is not None:
        topk = TopkTargets(settings.teacher_topk, windows, int(student.model.config.vocab_size))
    on_main(lambda: claim_folder(out, settings.run_key()), group)

    model = student.model.to(device)
    teacher.model.to(device)
    if settings.freeze_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.requires_grad_(False)
    teacher_logits = teacher_logits or TeacherLogits(teacher)

    def batch_loss(forward: torch.nn.Module, batch: TrainingBatch) -> torch.Tensor:
        if prompts is not None and on_policy_step(settings, batch.step):  # the student's own replies instead
            own = own_samples(student, [prompts[d] for d in batch_documents(windows, batch.rows)], settings,
                              batch.step, device)
            inputs = {"input_ids": own.input_ids.to(device), "attention_mask": own.attention_mask.to(device)}
            targets = own.targets.to(device)
            keep = targets != IGNORE_INDEX
            with mixed_precision(device):
                logits = forward(**inputs).logits[keep]  # (P, V) at the sampled tokens
                soft = teacher_logits.score(inputs, keep) / settings.teacher_temperature
            return lm_loss(settings, logits, targets[keep], soft, on_policy=True)
        inputs = {"input_ids": windows.input_ids[batch.rows].to(device)}
        if windows.position_ids is None:
            inputs["attention_mask"] = windows.attention_mask[batch.rows].to(device)
        else:  # packed rows: each document's positions from 0 and no mask keep its attention inside it
            inputs.update(position_ids=windows.position_ids[batch.rows].to(device), use_cache=False)
        targets = windows.targets[batch.rows].to(device)
        keep = targets != IGNORE_INDEX
        with mixed_precision(device):  # bf16 logits on CUDA go to the fused kernels as they are (fp32 math inside)
            logits = forward(**inputs).logits[keep]  # (P, V)
            soft = None
            if settings.loss == "kd" and topk is None:
                soft = teacher_logits(batch.step, inputs, keep) / settings.teacher_temperature
        return lm_loss(settings, logits, targets[keep], soft, None if topk is None else topk(batch.rows, device))

    def record(trained: Trained) -> dict:
        entries = {
            "settings": asdict(settings), "steps": trained.steps, "windows": len(windows),
            "packed": windows.info.get("packed"),
            "tokens_per_step": settings.batch_size * (settings.max_length - 1), "wall_seconds": trained.wall_seconds,
            "device": str(device), "loss_history": {"first_step": trained.first_step, "values": trained.losses},
            "dev": None, "dev_teacher": None, "dev_pair": None, "dev_unigram_perplexity": None, "dev_data": None,
            "on_policy": None,
        }
        if prompts is not None:
            room = settings.max_length - settings.max_new_tokens
            entries["on_policy"] = {
                "lmbda": settings.lmbda, "steps": sum(on_policy_step(settings, s) for s in range(trained.steps)),
                "max_new_tokens": settings.max_new_tokens, "prompts_cut": sum(len(p) > room for p in prompts),
                "sampling": "the student's own distribution (temperature 1, top-p 1), until its EOS",
                "loss": "the soft term alone on the sampled tokens, scored by the teacher"}
        trained_student = CausalLM("student", model, student.tokenizer, settings.model)
        if audit_dev and evaluate is not None:
            report = evaluate(settings, teacher, trained_student, dev_docs, step=trained.steps,
                              epoch=trained.steps / math.ceil(len(windows) / settings.batch_size),
                              out=out if group.is_main else None, progress=progress)
            entries.update(dev=_brief(report["models"]["student"]), dev_teacher=_brief(report["models"]["teacher"]),
                           dev_pair=_brief(report["pairs"][0]), dev_data=report["data"],
                           dev_unigram_perplexity=unigram_perplexity(windows, dev_windows,
                                                                     int(teacher.model.config.vocab_size)))
        elif audit_dev:
            entries.update(dev_audit(settings, teacher, trained_student, windows, dev_docs, device=device, group=group,
                                     progress=progress, dev_windows=dev_windows))
        return entries

    trained = fit(settings, model, batch_loss, examples=len(windows),
                  parameters=[p for p in model.parameters() if p.requires_grad], tokenizer=student.tokenizer,
                  record=record, group=group, steps=settings.steps, terms=lambda rows: scored_tokens(windows, rows),
                  unit="tokens", progress=progress, stop_after=stop_after)
    if trained.record is None:
        return {"stopped_at": trained.stopped_at, "losses": trained.losses}
    return trained.record


def scored_tokens(windows: TokenWindows, rows: torch.Tensor) -> int:
    """The number of positions windows ``rows`` score (the terms of their mean token loss)."""
    return int((windows.targets[rows] != IGNORE_INDEX).sum())


def dev_audit(settings: LMTrainSettings, teacher: CausalLM, student: CausalLM, windows: TokenWindows,
              dev_docs: Documents, *, device: torch.device, group: ProcessGroup, progress: bool,
              dev_windows: TokenWindows | None = None) -> dict:
    """The record's dev entries: the student and teacher audited token by token on the dev documents, and the
    perplexity there of a unigram model of the training ``windows`` (the baseline a student must beat).
    ``dev_windows``: the dev documents' windows when already made (:func:`train_lm` makes them before training,
    to refuse a document they cannot hold before anything is written).

    The audit's numbers are those of ``audit.compare.compare_lm`` with :data:`DEV_BOOTSTRAP` resamples and the
    run's seed, from the layers it wraps (the recipes stay below the auditor)."""
    if dev_windows is None:
        dev_windows = tokenize_windows(dev_docs, teacher.tokenizer, max_length=settings.max_length)
    models = [adapter_of(teacher, "teacher"), adapter_of(student, "student")]
    vocab_size = int(teacher.model.config.vocab_size)
    trained_dtype = next(student.model.parameters()).dtype
    columns = evaluate_tokens(models, dev_windows, device=device, dtype=resolve_dtype("auto", device),
                              batch_size=resolve_batch_size("auto", device, "lm"), progress=progress, group=group)
    student.model.to(dtype=trained_dtype)  # the audit casts to its dtype (bf16 on GPUs); the student is saved after
    # the auditor's defaults (bins, verdict rule) but for the resamples
    summary = CompareSettings(n_bootstrap=DEV_BOOTSTRAP, seed=settings.seed)
    model_stats, pairs, _ = summarize_tokens(columns, [m.name for m in models], vocab_size, settings=summary)
    for m in models:
        model_stats[m.name]["source"] = m.source
    data = {"name": dev_docs.name, **dev_docs.info, "unit": "token", "n": int(columns["sequence"].numel()),
            "n_sequences": len(dev_docs), "windows": dev_windows.info, "label_names": None}
    return {"dev": _brief(model_stats["student"]), "dev_teacher": _brief(model_stats["teacher"]),
            "dev_pair": _brief(pairs[0]), "dev_data": data,
            "dev_unigram_perplexity": unigram_perplexity(windows, dev_windows, vocab_size)}


def _brief(stats: dict) -> dict:
    """A report entry without its plotting data."""
    return {k: v for k, v in stats.items() if k not in REPORT_ONLY}
