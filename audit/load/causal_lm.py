"""Causal language models as loaded from a spec: a Hugging Face folder or hub id, a GGUF file, ``SPEC@layers=k``, or
a teacher seen only through a top-k logits file (:mod:`audit.reduce.topk`)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from audit.errors import AuditError
from audit.load.models import looks_like_hub_id


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
    """A teacher seen only through a top-k logits file (:mod:`audit.reduce.topk`), read once the data is known."""

    name: str
    source: str


def is_topk_file(spec: str) -> bool:
    """True for a safetensors file holding ``topk_ids`` (a top-k logits file of :mod:`audit.reduce.topk`)."""
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
