"""Model specs -> something that yields logits.

A spec is one of:

- a Hugging Face checkpoint folder or hub id: a sequence classifier with its tokenizer
  (:class:`TextClassifier`); a cached hub id works offline;
- a saved-predictions file from any framework (:class:`Predictions`): per-example logits in ``.npy``, a
  ``.safetensors``/``.pt`` tensor (the format ``--save-logits`` writes: tensor ``logits``, metadata ``ids``
  and ``label_names`` as JSON), or ``.parquet``/``.jsonl`` with a ``logits`` column and optional ``id``.

Label names come from ``config.id2label`` (generic ``LABEL_i`` names count as unnamed).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audit.errors import AuditError
from audit.load.hub import hub_unreachable

PREDICTION_SUFFIXES = (".npy", ".safetensors", ".pt", ".pth", ".parquet", ".jsonl", ".json")
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_BARE_HUB_ID = re.compile(r"^[A-Za-z0-9][\w-]*$")


@dataclass
class Predictions:
    """Per-example logits of one model.

    Attributes:
        name: the model's name in reports.
        logits: (N, K) float32 CPU tensor.
        ids: example ids aligned with the rows, or None (rows then follow the data's order).
        label_names: class index -> name, or None.
        source: where the logits came from (a path, hub id or "python").
    """

    name: str
    logits: torch.Tensor
    ids: list[str] | None = None
    label_names: list[str] | None = None
    source: str = "python"

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]


@dataclass
class TextClassifier:
    """A Hugging Face sequence classifier and its tokenizer."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    label_names: list[str] | None
    source: str

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels


def check_label_names(names: list[str] | None, num_classes: int, source: str) -> None:
    """Refuse label names that cannot name the logits' columns.

    Raises:
        AuditError: a count other than ``num_classes``, or a repeated name.
    """
    if names is None:
        return
    if len(names) != num_classes:
        raise AuditError(f"expected {num_classes} label names for {num_classes} logit columns in {source}, got "
                         f"{len(names)} ({names}); save one name per column")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AuditError(f"expected distinct label names in {source}, got {repeated} more than once; name each "
                         "class once")


def label_names_from_config(config) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(_GENERIC_LABEL.match(n) for n in names):
        return None
    return names


def name_from_spec(spec: str) -> str:
    path = Path(spec)
    return path.stem if path.suffix in PREDICTION_SUFFIXES else path.name or spec


def load_model(
    spec: str, *, name: str | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32, tokenizer: str | None = None, allow_missing_weights: bool = False,
) -> TextClassifier | Predictions:
    """Load a model spec (see the module docstring).

    Args:
        tokenizer: a tokenizer folder or hub id to use instead of the checkpoint's own (only when named).
        allow_missing_weights: load even when weights are missing (transformers would initialise them at
            random, e.g. a classification head on a bare encoder).

    Raises:
        AuditError: missing path; folder without config, weights or tokenizer files; corrupt weights; pickle
            weights without ``allow_pickle``; missing weights (a random head); a tokenizer without a
            vocabulary; unreadable or non-finite predictions.
    """
    name = name or name_from_spec(spec)
    path = Path(spec)
    base, _, option = spec.partition("@")
    if option and not path.exists() and Path(base).exists():
        raise AuditError(f"expected a sequence classifier's folder, a hub id or saved logits, got {spec}: @{option} "
                         f"cuts the layers of causal LMs only; drop @{option} to audit {base}, or train a cut student "
                         f"(python -m audit train --model {spec} ...) and audit its folder")
    if path.is_file():
        if path.suffix not in PREDICTION_SUFFIXES:
            raise AuditError(
                f"expected a model folder or a predictions file ({', '.join(PREDICTION_SUFFIXES)}), got {spec}; "
                "pass a Hugging Face checkpoint folder or saved logits"
            )
        return load_predictions(path, name=name, allow_pickle=allow_pickle)
    if path.is_dir():
        _check_checkpoint_folder(path, allow_pickle)
        return _load_hf(str(path), name, trust_remote_code, dtype, local_only=True, tokenizer=tokenizer,
                        allow_missing_weights=allow_missing_weights)
    if looks_like_hub_id(spec):
        return _load_hf(spec, name, trust_remote_code, dtype, local_only=_offline(), tokenizer=tokenizer,
                        allow_missing_weights=allow_missing_weights)
    raise AuditError(f"expected an existing path or a hub id, got {spec!r}: no such file or folder; check the path")


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name``, or a bare legacy name the Hub still serves (``gpt2``,
    ``distilbert-base-uncased-finetuned-sst-2-english``: letters, digits, ``-`` and ``_``, no dot, so never a file
    name); not a relative or absolute path.

    >>> [looks_like_hub_id(s) for s in ("gpt2", "owner/model-1.5", "./model", "logits.json", "a/b/c")]
    [True, True, False, False, False]
    """
    return bool(_HUB_ID.match(spec) or _BARE_HUB_ID.match(spec)) and not spec.startswith((".", "/"))


def _offline() -> bool:
    """Load a hub id from the local cache only: offline mode asked for, or the Hub out of reach."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or hub_unreachable()


def _check_checkpoint_folder(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise AuditError(f"expected a Hugging Face checkpoint folder with config.json, got {path} without one; "
                         "pass the folder that save_pretrained wrote")
    safetensors_files = sorted(path.glob("*.safetensors"))
    pickle_files = sorted(path.glob("pytorch_model*.bin"))
    if not safetensors_files and not pickle_files:
        raise AuditError(f"expected weights (model.safetensors) in {path}, found none; "
                         "save the model with save_pretrained")
    if not safetensors_files and not allow_pickle:
        raise AuditError(f"expected safetensors weights in {path}, found only pickle weights ({pickle_files[0].name}), "
                         "which can run code when loaded; pass --allow-pickle if you trust the file")
    for file in safetensors_files:
        _check_safetensors(file)


def _check_safetensors(file: Path) -> None:
    """Catch truncated or corrupt files before transformers does, with a clear message."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"expected {8 + header_len + end} bytes, found {size}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise AuditError(f"expected a valid safetensors file, got a truncated or corrupt {file} ({err}); "
                         "re-save or re-download the weights") from None


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _load_hf(spec: str, name: str, trust_remote_code: bool, dtype: torch.dtype, local_only: bool,
             tokenizer: str | None = None, allow_missing_weights: bool = False) -> TextClassifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # missing weights are reported by us, as one line
    if tokenizer is None and Path(spec).is_dir() and not _has_tokenizer(Path(spec)):
        raise AuditError(f"expected tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {spec}, found none; save "
                         "the tokenizer with the model (tokenizer.save_pretrained), or name one with --tokenizer")
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=local_only)
        tok = AutoTokenizer.from_pretrained(tokenizer or spec, trust_remote_code=trust_remote_code,
                                            local_files_only=local_only or Path(tokenizer or "").is_dir())
        model, info = AutoModelForSequenceClassification.from_pretrained(
            spec, config=config, trust_remote_code=trust_remote_code, local_files_only=local_only, dtype=dtype,
            output_loading_info=True,
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "trust_remote_code" in str(err):
            raise AuditError(f"expected a model transformers can load without remote code, got {spec}; "
                             "pass --trust-remote-code if you trust its code") from None
        here = "" if Path(spec).exists() else ", and there is no file or folder of that name here"
        raise AuditError(f"could not load the Hugging Face model {spec!r} ({first_line}{here}); pass a local "
                         "checkpoint folder, or a hub id that is in the local cache") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing and not allow_missing_weights:
        architectures = ", ".join(getattr(config, "architectures", None) or ["unknown"])
        raise AuditError(f"expected a trained sequence classifier in {spec}, got {architectures} without "
                         f"{len(missing)} weights ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), which "
                         "would be random; audit a fine-tuned classifier, or pass --allow-missing-weights if you mean it")
    special = len(set(tok.all_special_tokens))
    if len(tok.get_vocab()) <= special + 1:
        raise AuditError(f"expected a tokenizer with a vocabulary for {spec}, got one that knows only its {special} "
                         "special tokens; save the real tokenizer with the model, or name one with --tokenizer")
    model.eval()
    return TextClassifier(name=name, model=model, tokenizer=tok, label_names=label_names_from_config(config),
                          source=spec)


def _read_errors() -> tuple[type[BaseException], ...]:
    import pyarrow
    from safetensors import SafetensorError

    return (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, UnicodeDecodeError,
            pickle.UnpicklingError, pyarrow.ArrowException, SafetensorError)


def load_predictions(path: Path, *, name: str, allow_pickle: bool = False) -> Predictions:
    """Read per-example logits saved by any framework (formats in the module docstring)."""
    ids: list[str] | None = None
    label_names: list[str] | None = None
    read_errors = _read_errors()
    try:
        if path.suffix == ".npy":
            logits = torch.from_numpy(np.load(path, allow_pickle=allow_pickle))
        elif path.suffix == ".safetensors":
            logits, ids, label_names = _read_safetensors_predictions(path)
        elif path.suffix in (".pt", ".pth"):
            logits, ids, label_names = _read_torch_predictions(path, allow_pickle)
        else:
            logits, ids = _read_table_predictions(path)
    except read_errors as err:  # any reader's failure means the same thing to the user
        raise AuditError(f"expected a readable predictions file, got {path} ({type(err).__name__}: {err}); "
                         "check the file format") from None
    logits = logits.float()
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise AuditError(f"expected logits of shape (N, K) with N, K >= 1 in {path}, got {tuple(logits.shape)}")
    bad = ~torch.isfinite(logits)
    # -inf is a legitimate masked logit; NaN, +inf, or a row with no finite entry are not
    if torch.isnan(logits).any() or (logits == float("inf")).any() or bad.all(dim=1).any():
        row = int((torch.isnan(logits) | (logits == float("inf")) | bad.all(1, keepdim=True)).any(1).nonzero()[0])
        raise AuditError(f"expected finite logits in {path}, got NaN or inf in row {row}; fix the predictions")
    if ids is not None and (len(ids) != logits.shape[0] or len(set(ids)) != len(ids)):
        raise AuditError(f"expected {logits.shape[0]} distinct example ids in {path}, got {len(ids)} "
                         f"({len(set(ids))} distinct); write one id per row")
    check_label_names(label_names, logits.shape[1], str(path))
    return Predictions(name=name, logits=logits, ids=ids, label_names=label_names, source=str(path))


def _read_safetensors_predictions(path: Path) -> tuple[torch.Tensor, list[str] | None, list[str] | None]:
    from safetensors import safe_open

    _check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        if "topk_ids" in keys:
            raise AuditError(f"expected per-example classifier logits in {path}, got a top-k logits file (a causal LM "
                             "teacher's, audit.reduce.topk); pass it as --teacher of a token audit, with causal LM "
                             "students")
        key = "logits" if "logits" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise AuditError(f"expected a tensor named 'logits' in {path}, got {keys}; rename the tensor")
        metadata = f.metadata() or {}
        logits = f.get_tensor(key)
    ids = json.loads(metadata["ids"]) if "ids" in metadata else None
    names = json.loads(metadata["label_names"]) if "label_names" in metadata else None
    return logits, ids, names


def _read_torch_predictions(path: Path, allow_pickle: bool) -> tuple[torch.Tensor, list[str] | None, list[str] | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) and not allow_pickle:
            raise AuditError(f"expected a plain tensor file, got pickled objects in {path}; "
                             "pass --allow-pickle if you trust it, or save with safetensors") from None
        raise
    if isinstance(obj, dict):
        if "logits" not in obj:
            raise AuditError(f"expected a dict with key 'logits' in {path}, got keys {sorted(obj)}")
        ids = obj.get("ids")
        return torch.as_tensor(obj["logits"]), [str(i) for i in ids] if ids is not None else None, obj.get("label_names")
    return torch.as_tensor(obj), None, None


_ID_KEYS = ("id", "ids", "example_id", "idx")


def _read_table_predictions(path: Path) -> tuple[torch.Tensor, list[str] | None]:
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        table = pq.read_table(path)
    else:
        with path.open(encoding="utf-8-sig") as f:
            head = f.read(1 << 12).lstrip()[:1]
        if path.suffix == ".json" and head in ("[", "{") or head == "[":
            return _read_json_predictions(path)
        table = pa_json.read_json(path)
    if "logits" not in table.column_names:
        raise AuditError(f"expected a 'logits' column in {path}, got columns {table.column_names}; "
                         "write one list of logits per row")
    return _logit_rows(table.column("logits").to_pylist(), path), _ids(table.column_names,
                                                                         lambda c: table.column(c).to_pylist())


def _read_json_predictions(path: Path) -> tuple[torch.Tensor, list[str] | None]:
    """One JSON value (a .json file) or one per line (.jsonl): rows of logits ``[[...], ...]``, objects with a
    ``logits`` key (and an id) per example, or one object ``{"logits": [[...], ...], "ids": [...]}``."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text) if path.suffix == ".json" else None
    except json.JSONDecodeError:
        value = None  # JSON lines under a .json name
    if value is None:
        value = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        if "logits" not in value:
            raise AuditError(f"expected a 'logits' key in the JSON object of {path}, got keys {sorted(value)}; "
                             "write {\"logits\": [[...], ...]} or one list of logits per example")
        ids = value.get("ids", value.get("id"))
        return _logit_rows(value["logits"], path), None if ids is None else [str(i) for i in ids]
    if not isinstance(value, list) or not value:
        raise AuditError(f"expected a JSON array of logit rows in {path}, got {type(value).__name__} "
                         f"{str(value)[:40]}; write one list of logits per example")
    if all(isinstance(row, dict) for row in value):
        missing = next((i for i, row in enumerate(value) if "logits" not in row), None)
        if missing is not None:
            raise AuditError(f"expected a 'logits' key in every object of {path}, got keys {sorted(value[missing])} at "
                             f"row {missing}; write one list of logits per example")
        columns = sorted({key for row in value for key in row})
        return _logit_rows([row["logits"] for row in value], path), _ids(
            columns, lambda key: [row.get(key) for row in value])
    if all(isinstance(row, list) for row in value):
        return _logit_rows(value, path), None
    raise AuditError(f"expected a JSON array of logit rows ([[...], ...]) or of objects with a 'logits' key in {path}, "
                     f"got {json.dumps(value)[:40]}; write one list of logits per example")


def _logit_rows(rows: list, path: Path) -> torch.Tensor:
    """(N, K) float32 logits of N lists of K numbers (JSON's NaN and Infinity included, refused later)."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise AuditError(f"expected one list of logits per example in {path}, got other values; "
                         "write one list of logits per example")
    if len({len(r) for r in rows}) > 1:
        raise AuditError(f"expected the same number of logits on every row of {path}; check the file")
    bad = next(((i, v) for i, r in enumerate(rows) for v in r
                if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    if bad is not None:
        raise AuditError(f"expected numbers as logits in {path}, got {bad[1]!r} at row {bad[0]}; write a number "
                         "for every class")
    return torch.tensor(rows, dtype=torch.float32)


def _ids(columns: list[str], values: Callable[[str], list]) -> list[str] | None:
    """The example ids of the first id column among ``columns`` (``values(column)`` its cells), as strings."""
    id_column = next((c for c in _ID_KEYS if c in columns), None)
    return [str(i) for i in values(id_column)] if id_column else None


def save_predictions(predictions: Predictions, path: Path) -> None:
    """Write logits as the ``.safetensors`` file :func:`load_predictions` reads back."""
    Path(path).write_bytes(predictions_bytes(predictions))


def predictions_bytes(predictions: Predictions) -> bytes:
    """The ``.safetensors`` bytes of :func:`save_predictions`."""
    from safetensors.torch import save

    metadata = {"name": predictions.name, "source": predictions.source}
    if predictions.ids is not None:
        metadata["ids"] = json.dumps(predictions.ids)
    if predictions.label_names is not None:
        metadata["label_names"] = json.dumps(predictions.label_names)
    return save({"logits": predictions.logits.contiguous()}, metadata=metadata)
