"""The language-model audit: a causal-LM teacher and its students, token by token.

Data flows one way: specs -> :func:`audit.adapters.set_up` (:func:`load_causal_lm`: a Hugging Face folder or
hub id, a GGUF file, or ``SPEC@layers=k``; or a top-k logits file as teacher) and
:func:`audit.data.text.read_documents` -> :func:`audit.data.text.tokenize_windows` -> per batch of windows, every
model's adapter yields its logits of the same scored positions and :func:`audit.reduce.reduce_logits` turns them
into a few scalars per position (only those leave the device) -> the columns of every
position -> :func:`summarize_tokens`, with confidence intervals from a cluster bootstrap by sequence (the tokens
of one document are not independent) -> the report dict (schema ``kd-audit/compare/2``: the classifier report's
field names where the quantity is the same, plus ``n_sequences``, ``perplexity``, ``kl_reverse`` and
``topk_overlap``; ``n`` counts scored tokens).

Per-batch columns go to the prediction cache as they are computed (keyed by every model, the data and the
settings), so a killed run resumes with identical numbers; under ``torchrun`` each process runs its share of the
batches and every process gets all columns back (both through :func:`audit.evaluate.evaluate_plan`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from audit import metrics
from audit.data.text import IGNORE_INDEX, Documents, TokenWindows, read_documents, tokenize_windows
from audit.distributed import ProcessGroup
from audit.errors import AuditError, warn
from audit.evaluate import evaluate_plan
from audit.inheritance import undefined, verdict
from audit.metrics.cluster import cluster_bootstrap_cis
from audit.reduce import MODEL_KEYS, PAIR_KEYS, Reduction, reduce_logits
from audit.settings import CompareSettings

if TYPE_CHECKING:
    from audit.adapters import Setup
    from audit.cache import PredictionStore

SCHEMA = "kd-audit/compare/2"
SCHEMA_CHANGES = ("compare/2 = compare/1 for token-level audits of causal LMs: n counts scored tokens; adds "
                  "n_sequences, perplexity, kl_reverse, topk_overlap and data.unit; CIs are cluster-bootstrap "
                  "intervals by sequence")
AUTO_BATCH = {"cuda": 16, "cpu": 4}
HISTOGRAM_BINS = 20
SCATTER_POINTS = 2000


@dataclass(frozen=True)
class CausalLM:
    """A causal language model and its tokenizer, as loaded from ``source``."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    source: str

    @property
    def context(self) -> int | None:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) and positions > 0 else None


@dataclass(frozen=True)
class TopkTeacher:
    """A teacher seen only through a top-k logits file (:mod:`audit.topk`), read once the data is known."""

    name: str
    source: str


def is_topk_file(spec: str) -> bool:
    """True for a safetensors file holding ``topk_ids`` (a top-k logits file of :mod:`audit.topk`)."""
    path = Path(spec)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "topk_ids" in f.keys()
    except (OSError, SafetensorError):
        return False


def is_causal_lm_spec(spec: str) -> bool:
    """True for a GGUF file, ``SPEC@layers=k``, a top-k logits file, or a folder whose config names a
    ``*ForCausalLM`` architecture."""
    base = spec.partition("@")[0]
    path = Path(base)
    if path.suffix == ".gguf" or "@" in spec or is_topk_file(spec):
        return True
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except (OSError, ValueError):
            return False
        return any(str(a).endswith("ForCausalLM") for a in architectures)
    return False


