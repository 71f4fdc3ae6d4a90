"""Reading a local table file, a folder of them by split, or a Hugging Face Hub data set into a pyarrow Table.

Cells are read as stored, except csv/tsv ones, which are all read as strings (ids like "007" keep
their zeros; :func:`audit.load.data.load_data` reads all-integer label strings as class indices). tsv has
no quoting (GLUE style: a quote is an ordinary character); csv follows RFC 4180 quoting.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from audit.errors import AuditError, warn
from audit.load.data.builtin import SPLITS, assign_splits, builtin_datasets
from audit.load.hub import hub_unreachable

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
KNOWN_SPLITS = ("train", "validation", "dev", "test")
SPLIT_ALIASES = {"dev": "validation", "validation": "dev"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_utf8(path: Path) -> None:
    """Refuse a text file that is not UTF-8, naming the byte offset of the first bad byte.

    Raises:
        AuditError: a byte sequence that is not UTF-8 (or a file cut inside a character).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                where = offset - pending + err.start
                raise AuditError(f"expected UTF-8 text in {path}, got a byte that is not UTF-8 at byte offset {where}; "
                                 "re-save the file as UTF-8") from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise AuditError(f"expected UTF-8 text in {path}, got a file cut inside a character at byte offset "
                         f"{offset - len(decoder.getstate()[0])}; re-save the file as UTF-8") from None


def select_split(table: pa.Table, split: str, path: Path, keys: list[str]) -> tuple[pa.Array, str]:
    """Mask of the rows of a file whose ``split`` column equals ``split`` (dev and validation are one split), and
    the split's name.

    A file without a ``split`` column is split as the built-ins are (:func:`audit.load.data.builtin.assign_splits`:
    80/10/10 by a seeded hash of each row's ``keys`` entry, rows of one key together), with a warning saying so.

    Raises:
        AuditError: a split that the file's ``split`` column does not hold, or a name other than train, dev
            (validation) or test for a file without one.
    """
    column = next((c for c in table.column_names if c.lower() == "split"), None)
    if column is None:
        return _hash_split(split, path, keys)
    values = pc.cast(table.column(column), pa.string())
    present = sorted(set(values.to_pylist()) - {None})
    chosen = next((s for s in (split, SPLIT_ALIASES.get(split)) if s in present), None)
    if chosen is None:
        raise AuditError(f"expected a split among {present} in {path.name}, got {split!r}; pass one of those")
    return pc.fill_null(pc.equal(values, chosen), False), chosen


def _hash_split(split: str, path: Path, keys: list[str]) -> tuple[pa.Array, str]:
    chosen = "dev" if split == "validation" else split
    if chosen not in SPLITS:
        raise AuditError(f"expected a split among {', '.join(SPLITS)} for {path.name}, which has no 'split' column "
                         f"and is split as the built-ins are, got {split!r}; pass one of those, or add a 'split' column")
    order, names = assign_splits(keys)
    of_row = [""] * len(keys)
    for row, name in zip(order, names):
        of_row[row] = name
    counts = ", ".join(f"{s} {of_row.count(s)}" for s in SPLITS)
    warn(f"{path.name} has no 'split' column: its {len(keys)} rows are split 80/10/10 by a seeded hash of each "
         f"prompt or text, as the built-ins are ({counts}); add a 'split' column to choose the rows")
    return pa.array([name == chosen for name in of_row], pa.bool_()), chosen


def column_strings(table: pa.Table, column: str) -> list[str]:
    """The values of a text column, each checked to be a string."""
    values = table.column(column).to_pylist()
    for row, v in enumerate(values):
        if not isinstance(v, str):
            raise AuditError(f"expected text in every row of column {column!r}, got {v!r} at row {row}; "
                             "fix or drop that row")
    return values


