"""Model kinds as adapters, and the set-up every audit shares.

An adapter wraps one model of one kind and turns batches of that kind's inputs into a :class:`Batch`: the
logits of the positions to score, on the device, with their targets, the mask of those positions and the
group (example or sequence) of each. The audits consume batches and never ask which kind made them:

- :class:`ClassifierAdapter` (:class:`audit.load.models.TextClassifier`): one position per example; the model's
  own tokenizer batches the text (:func:`audit.run.adapters.batch_plan`);
- :class:`CausalLMAdapter` (:class:`audit.load.causal_lm.CausalLM`): every scored next-token position of a batch of
  token windows;
- :class:`LogitsFileAdapter` (:class:`audit.load.models.Predictions`) and :class:`TopkFileAdapter` (a top-k
  logits file, :mod:`audit.reduce.topk`): saved logits, nothing runs (``saved``);
- :class:`CallableAdapter`: any callable (a torch module, a function) over the batches of a DataLoader.

What each audit keeps differs on purpose. The **classifier audit keeps every model's full (N, K) logits** on
the host: K is small, and its calibration metrics (class-wise ECE, Brier, the debiased and smooth ECEs,
temperature scaling, bootstrap intervals that refit estimators) need whole distributions, so classifier
logits are not pushed through :func:`audit.reduce.reduction.reduce_logits`. The **token audit keeps only the
per-position scalars** of that reduction, so its memory grows with positions, never with the vocabulary.

:func:`set_up` is the set-up both audits share: validate the settings, resolve the device, process group
and dtype, load every spec into an adapter of the audit's kind, and make the names distinct. The audit is
picked by the teacher adapter's ``kind``, never by re-parsing specs.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from audit.errors import AuditError
from audit.load.causal_lm import CausalLM, TopkTeacher, is_causal_lm_spec, is_topk_file, load_causal_lm
from audit.load.data import TextData
from audit.load.data.text import IGNORE_INDEX, TokenWindows
from audit.load.models import Predictions, TextClassifier, load_model
from audit.reduce.reduction import HeadLogits, KeptRows
from audit.reduce.topk import read_topk_logits
from audit.run.device import resolve_run
from audit.run.distributed import ProcessGroup
from audit.settings import CompareSettings

WINDOW = 8192  # rows tokenized and length-sorted together



def batch_plan(n: int, size: int, window: int = WINDOW) -> list[tuple[int, int]]:
    """The batches of :func:`predict_text` as ``(window_start, batch_size)``, in run order.

    Rows are taken a window of ``window`` consecutive rows at a time (only one window is tokenized at
    once, which bounds host memory on large data); a window is sorted by token length, longest first, and
    cut into batches of ``size``. The plan depends only on ``n``, ``size`` and ``window``, so a resumed run
    and every process of a launched run agree on it: batch ``b`` runs on rank ``b % world_size``.

    >>> batch_plan(5, 2, window=4)
    [(0, 2), (0, 2), (4, 1)]
    """
    return [(lo, min(size, min(window, n - lo) - start))
            for lo in range(0, n, window) for start in range(0, min(window, n - lo), size)]


KIND_NAMES = {"classifier": "sequence classifier", "lm": "causal LM", "callable": "callable"}


@dataclass(frozen=True)
class Batch:
    """One batch of one model's outputs.

    Attributes:
        index: the batch's number in its plan (the key of the prediction cache and of the rank that runs it).
        logits: (P, K) floating logits of the P scored positions, on the device, in the row-major order of
            ``mask``; a causal LM's may be those positions' :class:`audit.reduce.reduction.HeadLogits` or
            :class:`audit.reduce.reduction.KeptRows` (:meth:`CausalLMAdapter.batches` with ``lazy``); None for a
            top-k teacher, whose ``topk`` stands in.
        targets: (P,) int64 target ids on the device (the label, or the next token), ``IGNORE_INDEX`` where the
            position has none.
        mask: (B, T) bool on the CPU: which of the batch's B rows x T positions are scored (T = 1 for one
            position per example).
        groups: (P,) int64 on the CPU: the example (classifier) or sequence (LM) each scored position belongs to.
        topk: a top-k teacher's (P, k) token ids and (P, k) log-probabilities on the device, else None.
    """

    index: int
    logits: torch.Tensor | HeadLogits | KeptRows | None
    targets: torch.Tensor
    mask: torch.Tensor
    groups: torch.Tensor
    topk: tuple[torch.Tensor, torch.Tensor] | None = None


class Adapter:
    """One model of one kind: its ``name`` and ``source`` in reports, its ``kind`` ("classifier", "lm" or
    "callable"), and whether its logits are ``saved`` (read from a file: nothing runs)."""

    kind: ClassVar[str]
    saved: ClassVar[bool] = False
    name: str
    source: str

    def renamed(self, name: str) -> Adapter:
        """A copy named ``name`` (nothing the caller passed is changed)."""
        return dataclasses.replace(self, name=name)


class _Wrapper(Adapter):
    """An adapter around a loaded model object (``model``), which holds the name and source."""

    model: Any

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def source(self) -> str:
        return self.model.source

    def renamed(self, name: str) -> Adapter:
        return dataclasses.replace(self, model=dataclasses.replace(self.model, name=name))


@dataclass(frozen=True)
class ClassifierAdapter(_Wrapper):
    """A Hugging Face sequence classifier: one scored position per example, targets ``IGNORE_INDEX`` (the
    classifier audit maps the data's labels itself, once every model's class order is known)."""

    model: TextClassifier
    kind: ClassVar[str] = "classifier"

    def batches(self, data: TextData, plan: list[tuple[int, int]], wanted: set[int], *, device: torch.device,
                dtype: torch.dtype, max_length: int, batch_size: int, halving: bool, window: int) -> Iterator[Batch]:
        """The ``wanted`` batches of ``plan`` (:func:`audit.run.adapters.batch_plan`), in plan order, tokenizing
        ``window`` rows at a time. Each batch runs ``batch_size`` rows at a time; with ``halving``, a CUDA
        out-of-memory error halves that and retries (the smaller size then holds for later batches).

        Raises:
            AuditError: a batch that does not fit in GPU memory at batch size 1, or at all without ``halving``.
        """
        model = self.model.model.to(device=device, dtype=dtype)
        micro = batch_size
        for index, rows, input_ids in self._planned(data, plan, wanted, max_length, window):
            logits, micro = self._forward(model, input_ids, device, micro, halving)
            groups = torch.tensor(rows, dtype=torch.int64)
            yield Batch(index, logits, torch.full_like(groups, IGNORE_INDEX).to(device),
                        torch.ones(len(rows), 1, dtype=torch.bool), groups)

    def _planned(self, data: TextData, plan: list[tuple[int, int]], wanted: set[int], max_length: int,
                 window: int) -> Iterator[tuple[int, list[int], list[list[int]]]]:
        """``(batch index, data rows, input ids)`` of the ``wanted`` batches, tokenizing window by window."""
        for lo, span in itertools.groupby(range(len(plan)), key=lambda b: plan[b][0]):
            span = list(span)
            if not wanted.intersection(span):
                continue
            hi = min(lo + window, len(data))
            encodings = self.model.tokenizer(data.texts[lo:hi], data.text_pairs[lo:hi] if data.text_pairs else None,
                                             truncation=True, max_length=max_length, padding=False)["input_ids"]
            order = sorted(range(hi - lo), key=lambda i: len(encodings[i]), reverse=True)
            start = 0
            for b in span:
                rows = order[start:start + plan[b][1]]
                start += plan[b][1]
                if b in wanted:
                    yield b, [lo + i for i in rows], [encodings[i] for i in rows]

    def _forward(self, model: torch.nn.Module, input_ids: list[list[int]], device: torch.device, micro: int,
                 halving: bool) -> tuple[torch.Tensor, int]:
        """(B, K) float32 logits of one batch on the device, run ``micro`` rows at a time, and the ``micro``
        that fitted."""
        while True:
            try:
                parts = []
                for start in range(0, len(input_ids), micro):
                    batch = self.model.tokenizer.pad({"input_ids": input_ids[start:start + micro]}, return_tensors="pt")
                    parts.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float())
                return torch.cat(parts), micro
            except torch.cuda.OutOfMemoryError:
                if not halving or micro == 1:
                    raise AuditError(f"expected the batch to fit in GPU memory, got out of memory at batch size "
                                     f"{micro}; pass a smaller --batch-size or --batch-size auto") from None
                micro //= 2
                torch.cuda.empty_cache()


@dataclass(frozen=True)
class LogitsFileAdapter(_Wrapper):
    """Saved per-example logits (:func:`audit.load.models.load_predictions`). Nothing runs, so there is nothing to
    batch: the file already is the (N, K) logits the classifier audit keeps (matched to the data by id or
    position in :func:`audit.load.labels.match_to_data`)."""

    model: Predictions
    kind: ClassVar[str] = "classifier"
    saved: ClassVar[bool] = True


@dataclass(frozen=True)
class CausalLMAdapter(_Wrapper):
    """A causal LM over token windows: the scored positions are the windows' targets other than -100.

    The logits at a window's position t depend on its tokens up to t only (causal attention), so a batch runs up
    to its last scored position (a window's last position never has a target: its next token lies past the
    window), and logits are formed for the scored positions alone. Where the model's logits are its output
    layer applied to its body's last hidden states (:meth:`head`, checked on the first window), the body runs
    and the scored positions' hidden states are kept: their logits are :class:`audit.reduce.reduction.HeadLogits`,
    multiplied out by the reduction a tile of positions and vocabulary at a time, so that no (P, V) logits are
    allocated, copied or row-selected. Elsewhere the whole model runs with ``logits_to_keep`` over the scored span,
    and the reduction reads the scored rows of those logits in place (:class:`audit.reduce.reduction.KeptRows`).
    """

    model: CausalLM
    kind: ClassVar[str] = "lm"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: int = 0, *,
                hidden: bool = False) -> torch.Tensor:
        """(B, L, V) logits of (B, L) token windows, on the model's device (every model call of the audit goes
        through here); (B, last, V) for the last ``last`` positions only, where the model takes transformers'
        ``logits_to_keep`` (the output layer then runs on those rows alone). With ``hidden``, the (B, L, H) last
        hidden states of the model's body instead (its ``base_model``, without a key-value cache)."""
        model = self.model.model
        if hidden:
            body = model.base_model
            cache = {"use_cache": False} if "use_cache" in inspect.signature(body.forward).parameters else {}
            out = body(input_ids=input_ids, attention_mask=attention_mask, **cache)
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if last and "logits_to_keep" in inspect.signature(model.forward).parameters:
            return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=last).logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, -last:] if last else logits

    def head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The output layer's ``(weight, bias)`` where the model's logits are ``linear(hidden, weight, bias)`` of
        its body's last hidden states, else None. Checked on the last position of the first of the (B, L) windows:
        the model's own logits there against that product, to 1e-4 of the largest logit (1e-2 in 16-bit), so that
        a head with a soft cap, a scale or any other step of its own runs as the model runs it."""
        model = self.model.model
        layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(layer, torch.nn.Linear) or getattr(model, "base_model", model) is model:
            return None
        own = self.forward(input_ids[:1], attention_mask[:1], 1)[0, -1].float()
        hidden = self.forward(input_ids[:1], attention_mask[:1], hidden=True)[0, -1:]
        split = torch.nn.functional.linear(hidden, layer.weight, layer.bias)[0].float()
        tolerance = 1e-2 if layer.weight.element_size() < 4 else 1e-4
        if own.shape != split.shape or not bool((own - split).abs().max() <= tolerance * own.abs().max().clamp(min=1)):
            return None
        return layer.weight, layer.bias

    def batches(self, windows: TokenWindows, plan: list[tuple[int, int]], wanted: set[int], *,
                device: torch.device, dtype: torch.dtype, lazy: bool = False) -> Iterator[Batch]:
        """The ``wanted`` batches of ``plan`` (window ranges ``(start, end)``), in index order. With ``lazy``, a
        batch's logits are :class:`audit.reduce.reduction.HeadLogits` where the output layer splits from the body,
        else :class:`audit.reduce.reduction.KeptRows` where the batch's span holds unscored positions (for
        :func:`audit.reduce.reduction.reduce_logits`); without, always a (P, V) tensor."""
        self.model.model.to(device=device, dtype=dtype)
        split = None  # the output layer, checked on the first batch; False where it does not split off
        for index in sorted(wanted):
            a, b = plan[index]
            keep = windows.targets[a:b] != IGNORE_INDEX  # (B, L)
            columns = keep.any(0).nonzero().squeeze(1)
            # the model reads up to the last scored position; logits from the first scored one on (a window after
            # a document's first scores only its last L - overlap positions)
            first, end = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 1)
            input_ids = windows.input_ids[a:b, :end].to(device)
            attention_mask = windows.attention_mask[a:b, :end].to(device)
            rows = keep[:, first:end].reshape(-1).nonzero().squeeze(1).to(device)
            if split is None:
                split = self.head(input_ids, attention_mask) or False
            if split:
                hidden = self.forward(input_ids, attention_mask, hidden=True)[:, first:]
                logits = HeadLogits(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows), *split)
                logits = logits if lazy else logits.materialize()
            else:
                logits = self.forward(input_ids, attention_mask, end - first)
                logits = logits.reshape(-1, logits.shape[-1])  # a view: the (B, end - first, V) logits
                if len(rows) < len(logits):
                    logits = KeptRows(logits, rows) if lazy else logits.index_select(0, rows)
            yield Batch(index, logits, windows.targets[a:b][keep].to(device), keep,
                        windows.sequence_ids[a:b, None].expand_as(keep)[keep])


@dataclass(frozen=True)
class TopkFileAdapter(_Wrapper):
    """A teacher seen only through a top-k logits file (:mod:`audit.reduce.topk`); ``read`` binds it to the token
    windows (the file's positions must match them), and its batches carry ``topk`` instead of logits."""

    model: TopkTeacher
    kind: ClassVar[str] = "lm"
    saved: ClassVar[bool] = True
    logits: Any = None  # audit.reduce.topk.TopkLogits of every scored position, once read

    def read(self, windows: TokenWindows, vocab_size: int) -> TopkFileAdapter:
        """A copy holding the file's rows for every scored position of ``windows``, in order.

        Raises:
            AuditError: ids outside the vocabulary, NaN, rows renormalised over the top k (no tail), window
                metadata (``max_length``, ``stride``) other than the windows', or positions that do not match them.
        """
        sequence_ids, positions = windows.scored()
        return dataclasses.replace(self, logits=read_topk_logits(self.source, vocab_size=vocab_size,
                                                                 sequence_ids=sequence_ids, positions=positions,
                                                                 windows=windows.info))

    @property
    def k(self) -> int:
        return self.logits.ids.shape[1]

    def batches(self, windows: TokenWindows, plan: list[tuple[int, int]], wanted: set[int], *,
                device: torch.device, dtype: torch.dtype) -> Iterator[Batch]:
        """The ``wanted`` batches of ``plan``, in index order (``dtype`` is the students'; the file keeps its own)."""
        scored = (windows.targets != IGNORE_INDEX).sum(1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), scored.cumsum(0)])
        for index in sorted(wanted):
            a, b = plan[index]
            keep = windows.targets[a:b] != IGNORE_INDEX
            rows = slice(int(offsets[a]), int(offsets[b]))
            yield Batch(index, None, windows.targets[a:b][keep].to(device), keep,
                        windows.sequence_ids[a:b, None].expand_as(keep)[keep],
                        topk=(self.logits.ids[rows].to(device), self.logits.logprobs[rows].to(device)))