def load_causal_lm(spec: str, *, name: str | None = None, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False) -> CausalLM:
    """Load a causal LM: a Hugging Face folder or hub id, a ``.gguf`` file (needs the ``gguf`` package;
    transformers dequantises it), or ``SPEC@layers=k`` (its first k decoder layers, embeddings and head kept).

    Raises:
        AuditError: a missing path; a GGUF file without the gguf package; a checkpoint that is not a causal LM;
            ``@layers=k`` outside [1, the model's layers]; weights that transformers cannot load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from audit.models import looks_like_hub_id

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    base, _, option = spec.partition("@")
    path = Path(base)
    name = name or (path.stem if path.suffix == ".gguf" else path.name or base) + (f"@{option}" if option else "")
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AuditError(f"expected a GGUF file at {path}, got no such file; check the path")
        try:
            import gguf  # noqa: F401 (transformers reads GGUF through it)
        except ImportError:
            raise AuditError(f"expected the gguf package to read {path.name}, got none installed; pip install "
                             "'kd-audit[lm]' (or pip install gguf)") from None
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.is_dir() or looks_like_hub_id(base):
        source = base
        kwargs["local_files_only"] = path.is_dir()
    else:
        raise AuditError(f"expected an existing path, a GGUF file or a hub id, got {base!r}; check the path")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        architectures = getattr(config, "architectures", None) or []
        if architectures and not any(a.endswith("ForCausalLM") for a in architectures):
            raise AuditError(f"expected a causal language model, got {', '.join(architectures)} in {base}; audit it "
                             "with --kind classifier, or pass a *ForCausalLM checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        # transformers' GGUF reader draws its own tqdm bar on stdout, whatever its progress-bar setting
        with contextlib.redirect_stdout(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AuditError(f"could not load the causal LM {spec!r} ({first_line[:200]}); pass a local checkpoint "
                         "folder or GGUF file") from None
    if option:
        keep_first_layers(model, option, spec)
    model.eval()
    return CausalLM(name=name, model=model, tokenizer=tokenizer, source=spec)


def keep_first_layers(model: torch.nn.Module, option: str, spec: str) -> None:
    """Cut a causal LM to its first k decoder layers in place, for the ``@layers=k`` option of ``spec``."""
    layers = model.model.layers
    key, _, value = option.partition("=")
    if key != "layers" or not value.isdigit() or not 1 <= int(value) <= len(layers):
        raise AuditError(f"expected @layers=k with 1 <= k <= {len(layers)} in {spec}, got @{option}; pick fewer layers")
    model.model.layers = layers[: int(value)]
    model.config.num_hidden_layers = int(value)
    if hasattr(model.config, "layer_types") and model.config.layer_types:
        model.config.layer_types = model.config.layer_types[: int(value)]


def check_same_tokenizer(models: list[CausalLM]) -> None:
    """Refuse students whose vocabulary differs from the teacher's (their token ids would mean other things).

    Raises:
        AuditError: naming both vocabulary sizes and the first token id whose token differs.
    """
    teacher = models[0]
    reference = {i: t for t, i in teacher.tokenizer.get_vocab().items()}
    for student in models[1:]:
        vocab = {i: t for t, i in student.tokenizer.get_vocab().items()}
        if vocab == reference:
            continue
        first = min(i for i in set(reference) | set(vocab) if reference.get(i) != vocab.get(i))
        raise AuditError(f"expected {student.name} to share {teacher.name}'s tokenizer, got vocabularies of "
                         f"{len(vocab)} and {len(reference)} tokens that first differ at id {first} "
                         f"({vocab.get(first)!r} vs {reference.get(first)!r}); audit students of the same tokenizer")


def column_names(names: list[str], n_students: int) -> list[str]:
    """Names of the per-position columns: every model's :data:`MODEL_KEYS`, then every pair's :data:`PAIR_KEYS`."""
    return ([f"{m}.{k}" for m in range(len(names)) for k in MODEL_KEYS]
            + [f"pair{j}.{k}" for j in range(n_students) for k in PAIR_KEYS])


def _batches(windows: TokenWindows, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, len(windows))) for start in range(0, len(windows), size)]


def reduce_batches(batches: list) -> Reduction:
    """The reduction of one batch of every model (:class:`audit.adapters.Batch`, teacher first, on the same
    positions); a top-k teacher's columns and KLs come from its file."""
    teacher, students = batches[0], [b.logits for b in batches[1:]]
    if teacher.topk is None:
        return reduce_logits(teacher.logits, students, teacher.targets)
    from audit.reduce import topk_overlap
    from audit.topk import topk_tail_kl, topk_teacher_columns

    ids, logprobs = teacher.topk
    vocab = students[0].shape[1]
    columns = topk_teacher_columns(ids, logprobs, teacher.targets, vocab_size=vocab)
    # the teacher's top ids as logits that rank them first, for the overlap with the student's top 5
    ranked = torch.full_like(students[0][:, :1].expand(-1, vocab), float("-inf")).scatter(1, ids.long(),
                                                                                           logprobs.float())
    pairs = [{**{k: v for k, v in topk_tail_kl(ids, logprobs, s).items() if k in PAIR_KEYS},
              "topk_overlap": topk_overlap(ranked, s, min(5, ids.shape[1]))} for s in students]
    return Reduction([columns, *reduce_logits(students[0], students[1:], teacher.targets).models], pairs)


