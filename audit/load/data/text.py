"""Text for language-model audits: documents in, token windows with next-token targets out.

:func:`read_documents` takes one spec string and returns :class:`Documents`:

- a ``.txt``/``.md`` file (one document) or a folder of them (one document per file, sorted by path);
- a table ``.csv|.tsv|.jsonl|.json|.parquet`` (read as :func:`audit.load.data.files.read_file` does) with a text
  column (``text_column`` or one of :data:`audit.load.data.TEXT_COLUMNS`), one document per row; or with
  ``prompt_column`` and ``completion_column`` (auto-detected when the columns are named prompt and
  completion and no text column is), where only the completion's tokens are scored (what SFT
  distillation cares about); ``split`` keeps the rows of a ``split`` column;
- a built-in corpus ``shakespeare[:split]`` (default split test; one document per scene, split by play;
  see :func:`audit.load.data.builtin.read_corpus`);
- otherwise a Hub data set ``name[:config][:split]`` through ``datasets``.

:func:`tokenize_windows` cuts each document into windows of at most ``max_length`` tokens that advance
by ``stride`` tokens (the sliding-window evaluation of the Hugging Face perplexity guide): every token
of a document but its first is scored exactly once, by the first window that contains it after its
first token, so it sees at least ``max_length - stride`` tokens of context (all it has when the
document is shorter). Targets are already shifted: the logits at window position ``i`` predict
``targets[w, i]``, and ``-100`` marks positions that are not scored (context re-read from the previous
window, padding, prompts, each window's last position).
"""

from __future__ import annotations

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
ID_COLUMNS = ("id", "idx", "example_id", "doc_id")
IGNORE_INDEX = -100
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class Documents:
    """Documents of a text data set, aligned by position.

    ``texts[i]`` is the scored text of document ``ids[i]``; with prompts, ``prompts[i]`` precedes it as
    unscored context (``prompts`` is None otherwise). ``info`` records provenance (kind, source, split,
    columns, sha256 of a file, licence of a built-in).

    >>> d = Documents("toy", ["to be or not to be"], ["0"])
    >>> len(d)
    1
    """

    name: str
    texts: list[str]
    ids: list[str]
    prompts: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, values in (("ids", self.ids), ("prompts", self.prompts)):
            if values is not None and len(values) != len(self.texts):
                raise AuditError(f"expected {len(self.texts)} {what} (one per text) in {self.name}, got "
                                 f"{len(values)}; align the lists")

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TokenWindows:
    """Token windows of W rows and L = ``max_length`` columns (right-padded), all int64 tensors on CPU.

    Attributes:
        input_ids: (W, L) token ids, the tokenizer's pad id (0 without one) past each window's end.
        attention_mask: (W, L) 1 on tokens, 0 on padding.
        targets: (W, L) the next token that the logits at each position predict, ``-100`` where unscored.
        positions: (W, L) index in its document of the target token (the logits at a scored position
            give p(token t | tokens < t) for t = position), -1 where unscored.
        sequence_ids: (W,) index of each window's document in the :class:`Documents`.
        info: max_length, stride, documents, windows, tokens scored.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    sequence_ids: torch.Tensor
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def scored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (P,) document index and (P,) position of every scored target, in the row-major order of
        ``targets[targets != -100]``: the keys of a top-k logits file and the groups of a cluster bootstrap."""
        mask = self.targets != IGNORE_INDEX
        return self.sequence_ids[:, None].expand_as(mask)[mask], self.positions[mask]


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


