"""Causal language models as loaded from a spec: a Hugging Face folder or hub id, a GGUF file, ``SPEC@layers=k``, or
a teacher seen only through a top-k logits file (:mod:`audit.reduce.topk`)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Iterator
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


def folder_architectures(path: Path) -> list[str] | None:
    """The ``architectures`` a local checkpoint folder's config.json names, or None (no folder, no config, none
    named, or a config that does not parse)."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return None
    try:
        architectures = json.loads(config.read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(a) for a in architectures] if isinstance(architectures, list) and architectures else None


def is_causal_lm_spec(spec: str) -> bool:
    """True for a GGUF file, a top-k logits file, a folder whose config names a ``*ForCausalLM`` architecture, or
    ``SPEC@layers=k`` of any of those or of a hub id (a local folder of another architecture, a sequence classifier,
    is not one, ``@layers=k`` or not)."""
    base = spec.partition("@")[0]
    path = Path(base)
    if path.suffix == ".gguf" or is_topk_file(spec):
        return True
    architectures = folder_architectures(path)
    if architectures is not None:
        return any(a.endswith("ForCausalLM") for a in architectures)
    return "@" in spec


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
    elif path.is_file():
        what = "a top-k logits file, which stands in for a teacher only" if is_topk_file(base) else "a file"
        raise AuditError(f"expected a causal LM checkpoint folder, a GGUF file or a hub id, got {base}, {what}; pass "
                         "a model's folder (save_pretrained) or .gguf file, and a top-k logits file as --teacher")
    elif path.is_dir() or looks_like_hub_id(base):
        source = base
        kwargs["local_files_only"] = path.is_dir()
    else:
        raise AuditError(f"expected an existing path, a GGUF file or a hub id, got {base!r}: no such file or folder; "
                         "check the path")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        architectures = getattr(config, "architectures", None) or []
        if architectures and not any(a.endswith("ForCausalLM") for a in architectures):
            cut = f" and @{option}, which cuts causal LMs only" if option else ""
            raise AuditError(f"expected a causal language model, got {', '.join(architectures)} in {base}; audit it "
                             f"as a sequence classifier (drop --kind lm{cut}), or pass a *ForCausalLM checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        quiet = gguf_progress_on_terminals_only() if "gguf_file" in kwargs else contextlib.nullcontext()
        with contextlib.redirect_stdout(io.StringIO()), quiet:  # nothing a loader prints reaches the report
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AuditError(f"could not load the causal LM {spec!r} ({first_line[:200]}); pass a local checkpoint "
                         "folder or GGUF file") from None
    if option:
        keep_first_layers(model, option, spec)
    model.eval()
    return CausalLM(name=name, model=model, tokenizer=tokenizer, source=spec)


@contextlib.contextmanager
def gguf_progress_on_terminals_only() -> Iterator[None]:
    """While a GGUF file loads, transformers' reader draws its progress bar only where stderr is a terminal.

    The reader (``transformers.modeling_gguf_pytorch_utils``) draws a tqdm bar ("Converting and de-quantizing GGUF
    tensors...") whatever transformers' progress-bar setting, so a redirected stderr (a log, CI) got one line of
    carriage returns per GGUF model loaded. tqdm's ``disable=None`` draws on a terminal and nowhere else; the
    module's own ``tqdm`` is put back on exit.
    """
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:  # no GGUF reader in this transformers: nothing draws
        yield
        return
    original = getattr(reader, "tqdm", None)
    if original is None:
        yield
        return
    reader.tqdm = functools.partial(original, disable=None)
    try:
        yield
    finally:
        reader.tqdm = original


def keep_first_layers(model: torch.nn.Module, option: str, spec: str) -> None:
    """Cut a causal LM to its first k decoder layers in place, for the ``@layers=k`` option of ``spec``."""
    layers = model.model.layers
    key, _, value = option.partition("=")
    if key != "layers" or not value.isdigit() or not 1 <= int(value) <= len(layers):
        keep = "@layers=1" if len(layers) == 1 else f"@layers=1 to @layers={len(layers)}"
        raise AuditError(f"expected @layers=k with 1 <= k <= {len(layers)} (the model's decoder layers) in {spec}, got "
                         f"@{option}; pass {keep}, the number of layers to keep")
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