def reduction_block(reduction: Reduction) -> torch.Tensor:
    """(P, C) float32 CPU columns of one batch, in the order of :func:`_columns_of`."""
    return torch.stack([model[k].float() for model in reduction.models for k in MODEL_KEYS]
                       + [pair[k].float() for pair in reduction.pairs for k in PAIR_KEYS], 1).cpu()


def token_columns(stream: Iterable[list], names: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The columns of :func:`evaluate_tokens` (``"sequence"`` = each position's group) from a stream of
    per-batch lists of :class:`audit.adapters.Batch` (teacher first), and the vocabulary size.

    Raises:
        AuditError: no scored position in the stream.
    """
    blocks, groups, vocab_size = [], [], 0
    for batches in stream:
        blocks.append(reduction_block(reduce_batches(batches)))
        groups.append(batches[0].groups)
        vocab_size = batches[-1].logits.shape[1]
    values = torch.cat(blocks)
    if values.shape[0] == 0:
        raise AuditError("expected at least one scored position, got labels that are all -100; label the tokens "
                         "to score")
    columns = {c: values[:, i] for i, c in enumerate(column_names(names, len(names) - 1))}
    columns["sequence"] = torch.cat(groups)
    return columns, vocab_size


def evaluate_tokens(models: list, windows: TokenWindows, *, device: torch.device, dtype: torch.dtype,
                    batch_size: int, progress: bool = False, store: PredictionStore | None = None,
                    group: ProcessGroup | None = None) -> dict[str, torch.Tensor]:
    """Per-position columns of the teacher (``models[0]``) and its students on every scored token.

    ``models`` are :class:`CausalLM` or adapters (:mod:`audit.adapters`); a top-k teacher
    (:class:`audit.adapters.TopkFileAdapter`, read for these windows) stands in with its file, and its columns
    and KLs use the tail bucket of :mod:`audit.topk` (approximations stated there). Per batch every model's
    adapter yields its logits of the same positions and :func:`reduce_batches` turns them into columns.

    Returns:
        ``{"0.entropy": (P,), ..., "pair0.kl": (P,), ..., "sequence": (P,) int64}`` float32 CPU columns in the
        row-major order of ``windows.targets != -100``.
    """
    from audit.adapters import adapter_of

    adapters = [adapter_of(m) for m in models]
    scored = (windows.targets != IGNORE_INDEX).sum(1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), scored.cumsum(0)])
    columns = column_names([m.name for m in adapters], len(adapters) - 1)
    plan = _batches(windows, batch_size)

    def blocks(wanted: set[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        streams = [m.batches(windows, plan, wanted, device=device, dtype=dtype) for m in adapters]
        for batches in zip(*streams):  # each model's batch of the same windows, teacher first
            index = batches[0].index
            block = reduction_block(reduce_batches(list(batches)))
            del batches  # no frame keeps the logits while the caller stores the block
            a, b = plan[index]
            yield index, torch.arange(int(offsets[a]), int(offsets[b])), block

    all_values = evaluate_plan([int(offsets[b] - offsets[a]) for a, b in plan], blocks, total=int(offsets[-1]),
                               width=len(columns), description="evaluating tokens", store=store, group=group,
                               progress=progress)
    out = {c: all_values[:, i] for i, c in enumerate(columns)}
    out["sequence"] = windows.sequence_ids[:, None].expand_as(windows.targets)[windows.targets != IGNORE_INDEX]
    return out


def _histogram(x: torch.Tensor, lo: float, hi: float) -> dict:
    counts = torch.histc(x.float().clamp(lo, hi), bins=HISTOGRAM_BINS, min=lo, max=hi)
    return {"edges": torch.linspace(lo, hi, HISTOGRAM_BINS + 1).tolist(), "count": [int(c) for c in counts]}


def _floats(x: torch.Tensor) -> list[float | None]:
    return [None if v != v else v for v in x.double().tolist()]


def _stat(value: float, ci: tuple[float, float]) -> dict:
    if not all(map(math.isfinite, (value, *ci))):
        return undefined("the statistic or some cluster-bootstrap resamples are undefined (constant values)")
    return {"value": value, "ci": [ci[0], ci[1]]}


def _constant(x: torch.Tensor) -> bool:
    x = x.double()
    return bool(x.max() - x.min() <= 1e-6 * max(1.0, float(x.abs().max())))


def summarize_tokens(columns: dict[str, torch.Tensor], names: list[str], vocab_size: int, *,
                     settings: CompareSettings, topk: int | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Per-model numbers, per-pair statistics with verdicts, and student-vs-student entropy differences.

    ``topk``: the teacher is known through its top ``topk`` log-probabilities; its NLL then covers only the
    tokens whose target is among them (no interval), and the report says what is approximate.

    Every interval is a percentile interval of one cluster bootstrap by sequence (:mod:`audit.metrics.cluster`).
    """
    groups = columns["sequence"]
    log_v = math.log(vocab_size)
    requests, models = {}, {}
    for m, name in enumerate(names):
        h, p = columns[f"{m}.entropy"], columns[f"{m}.maxprob"]
        correct = columns[f"{m}.correct"]
        nll = -columns[f"{m}.target_logprob"].double()
        known = torch.isfinite(nll)  # all but a top-k teacher's targets outside its top k
        mean_nll = float(nll[known].mean()) if known.any() else float("nan")
        calibration = metrics.calibration_errors(p, correct.bool(), n_bins=settings.n_bins)
        bins = calibration["bins"]
        hit = correct.bool()
        models[name] = {
            "role": "teacher" if m == 0 else "student",
            "n": int(h.numel()), "n_sequences": int(groups.unique().numel()), "num_classes": vocab_size,
            "entropy_mean": float(h.double().mean()), "entropy_normalized": float(h.double().mean()) / log_v,
            "maxprob_mean": float(p.double().mean()),
            "accuracy": float(correct.double().mean()),
            "nll": mean_nll if math.isfinite(mean_nll) else None,
            "perplexity": math.exp(mean_nll) if math.isfinite(mean_nll) else None,
            "ece": float(calibration["ece"]), "mce": float(calibration["mce"]),
            "ece_adaptive": float(calibration["ece_adaptive"]), "n_bins": settings.n_bins,
            "entropy_correct": float(h[hit].double().mean()) if hit.any() else None,
            "entropy_incorrect": float(h[~hit].double().mean()) if (~hit).any() else None,
            "maxprob_correct": float(p[hit].double().mean()) if hit.any() else None,
            "maxprob_incorrect": float(p[~hit].double().mean()) if (~hit).any() else None,
            "entropy_histogram": _histogram(h, 0.0, log_v),
            "maxprob_histogram": _histogram(p, 1.0 / vocab_size, 1.0),
            "reliability": {key: _floats(getattr(bins, key)) for key in ("edges", "count", "confidence", "accuracy")},
        }
        if m == 0 and topk is not None:
            models[name]["approximation"] = (
                f"known through its top {topk} log-probabilities: entropy and both KLs are lower bounds (the tail "
                f"is one bucket, audit.topk); NLL covers the {float(known.double().mean()):.1%} of tokens whose "
                f"target is in its top {topk}")
        for key, values in (("accuracy", correct), ("nll", nll), ("entropy_mean", h), ("maxprob_mean", p)):
            if bool(torch.isfinite(values).all()):
                requests[f"{m}.{key}"] = ("mean", (values.double(),))
        requests[f"{m}.ece"] = ("ece", (p, correct))
    pair_requests: dict[int, dict[str, tuple]] = {}
    undefined_stats: dict[str, dict] = {}
    h_t, p_t, top_t = columns["0.entropy"], columns["0.maxprob"], columns["0.top1"]
    for j in range(1, len(names)):
        h_s, p_s = columns[f"{j}.entropy"], columns[f"{j}.maxprob"]
        pair = {
            "agreement": ("mean", ((top_t == columns[f"{j}.top1"]).double(),)),
            "topk_overlap": ("mean", (columns[f"pair{j - 1}.topk_overlap"].double(),)),
            "kl": ("mean", (columns[f"pair{j - 1}.kl"].double(),)),
            "kl_reverse": ("mean", (columns[f"pair{j - 1}.kl_reverse"].double(),)),
            "entropy_shift": ("mean", ((h_s - h_t).double(),)),
        }
        for kind, (x, y), label in (("entropy", (h_t, h_s), "entropy"), ("maxprob", (p_t, p_s), "max probability")):
            constant = [who for who, v in (("teacher", x), ("student", y)) if _constant(v)]
            for method in ("pearson", "spearman"):
                key = f"corr_{kind}_{method}"
                if constant:
                    undefined_stats[f"pair{j}.{key}"] = undefined(
                        f"the {' and the '.join(constant)}'s per-token {label} is constant, so a correlation with it "
                        "is undefined")
                else:
                    pair[key] = (method, (x.double(), y.double()))
        pair_requests[j] = pair
        requests.update({f"pair{j}.{k}": v for k, v in pair.items()})
    for a in range(1, len(names)):
        for b in range(a + 1, len(names)):
            requests[f"diff{a}.{b}"] = ("mean", ((columns[f"{b}.entropy"] - columns[f"{a}.entropy"]).double(),))
    cis = cluster_bootstrap_cis(requests, groups=groups, n_resamples=settings.n_bootstrap, seed=settings.seed,
                                n_bins=settings.n_bins)
    point = {name: _point(statistic, values, settings.n_bins) for name, (statistic, values) in requests.items()}
    for m, name in enumerate(names):
        models[name]["ci"] = {key: list(cis[f"{m}.{key}"]) for key in ("accuracy", "nll", "entropy_mean",
                                                                         "maxprob_mean", "ece") if f"{m}.{key}" in cis}
    pairs = []
    for j in range(1, len(names)):
        stats = {k: _stat(point[f"pair{j}.{k}"], cis[f"pair{j}.{k}"]) for k in pair_requests[j]}
        stats.update({k.split(".", 1)[1]: v for k, v in undefined_stats.items() if k.startswith(f"pair{j}.")})
        label, reason = verdict(stats, models[names[0]]["entropy_mean"], settings.rule)
        rows = torch.randperm(h_t.numel(), generator=torch.Generator().manual_seed(settings.seed))[:SCATTER_POINTS]
        pairs.append({"teacher": names[0], "student": names[j], **stats, "verdict": label, "verdict_reason": reason,
                      "scatter": {"teacher_maxprob": p_t[rows].tolist(),
                                  "student_maxprob": columns[f"{j}.maxprob"][rows].tolist()}})
    students = [{"a": names[a], "b": names[b], "entropy_difference": _stat(point[f"diff{a}.{b}"], cis[f"diff{a}.{b}"])}
                for a in range(1, len(names)) for b in range(a + 1, len(names))]
    return models, pairs, students


def _point(statistic: str, values: tuple[torch.Tensor, ...], n_bins: int) -> float:
    if statistic == "mean":
        return float(values[0].mean())
    if statistic == "pearson":
        return float(metrics.pearson(*values))
    if statistic == "spearman":
        return float(metrics.spearman(*values))
    return float(metrics.ece(values[0], values[1].bool(), n_bins=n_bins))


def _store(models: list, documents: Documents, windows: TokenWindows, columns: int, settings: CompareSettings,
           dtype: torch.dtype, device: torch.device, batch_size: int):
    """The cache entry of these columns (every model, the documents and the windowing), or None when unusable."""
    from audit.cache import CacheUnavailable, PredictionStore, model_fingerprint

    digest = hashlib.sha256()
    for values in (documents.texts, documents.ids, documents.prompts or []):
        digest.update(json.dumps(values).encode())
    from audit.cache import file_sha256

    key = {"version": 1, "kind": "lm-columns",
           "models": [[m.source, model_fingerprint(m) if isinstance(m, CausalLM) else file_sha256(Path(m.source))]
                      for m in models],
           "documents": digest.hexdigest(), "windows": windows.info, "dtype": str(dtype), "device": device.type,
           "batch_size": batch_size}
    try:
        return PredictionStore.open(key, name="+".join(m.name for m in models), num_classes=columns)
    except CacheUnavailable as err:
        warn(f"running without the prediction cache: {err}")
        return None


def compare_lm(teacher: str | CausalLM, students: list[str | CausalLM], data: str | Documents, *,
               names: list[str] | None = None, settings: CompareSettings | None = None) -> dict:
    """Audit a causal-LM teacher and its students token by token on ``data`` (text documents).

    Args:
        teacher, students: specs for :func:`load_causal_lm` (the teacher also a top-k logits file), or loaded
            :class:`CausalLM`.
        data: a spec for :func:`audit.data.text.read_documents`, or loaded :class:`Documents`.
        names: report names, teacher first (they replace loaded models' own names).
        settings: ``max_length`` (window length), ``stride``, ``split``, ``text_column``, ``prompt_column``,
            ``completion_column``, ``limit`` (documents), device, dtype, batch size, bins, bootstrap, seed, cache.

    Raises:
        AuditError: any bad input (different tokenizers, a window longer than a model's context, text too short),
            before the models run.
    """
    from audit.adapters import set_up

    settings = settings or CompareSettings()
    return audit_tokens(set_up(teacher, students, names, settings, kind="lm"), data, settings)


def audit_tokens(setup: Setup, data: str | Documents, settings: CompareSettings) -> dict:
    """:func:`compare_lm` on models already set up (:func:`audit.adapters.set_up`, kind "lm")."""
    from audit.adapters import TopkFileAdapter

    models = list(setup.models)
    lms = [m.model for m in models if not m.saved]
    check_same_tokenizer(lms)
    for m in lms:
        if m.context is not None and settings.max_length > m.context:
            raise AuditError(f"expected --max-length at most {m.name}'s context of {m.context} tokens, got "
                             f"{settings.max_length}; pass --max-length {m.context} or less")
    documents = data if isinstance(data, Documents) else read_documents(
        data, split=settings.split, text_column=settings.text_column, prompt_column=settings.prompt_column,
        completion_column=settings.completion_column, limit=settings.limit)
    windows = tokenize_windows(documents, lms[0].tokenizer, max_length=settings.max_length, stride=settings.stride)
    vocab_size = int(lms[0].model.config.vocab_size)
    topk = None
    if isinstance(models[0], TopkFileAdapter):
        models[0] = models[0].read(windows, vocab_size)
        topk = models[0].k
    device, dtype = setup.device, setup.dtype
    batch_size = AUTO_BATCH.get(device.type, 4) if settings.batch_size == "auto" else int(settings.batch_size)
    n_columns = len(column_names([m.name for m in models], len(models) - 1))
    store = _store([m.model for m in models], documents, windows, n_columns, settings, dtype, device,
                   batch_size) if settings.cache else None
    columns = evaluate_tokens(models, windows, device=device, dtype=dtype, batch_size=batch_size,
                              progress=settings.progress, store=store, group=setup.group)
    data_info = {"name": documents.name, **documents.info, "unit": "token", "n": int(columns["sequence"].numel()),
                 "n_sequences": len(documents), "windows": windows.info, "label_names": None}
    return token_report(columns, models, vocab_size, settings=settings, data_info=data_info, topk=topk,
                        run={"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                             "batch_size": batch_size})


def token_report(columns: dict[str, torch.Tensor], models: list, vocab_size: int, *, settings: CompareSettings,
                 data_info: dict, run: dict, topk: int | None = None) -> dict:
    """The compare/2 report dict of per-position ``columns`` (:func:`evaluate_tokens`) of ``models`` (anything
    with ``name`` and ``source``, teacher first); ``run`` records how they ran (device, dtype, batch size)."""
    from audit.compare import versions

    model_stats, pairs, differences = summarize_tokens(columns, [m.name for m in models], vocab_size, settings=settings,
                                                       topk=topk)
    for m in models:
        model_stats[m.name]["source"] = m.source
    return {
        "schema": SCHEMA,
        "schema_changes": SCHEMA_CHANGES,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": {**{k: v for k, v in asdict(settings).items() if k not in ("progress", "cache")}, **run,
                     "ci_method": "percentile cluster bootstrap by sequence (document)"},
        "data": data_info,
        "models": model_stats,
        "pairs": pairs,
        "students": differences,
    }
