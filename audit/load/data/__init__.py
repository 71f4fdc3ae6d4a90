"""Text classification data for audits: local files, built-in data sets and Hugging Face Hub names.

:func:`load_data` takes one spec string and returns a :class:`TextData`:

- a local file ``path.csv|.tsv|.jsonl|.json|.parquet`` (see :mod:`audit.load.data.files` for the formats;
  ``split`` picks the rows of a ``split`` column, dev and validation being one name; a file without one is
  split 80/10/10 by a seeded hash of each text as the built-ins are, with a warning),
  or a folder of such files named by split (``train.csv``, ``test.csv``: the names ``datasets`` gives splits),
  each file read as a single file is, and nothing written (``datasets``' cache is not used);
- a built-in name ``vader-movies``, ``vader-tweets``, ``vader-amazon``, ``vader-nyt``, ``bbc-news``,
  optionally ``name:split`` with split train, dev or test (default test); see :mod:`audit.load.data.builtin`;
- a Hub data set ``name[:config][:split]`` loaded with ``datasets.load_dataset`` (default split test;
  with one suffix, train/validation/dev/test is read as a split and anything else as a config).

Columns are auto-detected when unambiguous (case-insensitive): the text and its pair together from
:data:`TEXT_PAIRS` or else one of :data:`TEXT_COLUMNS`; the label from :data:`LABEL_COLUMNS` (none
present: unlabelled data); the id from :data:`ID_COLUMNS` (none present: row positions).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from audit.errors import AuditError
from audit.load.data.builtin import (
    SPLITS,
    BuiltinDataset,
    assign_splits,
    builtin_datasets,
    builtin_rows,
    cache_dir,
    fetch_builtin,
    read_builtin,
    text_corpora,
)
from audit.load.data.files import (
    FILE_SUFFIXES,
    column_strings,
    file_sha256,
    parse_hub_spec,
    read_file,
    read_folder,
    read_hub,
    select_split,
)
from audit.settings import CompareSettings

__all__ = [
    "TextData", "load_data", "BuiltinDataset", "builtin_datasets", "builtin_rows", "cache_dir", "fetch_builtin",
    "assign_splits", "SPLITS", "TEXT_COLUMNS", "TEXT_PAIRS", "LABEL_COLUMNS", "ID_COLUMNS",
]

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question", "question1", "content", "review")
TEXT_PAIRS = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("question", "sentence"), ("question", "passage"), ("text", "text_pair"),
)
LABEL_COLUMNS = ("label", "labels", "target", "class", "category")
ID_COLUMNS = ("id", "idx", "example_id")
DEFAULT_SPLIT = "test"
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class TextData:
    """Examples of a text classification data set, aligned by position.

    ``labels[i]`` is a class index (``label_names[labels[i]]`` its name when names are known);
    ``labels`` is None for unlabelled data. ``info`` records provenance: kind (builtin, file, folder,
    hub), source, split, columns used, rows in the split before ``limit``; sha256 of the file or archive;
    licence and citation for built-ins.

    Raises:
        AuditError: the lists differ in length.

    >>> d = TextData("toy", ["good", "bad"], ["0", "1"], [1, 0], ["negative", "positive"])
    >>> len(d), d.label_names[d.labels[0]]
    (2, 'positive')
    """

    name: str
    texts: list[str]
    ids: list[str]
    labels: list[int] | None
    label_names: list[str] | None
    text_pairs: list[str] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        for what, values in (("ids", self.ids), ("labels", self.labels), ("text_pairs", self.text_pairs)):
            if values is not None and len(values) != n:
                raise AuditError(f"expected {n} {what} (one per text) in {self.name}, got {len(values)}; "
                                 "align the lists")

    def __len__(self) -> int:
        return len(self.texts)


def _columns_error(what: str, columns: list[str], option: str, got: str) -> AuditError:
    return AuditError(f"expected {what} among the columns {columns}, got {got}; pass {option} NAME")


def _present(columns: list[str], candidates: tuple[str, ...]) -> list[str]:
    return [c for c in columns if c.lower() in candidates]


def _pick_one(columns: list[str], candidates: tuple[str, ...], what: str, option: str) -> str | None:
    found = _present(columns, candidates)
    if len(found) > 1:
        raise _columns_error(what, columns, option, f"several candidates {found}")
    return found[0] if found else None


def _resolve_columns(
    columns: list[str], text: str | None, pair: str | None, label: str | None, id_: str | None
) -> dict[str, str | None]:
    for given, option in ((text, "--text-column"), (pair, "--text-pair-column"), (label, "--label-column"),
                          (id_, "--id-column")):
        if given is not None and given not in columns:
            raise _columns_error(f"the column {given!r}", columns, option, "no such column")
    if text is None:
        lower = {c.lower(): c for c in columns}
        pairs = [(lower[a], lower[b]) for a, b in TEXT_PAIRS if a in lower and b in lower]
        if len(pairs) > 1:
            raise _columns_error("one text/pair couple", columns, "--text-column", f"several couples {pairs}")
        if pairs:
            text, auto_pair = pairs[0]
            pair = auto_pair if pair is None else pair
        else:
            text = _pick_one(columns, TEXT_COLUMNS, "a text column", "--text-column")
            if text is None:
                raise _columns_error(f"a text column (one of {', '.join(TEXT_COLUMNS)})", columns,
                                     "--text-column", "none")
    chosen = {
        "text": text,
        "text_pair": pair,
        "label": label if label is not None else _pick_one(columns, LABEL_COLUMNS, "one label column",
                                                           "--label-column"),
        "id": id_ if id_ is not None else _pick_one(columns, ID_COLUMNS, "one id column", "--id-column"),
    }
    used = [c for c in chosen.values() if c is not None]
    if len(set(used)) < len(used):
        raise AuditError(f"expected distinct columns for text, pair, label and id, got {chosen}; "
                         "pass different --*-column options")
    return chosen


def _labels(
    values: list, column: str, class_names: list[str] | None, pool: list
) -> tuple[list[int] | None, list[str] | None]:
    """Class indices and names: integers (or integer strings, as csv cells are) are indices; other strings
    are names, indexed in the sorted order of ``pool`` (the column's values in the whole file, so every split
    and limit numbers classes alike). All -1 is the Hub's mark of an unlabelled split: no labels."""
    for row, v in enumerate(values):
        if v is None or v == "" or isinstance(v, bool):
            raise AuditError(f"expected a label in every row of column {column!r}, got {v!r} at row {row}; "
                             "fill or drop that row, or pass --label-column for another column")
    if all(isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
        indices = [int(v) for v in values]
    elif all(isinstance(v, str) for v in values):
        if not all(_INTEGER.fullmatch(v.strip()) for v in values):
            names = sorted({v for v in pool if isinstance(v, str) and v} | set(values))
            lookup = {name: i for i, name in enumerate(names)}
            return [lookup[v] for v in values], names
        indices = [int(v) for v in values]
    else:
        bad = next(v for v in values if not isinstance(v, (int, str)))
        raise AuditError(f"expected integer class indices or class names in column {column!r}, got {bad!r}; "
                         "map the labels to integers or names")
    if all(i == -1 for i in indices):
        return None, class_names
    bad = next((i for i in indices if i < 0 or (class_names is not None and i >= len(class_names))), None)
    if bad is not None:
        limit = f" < {len(class_names)}" if class_names is not None else ""
        raise AuditError(f"expected class indices >= 0{limit} in column {column!r}, got {bad}; fix the labels")
    return indices, class_names


def _to_text_data(
    table: pa.Table, name: str, info: dict, class_names: dict[str, list[str]], limit: int | None,
    text: str | None, pair: str | None, label: str | None, id_: str | None, keep: pa.Array | None = None,
) -> TextData:
    """TextData from the rows of ``table`` selected by the boolean mask ``keep`` (all when None), then ``limit``.

    Column detection, label names and row-position ids look at the whole table."""
    columns = _resolve_columns(table.column_names, text, pair, label, id_)
    if columns["label"] is not None and pa.types.is_nested(table.column(columns["label"]).type):
        raise AuditError(f"expected one label per row in column {columns['label']!r}, got values of type "
                         f"{table.column(columns['label']).type}; store each label as a string or integer")
    pool = table.column(columns["label"]).unique().to_pylist() if columns["label"] is not None else []
    if columns["id"] is None:
        table = table.append_column("__row__", pa.array([str(i) for i in range(table.num_rows)], pa.string()))
        columns_read = {**columns, "id": "__row__"}
    else:
        columns_read = columns
    if keep is not None:
        table = table.filter(keep)
    info = {**info, "rows": table.num_rows, "columns": columns}
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise AuditError(f"expected at least one example in {name}, got 0 rows; pick another file or split")
    ids = [str(v) for v in table.column(columns_read["id"]).to_pylist()]
    repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
    if repeated:
        raise AuditError(f"expected unique ids in column {columns['id']!r}, got {repeated[0]!r} more than once; "
                         "pass --id-column for another column")
    labels, label_names = None, None
    if columns["label"] is not None:
        labels, label_names = _labels(table.column(columns["label"]).to_pylist(), columns["label"],
                                      class_names.get(columns["label"]), pool)
    return TextData(
        name=name, texts=column_strings(table, columns["text"]), ids=ids, labels=labels, label_names=label_names,
        text_pairs=column_strings(table, columns["text_pair"]) if columns["text_pair"] else None, info=info,
    )


def load_data(
    spec: str, *, split: str | None = None, text_column: str | None = None, text_pair_column: str | None = None,
    label_column: str | None = None, id_column: str | None = None, limit: int | None = None,
) -> TextData:
    """Load text classification examples from a file, a built-in data set or the Hugging Face Hub.

    Args:
        spec: a file path, ``builtin[:split]`` or ``hub_name[:config][:split]`` (see the module docstring).
        split: overrides the spec's split; for a local file, keeps the rows whose ``split`` column holds
            it, or the rows a hash split gives it where the file has no such column (None: the whole file).
        text_column, text_pair_column, label_column, id_column: column names; auto-detected when None.
        limit: keep the first ``limit`` examples of the split (a built-in split is already shuffled).

    Returns:
        TextData; labels are int class indices (names in ``label_names`` when the data names them).

    Raises:
        AuditError: limit < 1; missing or unreadable file; a split the file has no rows for;
        unknown built-in or split; a built-in that cannot be fetched; an unreachable Hub; ambiguous or
        missing columns; empty text or label cells; repeated ids; 0 rows.

    >>> d = load_data("vader-movies:dev", limit=3)  # doctest: +SKIP
    >>> d.name, len(d), d.label_names  # doctest: +SKIP
    ('vader-movies:dev', 3, ['negative', 'positive'])
    """
    if limit is not None and limit < 1:
        raise AuditError(f"expected --limit >= 1, got {limit}; pass a positive number of examples or no limit")
    columns = (text_column, text_pair_column, label_column, id_column)
    path = Path(spec).expanduser()
    if path.is_dir():
        chosen_split = split or DEFAULT_SPLIT
        table, class_names, info = read_folder(path, chosen_split)
        return _to_text_data(table, f"{path.name}:{chosen_split}", info, class_names, limit, *columns)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        table, class_names = read_file(path)
        info = {"kind": "file", "source": str(path.resolve()), "sha256": file_sha256(path), "split": split}
        if split is None:
            return _to_text_data(table, path.stem, info, class_names, limit, *columns)
        chosen = _resolve_columns(table.column_names, *columns)
        keys = [str(v) for v in table.column(chosen["text"]).to_pylist()]
        if chosen["text_pair"] is not None:
            keys = [f"{k}\0{v}" for k, v in zip(keys, table.column(chosen["text_pair"]).to_pylist())]
        keep, info["split"] = select_split(table, split, path, keys)
        return _to_text_data(table, f"{path.stem}:{info['split']}", info, class_names, limit, *columns, keep)
    name, _, spec_split = spec.partition(":")
    if name in builtin_datasets():
        chosen_split = split or spec_split or DEFAULT_SPLIT
        table, info = read_builtin(name, chosen_split)
        class_names = {"label": list(builtin_datasets()[name].classes)}
        return _to_text_data(table, f"{name}:{info['split']}", info, class_names, limit, *columns)
    hub_name, config, hub_split = parse_hub_spec(spec)
    chosen_split = split or hub_split or DEFAULT_SPLIT
    table, class_names, info = read_hub(hub_name, config, chosen_split)
    return _to_text_data(table, ":".join(p for p in (hub_name, config, chosen_split) if p), info, class_names,
                         limit, *columns)


def calibration_spec(data: str | TextData | None, settings: CompareSettings) -> str:
    """The calibration data of ``--calibrate``: ``--calibration-data``, else the dev split of a built-in data set
    or text corpus.

    Raises:
        AuditError: neither is available.
    """
    if settings.calibration_data is not None:
        return settings.calibration_data
    name = data.partition(":")[0] if isinstance(data, str) else None
    if name in builtin_datasets() or name in text_corpora():
        return f"{name}:dev"
    raise AuditError(f"expected --calibration-data (or a built-in data set, whose dev split is used) with --calibrate, "
                     f"got {data if isinstance(data, str) else 'loaded data'}; pass held-out labelled data to fit "
                     "the temperatures on")
