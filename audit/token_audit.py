"""The token audit of causal LMs: teacher and students + text -> per-token columns -> the compare/2 report.

Specs -> :func:`audit.run.adapters.set_up` (kind "lm") -> the text's token windows (:mod:`audit.load.data.text`)
-> :func:`audit.run.evaluate.evaluate_tokens` (every model's logits reduced to per-token columns a batch at a time;
no logits kept) -> :func:`token_report` (:func:`audit.stats.summary.summarize_tokens`: per-model numbers, pairs
and verdicts with cluster-bootstrap CIs by sequence) -> where each student diverges (:func:`add_token_divergence`),
how long it took (:func:`add_timing`) and, with ``--generate``, the same audit on each student's own text
(:func:`add_on_policy`). :mod:`audit.compare` is the auditor's API over this and the classifier audit.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from audit.errors import AuditError
from audit.load.causal_lm import CausalLM, check_same_tokenizer
from audit.load.data import calibration_spec
from audit.load.data.text import IGNORE_INDEX, Documents, TokenWindows, read_documents, tokenize_windows
from audit.load.models import Predictions, TextClassifier
from audit.reduce.reduction import column_names
from audit.report.envelope import envelope
from audit.run.adapters import (
    KIND_NAMES,
    Adapter,
    Setup,
    TopkFileAdapter,
    audit_kind,
    set_up,
)
from audit.run.cache import open_store, token_key
from audit.run.device import resolve_batch_size
from audit.run.distributed import ProcessGroup
from audit.run.evaluate import evaluate_tokens, token_logits
from audit.run.generate import (
    columns_key,
    completion_windows,
    generate_completions,
    generation_key,
    pad_token,
    prompt_tokens,
    stop_tokens,
)
from audit.settings import (  # noqa: F401 (MAX_BINS, MAX_BOOTSTRAP re-exported)
    DEFAULT_MAX_LENGTH,
    MAX_BINS,
    MAX_BOOTSTRAP,
    CompareSettings,
    unused_compare_options,
)
from audit.stats.divergence import divergence_breakdown, row_details
from audit.stats.inheritance import (
    warn_insufficient,
)
from audit.stats.summary import summarize_tokens
from audit.stats.temperature import (
    fit_temperature,
    temperature_ratio,
)

TEMPERATURE_RESAMPLES = 200  # the T* ratio's resamples: a classifier's refit two temperatures each
ModelLike = str | Predictions | TextClassifier | CausalLM | Adapter
TOKEN_SCHEMA = "kd-audit/compare/2"


TOKEN_SCHEMA_CHANGES = ("compare/2 = compare/1 for token-level audits of causal LMs: n counts scored tokens; adds "
                        "n_sequences, perplexity, kl_reverse, topk_overlap and data.unit; CIs are cluster-bootstrap "
                        "intervals by sequence")


CALIBRATED_TOKEN_FIELDS = ("accuracy", "nll", "ece", "mce", "ece_adaptive", "smece", "ece_debiased", "ece_sweep",
                           "ece_toplabel", "ks")  # a classifier's calibrated fields but Brier (no full distribution kept)


CONTEXT_TOKENS = 24  # tokens of text shown before each of a pair's largest-KL positions


CALIBRATION_POSITIONS = 2048  # dev tokens whose full logits fit a token audit's T* (P x V float32 per model)


def compare_lm(teacher: str | CausalLM, students: list[str | CausalLM], data: str | Documents, *,
               names: list[str] | None = None, settings: CompareSettings | None = None) -> dict:
    """Audit a causal-LM teacher and its students token by token on ``data`` (text documents).

    Args:
        teacher, students: specs for :func:`load_causal_lm` (the teacher also a top-k logits file), or loaded
            :class:`CausalLM`.
        data: a spec for :func:`audit.load.data.text.read_documents`, or loaded :class:`Documents`.
        names: report names, teacher first (they replace loaded models' own names).
        settings: ``max_length`` (window length; None: the smallest context of the models), ``stride``, ``split``,
            ``text_column``, ``prompt_column``, ``completion_column``, ``limit`` (documents), ``limit_tokens``
            (scored tokens, whole windows), device, dtype, batch size, bins, bootstrap, seed, cache.

    Raises:
        AuditError: any bad input (different tokenizers, a window longer than a model's context, text too short),
            before the models run.
    """
    settings = settings or CompareSettings()
    return audit_tokens(set_up(teacher, students, names, settings, kind="lm"), data, settings)


def audit_tokens(setup: Setup, data: str | Documents, settings: CompareSettings) -> dict:
    """:func:`compare_lm` on models already set up (:func:`audit.run.adapters.set_up`, kind "lm")."""
    models = list(setup.models)
    lms = [m.model for m in models if not m.saved]
    check_same_tokenizer(lms)
    if settings.max_length is None:  # not given: windows as long as every model can read
        contexts = [m.context for m in lms if m.context is not None]
        settings = dataclasses.replace(settings, max_length=min(contexts, default=DEFAULT_MAX_LENGTH))
    for m in lms:
        if m.context is not None and settings.max_length > m.context:
            raise AuditError(f"expected --max-length at most {m.name}'s context of {m.context} tokens, got "
                             f"{settings.max_length}; pass --max-length {m.context} or less")
    documents = data if isinstance(data, Documents) else read_documents(
        data, split=settings.split, text_column=settings.text_column, prompt_column=settings.prompt_column,
        completion_column=settings.completion_column, limit=settings.limit)
    windows = tokenize_windows(documents, lms[0].tokenizer, max_length=settings.max_length, stride=settings.stride,
                               limit_tokens=settings.limit_tokens)
    documents = documents.part(0, windows.info["documents"])  # the documents read before --limit-tokens stopped
    prompts = generation_prompts(models, lms, documents, settings) if settings.generate else None
    vocab_size = int(lms[0].model.config.vocab_size)
    topk = None
    if isinstance(models[0], TopkFileAdapter):
        models[0] = models[0].read(windows, vocab_size)
        topk = models[0].k
    device, dtype = setup.device, setup.dtype
    batch_size = resolve_batch_size(settings.batch_size, device, "lm")
    calibration = None
    if settings.calibrate:
        if topk is not None:
            raise AuditError(f"expected a teacher with full logits for --calibrate, got the top-{topk} logits file "
                             f"{models[0].source} (its temperature cannot be fitted); pass the teacher's checkpoint "
                             "or drop --calibrate")
        calibration = fit_token_temperatures(models, lms[0].tokenizer, data, settings, device=device, dtype=dtype,
                                             batch_size=batch_size)
    scaled = None if calibration is None else {"calibrated": dict(enumerate(calibration["temperatures"]))}
    n_columns = len(column_names([m.name for m in models], len(models) - 1)) * (1 if scaled is None else 2)
    store = open_store(token_key([m.model for m in models], documents, windows, dtype=dtype, device=device,
                                 batch_size=batch_size, scaled=scaled),
                       name="+".join(m.name for m in models), width=n_columns) if settings.cache else None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    columns = evaluate_tokens(models, windows, device=device, dtype=dtype, batch_size=batch_size,
                              progress=settings.progress, store=store, group=setup.group, scaled=scaled,
                              timings=timings)
    evaluation_seconds = time.perf_counter() - start
    data_info = {"name": documents.name, **documents.info, "unit": "token", "n": int(columns["sequence"].numel()),
                 "n_sequences": len(documents), "windows": windows.info, "label_names": None}
    if settings.limit_tokens is not None:
        data_info["limit_tokens"] = {"requested": settings.limit_tokens, "taken": data_info["n"],
                                     "documents": len(documents)}
    report = token_report(columns, models, vocab_size, settings=settings, data_info=data_info, topk=topk,
                          run={"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                               "batch_size": batch_size}, calibration=calibration)
    add_token_divergence(report, columns, windows, lms[0].tokenizer)
    add_timing(report, models, timings, evaluation_seconds)
    if prompts is not None:
        add_on_policy(report, models, documents, prompts, vocab_size, settings, device=device, dtype=dtype,
                      batch_size=batch_size, group=setup.group)
    return report


GENERATIONS_SHOWN = 10  # completions per student written into the report: those where it diverged most


PAIR_NAMES = ("teacher", "student", "scatter")  # a pair's fields that are not statistics of the text it is on


def refuse_generation(teacher: ModelLike, settings: CompareSettings) -> None:
    """Refuse ``--generate`` before any work where the teacher is not a causal LM (a classifier, saved logits, a
    callable): only a causal LM writes text to audit.

    Raises:
        AuditError: ``settings.generate`` with a teacher of another kind.
    """
    kind = audit_kind(teacher, settings) if settings.generate else "lm"
    if kind != "lm":
        raise AuditError(f"expected a causal-LM teacher and students with --generate (models that write text), got a "
                         f"{KIND_NAMES[kind]} teacher; drop --generate, or pass *ForCausalLM checkpoints")


def generation_prompts(models: list[Adapter], lms: list[CausalLM], documents: Documents,
                       settings: CompareSettings) -> list[list[int]]:
    """``--generate``'s refusals and prompts (:func:`audit.run.generate.prompt_tokens`), before any model runs.

    Raises:
        AuditError: a teacher known only through a top-k logits file; ``--max-new-tokens`` that leaves no room for
            a prompt in the smallest context of the models; a prompt that leaves no room for it.
    """
    if isinstance(models[0], TopkFileAdapter):
        raise AuditError(f"expected a teacher that runs with --generate, got the top-k logits file {models[0].source}:"
                         " it holds the teacher's log-probabilities on the data's own tokens only and cannot score the "
                         "students' new text; pass the teacher's checkpoint, or drop --generate")
    contexts = [m.context for m in lms if m.context is not None]
    return prompt_tokens(documents, lms[0].tokenizer, max_length=settings.max_length,
                         max_new_tokens=settings.max_new_tokens, context=min(contexts, default=None))


def add_on_policy(report: dict, models: list[Adapter], documents: Documents, prompts: list[list[int]],
                  vocab_size: int, settings: CompareSettings, *, device: torch.device, dtype: torch.dtype,
                  batch_size: int, group: ProcessGroup | None = None) -> None:
    """``--generate``: audit each student on its own completions of the prompts, into ``report`` (in place).

    Each student completes every prompt (:func:`audit.run.generate.generate_completions`, cached); the teacher and
    that student are scored on the completion's tokens alone (:func:`audit.run.evaluate.evaluate_tokens` on
    :func:`audit.run.generate.completion_windows`) and summarised as the reference text is
    (:func:`audit.stats.summary.summarize_tokens`, each prompt one cluster of the bootstrap). Adds
    ``models[student]["on_policy"]`` (the student's per-model numbers on its own text, and how it wrote it),
    ``pairs[i]["on_policy"]`` (the pair's statistics and verdict on that text under the pair's own names, the
    teacher's numbers there as ``teacher_summary``, and the :data:`GENERATIONS_SHOWN` completions of largest mean
    KL(teacher || student)), and ``report["on_policy"]`` (what the prompts are and how the students sampled).
    """
    teacher, students = models[0], models[1:]
    sampling = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                "top_p": settings.top_p, "seed": settings.seed}
    for pair, student in zip(report["pairs"], students):
        lm = student.model
        store = open_store(generation_key(lm, prompts, dtype=dtype, device=device, batch_size=batch_size, **sampling),
                           name=f"{student.name} (generations)", width=settings.max_new_tokens) if settings.cache else None
        completions = generate_completions(lm, prompts, device=device, dtype=dtype, batch_size=batch_size, store=store,
                                           group=group, progress=settings.progress, **sampling)
        windows = completion_windows(prompts, completions, pad=pad_token(lm))
        pair_models = [teacher, student]
        width = len(column_names([m.name for m in pair_models], 1))
        store = open_store(columns_key([m.model for m in pair_models], windows, dtype=dtype, device=device,
                                       batch_size=batch_size),
                           name=f"{teacher.name}+{student.name} (own text)", width=width) if settings.cache else None
        columns = evaluate_tokens(pair_models, windows, device=device, dtype=dtype, batch_size=batch_size,
                                  progress=settings.progress, store=store, group=group)
        model_stats, (own,), _ = summarize_tokens(columns, [teacher.name, student.name], vocab_size, settings=settings)
        stops = stop_tokens(lm)
        ended = sum(1 for c in completions if c[-1] in stops)
        report["models"][student.name]["on_policy"] = {
            **{k: v for k, v in model_stats[student.name].items() if k != "role"},
            "generation": {"prompts": len(prompts), "tokens": sum(map(len, completions)), "ended_at_eos": ended,
                           "mean_length": sum(map(len, completions)) / len(completions)}}
        pair["on_policy"] = {**{k: v for k, v in own.items() if k not in PAIR_NAMES},
                             "n": int(columns["sequence"].numel()), "n_sequences": len(prompts),
                             "teacher_summary": {k: v for k, v in model_stats[teacher.name].items() if k != "role"},
                             "generations": most_divergent(columns, documents, prompts, completions, lm, stops)}
    report["on_policy"] = {
        **sampling, "n_prompts": len(prompts),
        "prompts": ("the prompt column" if documents.prompts is not None else
                    "each conversation rendered by the chat template up to its last assistant reply, with the "
                    "assistant header" if documents.messages is not None else
                    f"the first half of each document's first window (min(tokens, {settings.max_length}) // 2 tokens, "
                    f"at most the models' context less --max-new-tokens)"),
        "sampling": ("greedy decoding" if settings.temperature == 0 else
                     f"sampling at temperature {settings.temperature:g}, top-p {settings.top_p:g}, no top-k"),
        "scored": "each student's completion tokens (EOS included), by the teacher and that student, at temperature 1",
        "ci_method": "percentile cluster bootstrap by prompt"}


def most_divergent(columns: dict[str, torch.Tensor], documents: Documents, prompts: list[list[int]],
                   completions: list[list[int]], lm: CausalLM, stops: set[int]) -> list[dict]:
    """The :data:`GENERATIONS_SHOWN` completions with the largest mean KL(teacher || student) over their tokens,
    largest first: document id, prompt and completion text, tokens, whether it ended at EOS, and its mean KLs."""
    sequence = columns["sequence"]
    counts = torch.bincount(sequence, minlength=len(prompts)).double()
    means = {key: torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, sequence, columns[f"pair0.{key}"].double())
             / counts for key in ("kl", "kl_reverse")}
    order = sorted(range(len(prompts)), key=lambda i: -float(means["kl"][i]))[:GENERATIONS_SHOWN]
    decode = lm.tokenizer.decode
    return [{"id": documents.ids[i],
             "prompt": documents.prompts[i] if documents.prompts is not None else decode(prompts[i]),
             "completion": decode(completions[i], skip_special_tokens=True), "tokens": len(completions[i]),
             "ended_at_eos": completions[i][-1] in stops, "kl": float(means["kl"][i]),
             "kl_reverse": float(means["kl_reverse"][i])} for i in order]


def add_timing(report: dict, models: list, timings: dict[str, float], evaluation_seconds: float) -> None:
    """How long the token audit's evaluation took: per model its own forwards (``forward_seconds``, a causal
    LM's output layer excluded: the reduction applies it) and ``tokens_per_second`` over the positions it computed
    (null when every batch came from the cache); the whole loop and the reduction in ``report["timing"]``."""
    computed = int(timings.get("positions", 0))
    for i, m in enumerate(models):
        seconds = timings.get(f"model.{i}", 0.0)
        report["models"][m.name].update(forward_seconds=seconds,
                                        tokens_per_second=computed / seconds if computed and seconds > 0 else None)
    report["timing"] = {"evaluation_seconds": evaluation_seconds, "reduction_seconds": timings.get("reduction", 0.0),
                        "positions_computed": computed, "positions_cached": report["data"]["n"] - computed,
                        "tokens_per_second": computed / evaluation_seconds if computed else None}


def add_token_divergence(report: dict, columns: dict[str, torch.Tensor], windows: TokenWindows, tokenizer) -> None:
    """Each pair's ``divergence`` (:func:`audit.stats.divergence.divergence_breakdown` of its per-token columns),
    with its top tokens as strings and its largest-KL positions as text: the :data:`CONTEXT_TOKENS` tokens up to
    the position, the target token and both models' top-1 tokens."""
    mask = windows.targets != IGNORE_INDEX
    length = windows.input_ids.shape[1]
    window_row = torch.arange(len(windows))[:, None].expand_as(mask)[mask]
    position = torch.arange(length).expand_as(mask)[mask]
    token = windows.targets[mask]
    h_t = columns["0.entropy"]
    for j, pair in enumerate(report["pairs"], 1):
        kl, h_s = columns[f"pair{j - 1}.kl"], columns[f"{j}.entropy"]
        out = divergence_breakdown(kl, h_s - h_t, h_t, position=position, window_length=length, token=token)
        for entry in out["top_tokens"]:
            entry["token"] = tokenizer.decode([entry["token_id"]])
        contexts = row_details(out.pop("top_rows"), kl, h_t, h_s, columns["0.top1"], columns[f"{j}.top1"])
        for entry in contexts:
            w, c = int(window_row[entry["row"]]), int(position[entry["row"]])
            entry.update(sequence=int(windows.sequence_ids[w]), position=c,
                         context=tokenizer.decode(windows.input_ids[w, max(0, c + 1 - CONTEXT_TOKENS):c + 1].tolist()),
                         target=tokenizer.decode([int(token[entry["row"]])]),
                         teacher_top1=tokenizer.decode([entry["teacher_top1"]]),
                         student_top1=tokenizer.decode([entry["student_top1"]]))
        out["top_contexts"] = contexts
        pair["divergence"] = out


def fit_token_temperatures(models: list, tokenizer, data: str | Documents, settings: CompareSettings, *,
                           device: torch.device, dtype: torch.dtype, batch_size: int) -> dict:
    """``--calibrate`` for a token audit: one T* per model minimising the NLL of a seeded random sample of
    :data:`CALIBRATION_POSITIONS` scored tokens of the calibration text (:func:`calibration_spec`, windowed as
    the test text), and each student's T* ratio to the teacher's with a cluster-bootstrap CI by sequence.

    Returns:
        ``{"temperatures": [T* per model], "ratios": [per student], "data": spec, "n": tokens, "n_sequences"}``.

    Raises:
        AuditError: no calibration text, or text the tokenizer cannot window; TemperatureError (an AuditError)
            for degenerate logits.
    """
    spec = calibration_spec(data, settings)
    documents = read_documents(spec, text_column=settings.text_column, prompt_column=settings.prompt_column,
                               completion_column=settings.completion_column, limit=settings.limit)
    windows = tokenize_windows(documents, tokenizer, max_length=settings.max_length, stride=settings.stride)
    logits, targets, sequence = token_logits(models, windows, device=device, dtype=dtype, batch_size=batch_size,
                                             max_positions=CALIBRATION_POSITIONS, seed=settings.seed)
    resamples = min(settings.n_bootstrap, TEMPERATURE_RESAMPLES)
    return {"temperatures": [fit_temperature(z, targets) for z in logits],
            "ratios": [temperature_ratio(logits[0], z, targets, groups=sequence, n_resamples=resamples,
                                         seed=settings.seed) for z in logits[1:]],
            "data": spec, "n": int(targets.numel()), "n_sequences": int(sequence.unique().numel())}


def token_report(columns: dict[str, torch.Tensor], models: list, vocab_size: int, *, settings: CompareSettings,
                 data_info: dict, run: dict, topk: int | None = None, calibration: dict | None = None) -> dict:
    """The compare/2 report dict of per-position ``columns`` (:func:`evaluate_tokens`) of ``models`` (anything
    with ``name`` and ``source``, teacher first); ``run`` records how they ran (device, dtype, batch size);
    ``calibration`` (:func:`fit_token_temperatures`) adds the numbers after temperature scaling, read from the
    ``calibrated.*`` columns."""
    names = [m.name for m in models]
    warn_insufficient(int(columns["sequence"].unique().numel()), "token", settings)
    plain = {k: v for k, v in columns.items() if not k.startswith("calibrated.")}
    model_stats, pairs, differences = summarize_tokens(plain, names, vocab_size, settings=settings, topk=topk)
    for m in models:
        model_stats[m.name]["source"] = m.source
    extra = {}
    if calibration is not None:
        scaled = {k.removeprefix("calibrated."): v for k, v in columns.items() if k.startswith("calibrated.")}
        scaled_stats, scaled_pairs, _ = summarize_tokens({**scaled, "sequence": columns["sequence"]}, names,
                                                         vocab_size, settings=dataclasses.replace(settings,
                                                                                                  model_cis=False))
        for name, temperature in zip(names, calibration["temperatures"]):
            after = scaled_stats[name]
            model_stats[name].update(temperature=temperature, calibrated={
                "entropy": after["entropy_mean"], **{k: after[k] for k in CALIBRATED_TOKEN_FIELDS}})
        for pair, after, ratio in zip(pairs, scaled_pairs, calibration["ratios"]):
            pair["temperature_ratio"] = ratio
            pair["calibrated"] = {"entropy_shift": after["entropy_shift"],
                                  "corr_entropy_spearman": after["corr_entropy_spearman"],
                                  "verdict": after["verdict"], "verdict_reason": after["verdict_reason"],
                                  "verdict_survives": after["verdict"] == pair["verdict"]}
        extra["calibration"] = {
            "data": calibration["data"], "n": calibration["n"],
            "method": f"one temperature per model minimising NLL on {calibration['n']} random scored tokens of "
                      f"{calibration['n_sequences']} calibration documents (audit.stats.temperature.fit_temperature); "
                      "metrics after scaling on the test tokens"}
    return envelope(TOKEN_SCHEMA, settings, run={**run, "ci_method": "percentile cluster bootstrap by sequence (document)"},
                    data=data_info, models=model_stats, pairs=pairs, students=differences,
                    schema_changes=TOKEN_SCHEMA_CHANGES, **extra)
