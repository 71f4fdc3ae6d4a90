"""The students' own text: each student completes every prompt, and the completions become token windows on
which the teacher and that student are scored (``compare --generate``, :func:`audit.compare.add_on_policy`).

A student that matches its teacher on reference text can still drift on text it writes itself (exposure bias:
GKD, on-policy distillation and DistiLLM train on the student's samples for that reason). This module makes the
samples and shapes them for the token audit's own loop:

1. :func:`prompt_tokens`: one prompt per document. With a prompt column, the prompt, tokenised as
   :func:`audit.load.data.text.tokenize_windows` tokenises it; for a conversation (a ``messages`` column), the
   conversation rendered by the chat template up to its last assistant reply, with the template's assistant header
   (:func:`reply_prompts`); for plain documents, the first half of the document's first window
   (``min(tokens, max_length) // 2`` tokens, at least one). Prompt and completion must fit the models' context
   together.
2. :func:`generate_completions`: batched ``model.generate`` on the device, prompts left-padded and batched longest
   first, each batch seeded from the audit's seed and its index (so a resumed run, or a batch that another process
   runs, samples the same tokens), pure sampling at ``temperature`` with nucleus ``top_p`` (no top-k, no penalty;
   temperature 0 decodes greedily), stopping at the model's EOS. Completions are kept in the prediction cache
   (:mod:`audit.run.cache`) under :func:`generation_key`: the student's weights, the prompts and the sampling
   settings, like a model's logits.
3. :func:`completion_windows`: one window per prompt, prompt + completion, with only the completion's tokens
   scored, for :func:`audit.run.evaluate.evaluate_tokens` (whose columns are cached under :func:`columns_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from audit.errors import AuditError
from audit.load.causal_lm import CausalLM
from audit.load.data.text import IGNORE_INDEX, Documents, TokenWindows, document_tokens
from audit.run.cache import PredictionStore, model_fingerprint
from audit.run.distributed import ProcessGroup
from audit.run.evaluate import evaluate_plan

if TYPE_CHECKING:
    from transformers import GenerationConfig

NO_TOKEN = -1.0  # a completion's cached row past its end (it stopped at EOS)
EXACT_IDS = 2 ** 24  # token ids are cached as float32 values, exact below this


def _digest(values: object) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def reply_prompts(documents: Documents, tokenizer) -> list[list[int]]:
    """The token ids a model is given to write each document's last reply, as
    :func:`audit.load.data.text.document_tokens` tokenises the document: a prompt column's prompt (with the
    tokenizer's special tokens; empty for an empty prompt); for a conversation, every token before its last run of
    scored tokens: the chat template's rendering of the turns before the last assistant reply followed by the
    assistant header (what ``apply_chat_template(turns, add_generation_prompt=True)`` renders), tokenised piece by
    piece as the conversation is.

    Raises:
        AuditError: documents of plain text (no prompt column, no messages: nothing says where a reply starts);
            what :func:`audit.load.data.text.document_tokens` refuses for conversations.
    """
    if documents.prompts is None and documents.messages is None:
        raise AuditError(f"expected prompt/completion or chat documents (a prompt to write a reply to), got plain "
                         f"text in {documents.name}; pass data with prompt and completion columns or a messages "
                         "column")
    if documents.messages is None:
        return tokenizer(documents.prompts)["input_ids"]
    prompts = []
    for tokens, scored in document_tokens(documents, tokenizer):
        end = max(j for j, s in enumerate(scored) if s) + 1  # past the last reply's last scored token
        start = end
        while start > 0 and scored[start - 1]:
            start -= 1
        prompts.append(tokens[:start])
    return prompts


def prompt_tokens(documents: Documents, tokenizer, *, max_length: int, max_new_tokens: int,
                  context: int | None) -> list[list[int]]:
    """The token ids of every document's prompt (see the module docstring for what the prompt is).

    Args:
        documents: the audit's documents (:func:`audit.load.data.text.read_documents`).
        tokenizer: the models' shared tokenizer.
        max_length: the audit's window length: a plain document's prompt is half its first window.
        max_new_tokens: tokens each completion may have; prompt + completion must fit ``context``.
        context: the smallest context (positions) of the models, or None where none is known.

    Returns:
        One list of token ids per document, in the documents' order.

    Raises:
        AuditError: ``max_new_tokens`` leaves no room for a prompt in the context; a prompt of no tokens; a prompt
            column's or conversation's prompt that leaves no room for ``max_new_tokens`` (plain documents' prompts
            are cut instead).
    """
    if context is not None and max_new_tokens >= context:
        raise AuditError(f"expected --max-new-tokens below the models' context of {context} tokens (a prompt needs "
                         f"at least one), got {max_new_tokens}; pass --max-new-tokens {context // 2} or less")
    room = None if context is None else context - max_new_tokens
    if documents.prompts is None and documents.messages is None:
        tokens = tokenizer(documents.texts)["input_ids"]
        half = [min(len(t), max_length) // 2 for t in tokens]
        prompts = [t[:max(1, h) if room is None else min(max(1, h), room)] for t, h in zip(tokens, half)]
    else:
        prompts = reply_prompts(documents, tokenizer)
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise AuditError(f"expected a prompt of at least one token to complete in document {documents.ids[i]!r} "
                             f"of {documents.name}, got none; drop that row or give it a prompt")
        if room is not None and len(prompt) > room:
            raise AuditError(f"expected every prompt to leave room for --max-new-tokens {max_new_tokens} in the "
                             f"models' context of {context} tokens, got a prompt of {len(prompt)} tokens in document "
                             f"{documents.ids[i]!r} of {documents.name}; shorten or drop it, or pass --max-new-tokens "
                             f"{max(1, context - len(prompt))}")
    return prompts


def stop_tokens(lm: CausalLM) -> set[int]:
    """The token ids that end a completion: the model's generation config's EOS ids, or its tokenizer's."""
    config = getattr(lm.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(lm.tokenizer, "eos_token_id", None)
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def pad_token(lm: CausalLM) -> int:
    """The id that pads a batch: the tokenizer's pad token, else an EOS, else 0."""
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else min(stop_tokens(lm), default=0)


def generation_plan(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """The batches of :func:`generate_completions`: prompt indices, longest prompt first (ties in data order), cut
    into batches of ``batch_size`` (so a batch pads little). It depends on the prompts' lengths and the batch size
    alone, so a resumed run and every process of a launched run agree on it.

    >>> generation_plan([[1], [1, 2, 3], [1, 2]], 2)
    [[1, 2], [0]]
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def batch_seed(seed: int, index: int) -> int:
    """The RNG seed of batch ``index``'s sampling: a hash of the audit's seed and the index (so batches do not
    share a random stream, and a batch samples the same tokens whichever process runs it, or when)."""
    return int.from_bytes(hashlib.sha256(f"kd-audit generate {seed} {index}".encode()).digest()[:8], "little") >> 1


def sampling_config(lm: CausalLM, *, max_new_tokens: int, temperature: float, top_p: float) -> GenerationConfig:
    """The ``transformers.GenerationConfig`` of :func:`generate_completions`: pure sampling at ``temperature`` with
    nucleus ``top_p`` (top-k off, whatever the model's own generation config says), greedy at temperature 0."""
    from transformers import GenerationConfig

    eos = sorted(stop_tokens(lm))
    common = {"max_new_tokens": max_new_tokens, "eos_token_id": eos or None, "pad_token_id": pad_token(lm),
              "num_beams": 1, "repetition_penalty": 1.0}
    if temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common)


def generate_completions(lm: CausalLM, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                         top_p: float, seed: int, device: torch.device, dtype: torch.dtype, batch_size: int,
                         store: PredictionStore | None = None, group: ProcessGroup | None = None,
                         progress: bool = False) -> list[list[int]]:
    """``lm``'s completion of every prompt: its new token ids, up to and including the EOS it stopped at.

    Batches follow :func:`generation_plan`; batch ``b`` samples under ``torch.manual_seed(batch_seed(seed, b))``
    (the global RNG is restored afterwards), so the completions depend only on the model, the prompts, the
    sampling settings, the batch size and the device. With ``store`` (the cache entry of :func:`generation_key`),
    cached batches are read, not sampled; with ``group``, each process samples its share and all get every
    completion (:func:`audit.run.evaluate.evaluate_plan`).

    Args:
        lm: the student. prompts: token ids (:func:`prompt_tokens`), each at least one token.
        max_new_tokens: tokens a completion may have (>= 1). temperature: >= 0 (0: greedy). top_p: in (0, 1].

    Returns:
        One list of new token ids per prompt, in the prompts' order, each of 1 to ``max_new_tokens`` tokens.
    """
    vocab = int(lm.model.config.vocab_size)
    if vocab > EXACT_IDS:
        raise AuditError(f"expected a vocabulary of at most {EXACT_IDS} tokens to cache completions, got {vocab} in "
                         f"{lm.name}; pass --no-cache")
    plan = generation_plan(prompts, batch_size)
    model = lm.model.to(device=device, dtype=dtype)
    config = sampling_config(lm, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    pad, stops = pad_token(lm), stop_tokens(lm)

    def completions(wanted: set[int]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for index in sorted(wanted):
            rows = plan[index]
            longest = max(len(prompts[i]) for i in rows)
            # left padding: every prompt ends where the batch's first new token goes
            input_ids = torch.tensor([[pad] * (longest - len(prompts[i])) + prompts[i] for i in rows])
            attention_mask = torch.tensor([[0] * (longest - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(batch_seed(seed, index))
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                     generation_config=config)
            values = torch.full((len(rows), max_new_tokens), NO_TOKEN)
            for r, new in enumerate(out[:, longest:].tolist()):
                end = next((t + 1 for t, token in enumerate(new) if token in stops), len(new))
                values[r, :end] = torch.tensor(new[:end], dtype=torch.float32)
            yield index, torch.tensor(rows, dtype=torch.int64), values

    values = evaluate_plan([len(rows) for rows in plan], completions, total=len(prompts), width=max_new_tokens,
                           description=f"generating with {lm.name}", store=store, group=group, progress=progress)
    return [[int(v) for v in row if v != NO_TOKEN] for row in values.tolist()]


def generation_key(lm: CausalLM, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, dtype: torch.dtype, device: torch.device, batch_size: int) -> dict:
    """Everything a student's completions depend on, as :func:`audit.run.cache.prediction_key` for logits: the
    student by its content (weights, config, tokenizer), the prompts' token ids, the sampling settings, and the
    batch size, dtype and device type that change the last bits of the logits it samples from."""
    return {"version": 1, "kind": "lm-generations", "model": model_fingerprint(lm), "prompts": _digest(prompts),
            "n": len(prompts), "max_new_tokens": max_new_tokens, "temperature": float(temperature).hex(),
            "top_p": float(top_p).hex(), "seed": seed, "dtype": str(dtype), "device": device.type,
            "batch_size": batch_size}


def completion_windows(prompts: list[list[int]], completions: list[list[int]], *, pad: int = 0) -> TokenWindows:
    """One token window per prompt: the prompt then its completion, right-padded to the longest, with only the
    completion's tokens scored (the document of window ``i`` is prompt ``i``, the cluster of the bootstrap).

    >>> w = completion_windows([[5, 6], [7]], [[8], [9, 10]])
    >>> w.targets.tolist()
    [[-100, 8, -100], [9, 10, -100]]
    """
    if len(prompts) != len(completions) or not all(completions):
        raise AuditError(f"expected one non-empty completion per prompt, got {len(completions)} completions "
                         f"for {len(prompts)} prompts; re-run without the cache (--no-cache)")
    rows = [p + c for p, c in zip(prompts, completions)]
    length = max(map(len, rows))
    n = len(rows)
    input_ids = torch.full((n, length), pad, dtype=torch.int64)
    attention_mask = torch.zeros(n, length, dtype=torch.int64)
    targets = torch.full((n, length), IGNORE_INDEX, dtype=torch.int64)
    positions = torch.full((n, length), -1, dtype=torch.int64)
    for i, (prompt, tokens) in enumerate(zip(prompts, rows)):
        input_ids[i, :len(tokens)] = torch.tensor(tokens)
        attention_mask[i, :len(tokens)] = 1
        scored = torch.arange(len(prompt), len(tokens))  # the completion's tokens, predicted from the one before
        targets[i, scored - 1] = input_ids[i, scored]
        positions[i, scored - 1] = scored
    info = {"max_length": length, "stride": None, "documents": n, "windows": n,
            "tokens_scored": int((targets != IGNORE_INDEX).sum())}
    return TokenWindows(input_ids, attention_mask, targets, positions, torch.arange(n), info)


def columns_key(models: list[CausalLM], windows: TokenWindows, *, dtype: torch.dtype, device: torch.device,
                batch_size: int) -> dict:
    """Everything the on-policy columns of ``models`` (teacher, then one student) depend on, as
    :func:`audit.run.cache.token_key` for the reference text: the models by their content and the windows' tokens
    and targets (the completions themselves, not how they were sampled)."""
    digest = hashlib.sha256()
    for tensor in (windows.input_ids, windows.attention_mask, windows.targets):
        digest.update(f"{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return {"version": 1, "kind": "lm-on-policy-columns", "models": [model_fingerprint(m) for m in models],
            "windows": digest.hexdigest(), "n": int(windows.info["tokens_scored"]), "dtype": str(dtype),
            "device": device.type, "batch_size": batch_size}