@dataclass(frozen=True)
class CallableAdapter(Adapter):
    """Any callable returning logits for a batch of a DataLoader: a torch module, a jitted or plain function.

    A DataLoader batch is ``(inputs, labels)``, or a dict with a ``labels`` key whose other entries are passed
    as keyword arguments. The callable returns logits, or an object with a ``.logits`` attribute:

    - (B, K) logits with (B,) labels: one position per example (the classifier audit);
    - (B, T, V) logits with (B, T) labels: T positions per sequence, scored where the label is not -100 (the
      token audit). ``logits[b, t]`` must already predict ``labels[b, t]``: shift causal-LM labels first
      (``labels[:, 1:]`` against ``logits[:, :-1]``), as Hugging Face's loss does internally.
    """

    fn: Callable[..., Any]
    name: str
    source: str = "python"
    kind: ClassVar[str] = "callable"

    def to(self, device: torch.device) -> None:
        """Move a torch module to ``device`` in eval mode (a plain function is left as it is)."""
        if isinstance(self.fn, torch.nn.Module):
            self.fn.to(device).eval()

    def batch(self, index: int, inputs: Any, labels: torch.Tensor, first_group: int, device: torch.device) -> Batch:
        """The callable's :class:`Batch` on ``inputs`` (from :func:`split_batch`); rows are numbered from
        ``first_group`` on.

        Raises:
            AuditError: outputs that are not (B, K) or (B, T, V) floating logits matching the labels' shape.
        """
        if isinstance(inputs, dict):
            out = self.fn(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        else:
            out = self.fn(inputs.to(device) if torch.is_tensor(inputs) else inputs)
        logits = getattr(out, "logits", out)
        if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.ndim not in (2, 3) \
                or tuple(logits.shape[:-1]) != tuple(labels.shape):
            got = f"{tuple(logits.shape)} {logits.dtype}" if torch.is_tensor(logits) else type(logits).__name__
            raise AuditError(f"expected {self.name} to return floating logits of shape {tuple(labels.shape)} + "
                             f"(classes,) for labels of shape {tuple(labels.shape)}, got {got}; return (B, K) logits "
                             "with (B,) labels, or (B, T, V) logits with (B, T) labels")
        labels = labels.long()
        mask = (labels != IGNORE_INDEX).cpu() if labels.ndim == 2 else torch.ones(labels.shape[0], 1, dtype=torch.bool)
        rows = torch.arange(first_group, first_group + labels.shape[0])
        if labels.ndim == 1:
            return Batch(index, logits, labels.to(logits.device), mask, rows)
        return Batch(index, logits[mask.to(logits.device)], labels[mask.to(labels.device)].to(logits.device), mask,
                     rows[:, None].expand_as(mask)[mask])


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of a DataLoader batch: a pair, or a dict with a ``labels`` key (the rest are inputs).

    Raises:
        AuditError: a batch that is neither.
    """
    if isinstance(batch, dict):
        if "labels" not in batch:
            raise AuditError(f"expected a 'labels' key in each dict batch, got keys {sorted(batch)}; add the labels")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, torch.as_tensor(batch["labels"])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], torch.as_tensor(batch[1])
    raise AuditError(f"expected each batch as (inputs, labels) or a dict with 'labels', got {type(batch).__name__}; "
                     "yield labels with the inputs")


def callable_batches(models: list[CallableAdapter], batches: Iterable, device: torch.device) -> Iterator[list[Batch]]:
    """Every callable's :class:`Batch` on each DataLoader batch, teacher first: the loader is iterated once,
    so a shuffling loader gives every model the same inputs.

    Raises:
        AuditError: a malformed batch or output, or an empty loader.
    """
    first = 0
    for index, batch in enumerate(batches):
        inputs, labels = split_batch(batch)
        yield [m.batch(index, inputs, labels, first, device) for m in models]
        first += labels.shape[0]
    if first == 0:
        raise AuditError("expected at least one batch, got an empty DataLoader; check the data")


def adapter_of(model: Any, name: str | None = None, *, default_name: str = "model") -> Adapter:
    """An already loaded model (or adapter, or callable) as an adapter, renamed when ``name`` is given."""
    if isinstance(model, Adapter):
        adapter = model
    elif isinstance(model, TextClassifier):
        adapter = ClassifierAdapter(model)
    elif isinstance(model, Predictions):
        adapter = LogitsFileAdapter(model)
    elif isinstance(model, CausalLM):
        adapter = CausalLMAdapter(model)
    elif isinstance(model, TopkTeacher):
        adapter = TopkFileAdapter(model)
    elif callable(model):
        adapter = CallableAdapter(model, name or default_name)
    else:
        raise AuditError(f"expected a model spec (a path or hub id), a loaded model or a callable, got "
                         f"{type(model).__name__}; pass a checkpoint path")
    return adapter if name is None or name == adapter.name else adapter.renamed(name)


def load_adapter(spec: Any, name: str | None, kind: str, settings: CompareSettings, *, teacher: bool = False
                 ) -> Adapter:
    """``spec`` loaded as an adapter of ``kind``: a path or hub id by that kind's loader, anything else by
    :func:`adapter_of`.

    Raises:
        AuditError: what the loader raises, or a loaded model of another kind.
    """
    if isinstance(spec, str) and kind == "callable":
        raise AuditError(f"expected a callable (a torch module or a function returning logits), got {spec!r}; pass "
                         "checkpoints to audit.compare")
    if isinstance(spec, str) and kind == "lm":
        if teacher and is_topk_file(spec):
            return TopkFileAdapter(TopkTeacher(name or Path(spec).stem, spec))
        return CausalLMAdapter(load_causal_lm(spec, name=name, trust_remote_code=settings.trust_remote_code))
    if isinstance(spec, str):
        return adapter_of(load_model(spec, name=name, allow_pickle=settings.allow_pickle,
                                     trust_remote_code=settings.trust_remote_code, tokenizer=settings.tokenizer,
                                     allow_missing_weights=settings.allow_missing_weights))
    adapter = adapter_of(spec, name, default_name="teacher" if teacher else "student")
    if adapter.kind != kind:
        raise AuditError(f"expected a {KIND_NAMES[kind]}, got {adapter.name}, a {KIND_NAMES[adapter.kind]}; teacher "
                         "and students must be models of one kind")
    return adapter


def distinct_names(models: list[Adapter]) -> list[Adapter]:
    """Copies with ``#2``, ``#3`` appended to repeated names (the same checkpoint compared with itself)."""
    out, seen = [], {}
    for model in models:
        seen[model.name] = seen.get(model.name, 0) + 1
        out.append(model if seen[model.name] == 1 else model.renamed(f"{model.name}#{seen[model.name]}"))
    return out


def audit_kind(teacher: Any, settings: CompareSettings) -> str:
    """The audit a teacher calls for: its adapter's kind when loaded, else its spec's (a causal LM, a top-k
    file) under ``settings.kind``.

    Raises:
        AuditError: a causal LM with ``--kind classifier``.
    """
    if isinstance(teacher, str):
        label, lm_spec = teacher, is_causal_lm_spec(teacher)
    else:
        adapter = adapter_of(teacher)
        if adapter.kind not in ("classifier", "lm") or settings.kind in ("auto", adapter.kind):
            return adapter.kind
        label, lm_spec = adapter.name, adapter.kind == "lm"
    if settings.kind == "classifier" and lm_spec:
        raise AuditError(f"expected a sequence classifier with --kind classifier, got the causal LM {label}; drop "
                         "--kind or pass --kind lm")
    return "lm" if settings.kind == "lm" or (settings.kind == "auto" and lm_spec) else "classifier"


@dataclass(frozen=True)
class Setup:
    """What an audit runs with: the device, process group and dtype, and every model as an adapter (teacher
    first, names distinct)."""

    device: torch.device
    group: ProcessGroup
    dtype: torch.dtype
    models: list[Adapter]

    @property
    def kind(self) -> str:
        return self.models[0].kind


def set_up(teacher: Any, students: list, names: list[str] | None, settings: CompareSettings, *,
           kind: str | None = None) -> Setup:
    """The set-up of every audit: validated settings, device, process group and dtype, and every spec loaded
    as an adapter of the audit's kind (``kind``, or :func:`audit_kind` of the teacher).

    Raises:
        AuditError: bad settings, no students, more names than models, or anything a loader raises.
    """
    settings.validate()
    kind = kind or audit_kind(teacher, settings)
    if not students:
        raise AuditError("expected at least one --student, got none")
    device, group, dtype = resolve_run(settings)
    specs = [teacher, *students]
    if names is not None and len(names) > len(specs):
        raise AuditError(f"expected at most {len(specs)} --name values (teacher, then students), got {len(names)}")
    names = list(names or []) + [None] * (len(specs) - len(names or []))
    models = [load_adapter(spec, name, kind, settings, teacher=i == 0) for i, (spec, name) in enumerate(zip(specs, names))]
    return Setup(device, group, dtype, distinct_names(models))