def _from_table(table: pa.Table, name: str, info: dict, limit: int | None, text_column: str | None,
                prompt_column: str | None, completion_column: str | None) -> Documents:
    columns = table.column_names
    if (prompt_column is None) != (completion_column is None):
        given, missing = ("--prompt-column", "--completion-column") if completion_column is None \
            else ("--completion-column", "--prompt-column")
        raise AuditError(f"expected {missing} together with {given}, got only {given}; pass both to score "
                         f"completions only, or --text-column to score whole texts")
    text = None if prompt_column is not None else _pick(columns, text_column, TEXT_COLUMNS, "--text-column")
    if prompt_column is None and text is None:
        if "prompt" in columns and "completion" in columns:
            prompt_column, completion_column = "prompt", "completion"
        else:
            raise AuditError(f"expected a text column (one of {', '.join(TEXT_COLUMNS)}) or prompt and completion "
                             f"columns among {columns}, got none; pass --text-column NAME")
    for given, option in ((prompt_column, "--prompt-column"), (completion_column, "--completion-column")):
        if given is not None:
            _pick(columns, given, (), option)
    id_column = _pick(columns, None, ID_COLUMNS, "--id-column")
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise AuditError(f"expected at least one document in {name}, got 0 rows; pick another file or split")
    ids = [str(v) for v in table.column(id_column).to_pylist()] if id_column else [str(i) for i in
                                                                                   range(table.num_rows)]
    info = {**info, "columns": {"text": text, "prompt": prompt_column, "completion": completion_column,
                                "id": id_column}}
    if prompt_column is not None:
        return Documents(name, column_strings(table, completion_column), ids, column_strings(table, prompt_column), info)
    return Documents(name, column_strings(table, text), ids, None, info)


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
        spec: a .txt/.md file or folder of them, a table file, ``shakespeare[:split]`` or a Hub name.
        split: for a table file, keep the rows whose ``split`` column holds it; for a built-in or a Hub
            data set, the split (overrides the spec's; default test).
        text_column: the column of documents (auto-detected when None).
        prompt_column, completion_column: score only the completion tokens, after the prompt's; both or
            neither.
        limit: keep the first ``limit`` documents.

    Raises:
        AuditError: limit < 1; a missing file, empty folder or unreadable file; a prompt column without a
            completion column (or the reverse); missing or ambiguous columns; non-text cells; 0 documents;
            an unknown split; a Hub data set that cannot be loaded.

    >>> read_documents("shakespeare:test", limit=2).ids  # doctest: +SKIP
    ['comedies/twelfth-night/0', 'comedies/twelfth-night/1']
    """
    if limit is not None and limit < 1:
        raise AuditError(f"expected --limit >= 1, got {limit}; pass a positive number of documents or no limit")
    columns = (text_column, prompt_column, completion_column)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in DOCUMENT_SUFFIXES)
        if not files:
            raise AuditError(f"expected .txt or .md files in the folder {path}, got none; put one document per file")
        info = {"kind": "folder", "source": str(path.resolve()), "files": len(files)}
        return _from_table(_read_text_files(files, path), path.name, info, limit, None, None, None)
    if path.suffix.lower() in DOCUMENT_SUFFIXES:
        if not path.is_file():
            raise AuditError(f"expected a text file at {path}, got no such file; check the path")
        info = {"kind": "file", "source": str(path.resolve()), "sha256": file_sha256(path)}
        return _from_table(_read_text_files([path], path), path.stem, info, limit, None, None, None)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        table, _ = read_file(path)
        info = {"kind": "file", "source": str(path.resolve()), "sha256": file_sha256(path), "split": split}
        if split is None:
            return _from_table(table, path.stem, info, limit, *columns)
        keep, info["split"] = select_split(table, split, path)
        return _from_table(table.filter(keep), f"{path.stem}:{info['split']}", info, limit, *columns)
    name, _, spec_split = spec.partition(":")
    if name in text_corpora():
        table, info = read_corpus(name, split or spec_split or DEFAULT_SPLIT)
        return _from_table(table, f"{name}:{info['split']}", info, limit, "text", None, None)
    hub_name, config, hub_split = parse_hub_spec(spec)
    chosen = split or hub_split or DEFAULT_SPLIT
    table, _, info = read_hub(hub_name, config, chosen)
    return _from_table(table, ":".join(p for p in (hub_name, config, chosen) if p), info, limit, *columns)


def _window_starts(n: int, max_length: int, stride: int) -> list[int]:
    """First token of each window over n tokens: 0, stride, 2 stride, ... until a window reaches the end."""
    starts = [0]
    while starts[-1] + max_length < n:
        starts.append(starts[-1] + stride)
    return starts


def tokenize_windows(documents: Documents, tokenizer, *, max_length: int, stride: int | None = None) -> TokenWindows:
    """Tokenise documents and cut them into scored windows (see the module docstring).

    Each text is tokenised with the tokenizer's special tokens (a BOS where it adds one); with prompts,
    the prompt is tokenised with them and the completion without, and the two are concatenated, so that
    the completion's tokens are exactly those scored.

    Args:
        documents: from :func:`read_documents`.
        tokenizer: a Hugging Face tokenizer (called on a list of strings, returning ``input_ids``).
        max_length: tokens per window, >= 2 (at most the model's context; the caller checks that).
        stride: tokens a window advances, in [1, max_length - 1]; default ``max_length // 2``. Each scored
            token then sees at least ``max_length - stride`` tokens of context.

    Returns:
        :class:`TokenWindows`; windows without a scored target (all prompt) are left out.

    Raises:
        AuditError: max_length < 2; stride outside [1, max_length - 1]; a document shorter than two
            tokens (nothing to predict from), or a completion of no tokens.

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
    if documents.prompts is None:
        token_lists = tokenizer(documents.texts)["input_ids"]
        first_scored = [1] * len(token_lists)
    else:
        prompts = tokenizer(documents.prompts)["input_ids"]
        completions = tokenizer(documents.texts, add_special_tokens=False)["input_ids"]
        for i, c in enumerate(completions):
            if not c:
                raise AuditError(f"expected a completion of at least one token in document {documents.ids[i]!r} of "
                                 f"{documents.name}, got none; drop that row")
        token_lists = [p + c for p, c in zip(prompts, completions)]
        first_scored = [max(len(p), 1) for p in prompts]
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0

    rows_ids, rows_targets, rows_positions, lengths, sequence = [], [], [], [], []
    for doc, (tokens, first) in enumerate(zip(token_lists, first_scored)):
        n = len(tokens)
        if n < 2:
            raise AuditError(f"expected at least 2 tokens in every document (one to predict from, one to predict), "
                             f"got {n} in document {documents.ids[doc]!r} of {documents.name}; drop or lengthen it")
        ids = torch.tensor(tokens, dtype=torch.int64)
        scored_from = first  # the first target token not yet scored
        for begin in _window_starts(n, max_length, stride):
            end = min(begin + max_length, n)
            target_pos = torch.arange(begin + 1, begin + max_length + 1)  # (L,) token predicted at each position
            keep = (target_pos >= scored_from) & (target_pos < end)
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
    input_ids = torch.stack(rows_ids)
    attention_mask = (torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]).long()
    targets = torch.stack(rows_targets)
    info = {"max_length": max_length, "stride": stride, "documents": len(documents), "windows": len(rows_ids),
            "tokens_scored": int((targets != IGNORE_INDEX).sum())}
    return TokenWindows(input_ids, attention_mask, targets, torch.stack(rows_positions),
                        torch.tensor(sequence, dtype=torch.int64), info)