def _read_delimited(path: Path, delimiter: str) -> pa.Table:
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter=delimiter, quoting=quoting), None)
    if not header:
        raise AuditError(f"expected a header row of column names in {path}, got an empty file; add one")
    if len(set(header)) < len(header):
        raise AuditError(f"expected distinct column names in {path}, got {header}; rename the repeated ones")
    return pa_csv.read_csv(
        path,
        parse_options=pa_csv.ParseOptions(
            delimiter=delimiter, quote_char='"' if delimiter == "," else False, newlines_in_values=delimiter == ","
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )


def _read_json(path: Path) -> pa.Table:
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith("["):
        return pa_json.read_json(path)  # JSON lines under a .json name, as `datasets` accepts
    records = json.loads(path.read_text(encoding="utf-8-sig"))
    if not all(isinstance(r, dict) for r in records):
        raise AuditError(f"expected a JSON array of objects (one per example) in {path}, got other values; "
                         "write one object per example")
    return pa.Table.from_pylist(records)


def _parquet_class_names(schema: pa.Schema) -> dict[str, list[str]]:
    # parquet written by `datasets` stores its Features, ClassLabel names included, in the schema metadata
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    features = json.loads(raw).get("info", {}).get("features", {})
    return {c: f["names"] for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"}


def read_file(path: Path) -> tuple[pa.Table, dict[str, list[str]]]:
    """Read a .csv/.tsv/.jsonl/.json/.parquet file; return the table and ClassLabel names by column.

    Raises:
        AuditError: missing file; unknown suffix; a file that does not parse.
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise AuditError(f"expected a data file ending in {', '.join(FILE_SUFFIXES)}, got {path}; "
                         "convert it to one of those")
    if not path.is_file():
        raise AuditError(f"expected a data file at {path}, got no such file; check the path")
    if suffix != ".parquet":
        check_utf8(path)
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
            return table, _parquet_class_names(table.schema)
        if suffix == ".jsonl":
            return pa_json.read_json(path), {}
        if suffix == ".json":
            return _read_json(path), {}
        return _read_delimited(path, "," if suffix == ".csv" else "\t"), {}
    except (pa.ArrowException, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AuditError(f"expected a well-formed {suffix[1:]} file, got {path} that does not parse "
                         f"({str(e).splitlines()[0]}); fix the file") from e


def folder_splits(path: Path) -> dict[str, list[Path]]:
    """The data files of a folder by split, named as ``datasets`` names them (``train.csv``, ``dev.jsonl`` or
    ``validation/part-0.parquet``, ``test-00000-of-00001.parquet``; a folder whose names name no split is all
    ``train``); only the suffixes of :data:`FILE_SUFFIXES`. Nothing is read or written.

    Raises:
        AuditError: a folder with no data file.
    """
    # datasets' own rules for split names, which resolve names only: nothing is read, no cache is written
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(path))
        files = DataFilesDict.from_patterns(patterns, base_path=str(path), allowed_extensions=list(FILE_SUFFIXES))
    except FileNotFoundError:
        files = {}
    splits = {str(split): [Path(f).resolve() for f in found] for split, found in files.items() if found}
    if not splits:
        raise AuditError(f"expected data files ({', '.join(FILE_SUFFIXES)}) named by split in the folder {path} "
                         "(train.csv, test.jsonl, ...), got none; add them, or pass one data file")
    return splits


def read_folder(path: Path, split: str) -> tuple[pa.Table, dict[str, list[str]], dict]:
    """The rows of split ``split`` of a folder of data files (:func:`folder_splits`; dev and validation are one
    split), read as :func:`read_file` reads one file, without ``datasets``' cache; ClassLabel names by column, and
    info.

    Raises:
        AuditError: no data file; no file of that split (naming the splits there are and ``--split``); a file that
            does not parse; files of one split whose columns do not concatenate.
    """
    splits = folder_splits(path)
    root = path.resolve()
    chosen = next((s for s in (split, SPLIT_ALIASES.get(split)) if s in splits), None)
    if chosen is None:
        present = sorted(splits)
        names = ", ".join(str(f.relative_to(root)) for s in present for f in splits[s])
        only = "only " if len(present) == 1 else ""
        raise AuditError(f"expected a {split} split in the folder {path}, got {only}{', '.join(present)} ({names}); "
                         f"pass --split {present[0]}, or add a {split} file (e.g. {split}.jsonl)")
    tables, class_names = [], {}
    for file in sorted(splits[chosen]):
        table, names = read_file(file)
        tables.append(table)
        class_names = class_names or names
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowException as e:
        raise AuditError(f"expected the {chosen} files of {path} to share their columns, got ones that do not "
                         f"concatenate ({str(e).splitlines()[0]}); give them the same columns") from e
    digest = hashlib.sha256()
    for file in sorted(splits[chosen]):
        digest.update(f"{file.relative_to(root)}:{file_sha256(file)}\n".encode())
    info = {"kind": "folder", "source": str(path), "config": None, "split": chosen,
            "files": [str(f.relative_to(root)) for f in sorted(splits[chosen])], "sha256": digest.hexdigest()}
    return table, class_names, info


def _load_split(datasets, name: str, config: str | None, split: str):
    # kd-audit says dev where the Hub mostly says validation: try the other name before giving up
    try:
        return datasets.load_dataset(name, config, split=split), split
    except ValueError as e:
        other = SPLIT_ALIASES.get(split)
        if other is None or "split" not in str(e).lower():
            raise
        return datasets.load_dataset(name, config, split=other), other


def read_hub(name: str, config: str | None, split: str) -> tuple[pa.Table, dict[str, list[str]], dict]:
    """``datasets.load_dataset(name, config, split=split)`` as a table, ClassLabel names by column, and info (a
    local folder of data files is :func:`read_folder`'s).

    Raises:
        AuditError: the Hub cannot be reached (offline), or `datasets` cannot load that name/config/split.
    """
    spec = ":".join(p for p in (name, config, split) if p)
    advice = f"pass a local csv/tsv/jsonl/parquet file or a built-in name: {', '.join(builtin_datasets())}"
    if hub_unreachable():
        raise AuditError(f"could not load data set {spec} from the Hugging Face Hub (offline?); {advice}")
    import datasets  # heavy import, only on this path

    try:
        ds, chosen = _load_split(datasets, name, config, split)
    except (OSError, ValueError) as e:  # ConnectionError, DatasetNotFoundError, unknown split or config
        why = str(e).splitlines()[0]
        raise AuditError(f"could not load data set {spec} from the Hugging Face Hub ({why}); {advice}") from e
    names = {col: f.names for col, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    info = {"kind": "hub", "source": name, "config": config, "split": chosen,
            "fingerprint": ds._fingerprint}
    return ds.with_format("arrow")[:], names, info


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``name[:config][:split]`` of a Hub data set as (name, config, split), a lone suffix read as a split when it
    names one.

    Raises:
        AuditError: an empty part or more than three.
    """
    name, *rest = spec.split(":")
    if len(rest) > 2 or not name or not all(rest):
        raise AuditError(f"expected a data spec name[:config][:split], got {spec!r}; "
                         "pass a local file, a built-in name or a Hub name")
    if len(rest) == 2:
        return name, rest[0], rest[1]
    if len(rest) == 1:
        return (name, None, rest[0]) if rest[0] in KNOWN_SPLITS else (name, rest[0], None)
    return name, None, None
