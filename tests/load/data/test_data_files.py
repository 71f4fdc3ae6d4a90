"""load_data on local files, folders and Hub names: formats, column detection, labels, ids, limit, errors."""

import csv
import json
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditError
from audit.load.data import TextData, load_data

RECORDS = [
    {"id": "a1", "text": 'He said "fine", then left', "label": "pos"},
    {"id": "a2", "text": "dull, slow", "label": "neg"},
    {"id": "a3", "text": "ok", "label": "neutral"},
    {"id": "a4", "text": "great fun", "label": "pos"},
]


def write(path, records):
    """Write records (dicts with the same keys) in the format named by the suffix, as a user's tool would."""
    keys = list(records[0])
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(records)
    elif path.suffix == ".tsv":  # GLUE style: no quoting at all
        lines = ["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


FORMATS = [".csv", ".tsv", ".jsonl", ".json", ".parquet"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_string_labels_auto_columns(tmp_path, suffix):
    d = load_data(str(write(tmp_path / f"reviews{suffix}", RECORDS)))
    assert d.name == "reviews"
    assert d.texts == [r["text"] for r in RECORDS]
    assert d.ids == ["a1", "a2", "a3", "a4"]
    assert d.label_names == ["neg", "neutral", "pos"]
    assert d.labels == [2, 0, 1, 2]
    assert d.text_pairs is None and len(d) == 4
    assert d.info["columns"] == {"text": "text", "text_pair": None, "label": "label", "id": "id"}
    assert d.info["kind"] == "file" and d.info["source"] == str(tmp_path / f"reviews{suffix}")
    assert len(d.info["sha256"]) == 64


@pytest.mark.parametrize("suffix", FORMATS)
def test_int_labels_pairs_and_explicit_columns(tmp_path, suffix):
    records = [{"uid": 10 + i, "first": f"p{i}", "second": f"h{i}", "gold": i % 3, "note": "x"} for i in range(5)]
    path = write(tmp_path / f"nli{suffix}", records)
    d = load_data(str(path), text_column="first", text_pair_column="second", label_column="gold", id_column="uid")
    assert d.texts == [f"p{i}" for i in range(5)] and d.text_pairs == [f"h{i}" for i in range(5)]
    assert d.labels == [0, 1, 2, 0, 1] and d.label_names is None
    assert d.ids == [str(10 + i) for i in range(5)]


@pytest.mark.parametrize("suffix", FORMATS)
def test_auto_pair_and_row_position_ids(tmp_path, suffix):
    records = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2} for i in range(3)]
    d = load_data(str(write(tmp_path / f"x{suffix}", records)))
    assert d.texts == ["p0", "p1", "p2"] and d.text_pairs == ["h0", "h1", "h2"]
    assert d.ids == ["0", "1", "2"] and d.labels == [0, 1, 0]


def test_explicit_text_column_takes_no_implicit_pair(tmp_path):
    records = [{"sentence1": "a", "sentence2": "b", "label": 0}]
    d = load_data(str(write(tmp_path / "x.jsonl", records)), text_column="sentence2")
    assert d.texts == ["b"] and d.text_pairs is None


def test_question_sentence_pair_and_case_insensitive_names(tmp_path):
    records = [{"Question": "why?", "Sentence": "because.", "IDX": 7, "Label": "entailment"}]
    d = load_data(str(write(tmp_path / "qnli.jsonl", records)))
    assert (d.texts, d.text_pairs, d.ids, d.labels, d.label_names) == (
        ["why?"], ["because."], ["7"], [0], ["entailment"])


def test_unlabelled_data(tmp_path):
    d = load_data(str(write(tmp_path / "u.csv", [{"review": "nice"}, {"review": "bad"}])))
    assert d.labels is None and d.label_names is None and d.texts == ["nice", "bad"]


def test_all_minus_one_labels_mean_unlabelled(tmp_path):
    d = load_data(str(write(tmp_path / "t.jsonl", [{"text": "a", "label": -1}, {"text": "b", "label": -1}])))
    assert d.labels is None


def test_csv_keeps_leading_zero_ids_quotes_newlines_and_bom(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('\ufeffid,text,label\n007,"two\nlines, ""quoted""",1\n010,café ☕,0\n', encoding="utf-8")
    d = load_data(str(path))
    assert d.ids == ["007", "010"]
    assert d.texts == ['two\nlines, "quoted"', "café ☕"]
    assert d.labels == [1, 0] and d.label_names is None


def test_integral_float_labels_are_indices(tmp_path):
    d = load_data(str(write(tmp_path / "f.jsonl", [{"text": "a", "label": 1.0}, {"text": "b", "label": 0.0}])))
    assert d.labels == [1, 0]


def test_parquet_classlabel_names(tmp_path):
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": ["meh", "wow", "yay"], "label": [0, 1, 1]}, features=features)
    path = tmp_path / "sst.parquet"
    ds.to_parquet(str(path))
    d = load_data(str(path))
    assert d.labels == [0, 1, 1] and d.label_names == ["neg", "pos"]


def test_folder_of_split_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    write(folder / "train.csv", RECORDS)
    write(folder / "test.csv", RECORDS[:2])
    d = load_data(str(folder))
    assert d.name == "corpus:test" and d.texts == [r["text"] for r in RECORDS[:2]] and d.labels == [1, 0]
    assert len(load_data(str(folder), split="train")) == 4


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_split_column_of_a_file(tmp_path, suffix):
    records = [{**r, "split": s} for r, s in zip(RECORDS, ["train", "validation", "train", "test"], strict=True)]
    path = str(write(tmp_path / f"all{suffix}", records))
    train = load_data(path, split="train")
    assert train.name == "all:train" and train.ids == ["a1", "a3"] and train.info["rows"] == 2
    dev = load_data(path, split="dev")
    assert dev.ids == ["a2"] and dev.info["split"] == "validation"
    # class names and indices come from the whole file, so every split and limit agree on them
    assert train.label_names == dev.label_names == ["neg", "neutral", "pos"]
    assert (train.labels, dev.labels) == ([2, 1], [0])
    head = load_data(path, split="train", limit=1)
    assert head.ids == ["a1"] and head.labels == [2] and head.label_names == train.label_names
    assert len(load_data(path)) == 4


def test_row_position_ids_count_rows_of_the_whole_file(tmp_path):
    records = [{"text": f"t{i}", "split": s} for i, s in enumerate(["test", "train", "test"])]
    assert load_data(str(write(tmp_path / "x.csv", records)), split="test").ids == ["0", "2"]


def test_folder_dev_split_is_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    write(folder / "train.jsonl", RECORDS)
    write(folder / "dev.jsonl", RECORDS[2:])
    d = load_data(str(folder), split="dev")
    assert d.ids == ["a3", "a4"] and d.info["split"] == "validation" and d.info["kind"] == "folder"


@pytest.mark.parametrize("limit", [1, 3, 4, 100])
def test_limit_keeps_the_first_rows(tmp_path, limit):
    d = load_data(str(write(tmp_path / "x.jsonl", RECORDS)), limit=limit)
    assert d.ids == ["a1", "a2", "a3", "a4"][:limit]
    assert d.info["rows"] == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from('\r\n",\t '),
                                  min_size=1), st.integers(0, 4)), min_size=1, max_size=8))
def test_csv_and_jsonl_round_trip_any_text(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("rt")
    records = [{"text": t, "label": y} for t, y in rows]
    for suffix in (".csv", ".jsonl"):
        d = load_data(str(write(folder / f"x{suffix}", records)))
        assert d.texts == [t for t, _ in rows]
        assert d.labels == [y for _, y in rows]


def test_textdata_checks_lengths():
    with pytest.raises(AuditError, match="expected 2 labels"):
        TextData("x", ["a", "b"], ["0", "1"], [0], None)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one(tmp_path, limit):
    with pytest.raises(AuditError, match="expected --limit >= 1"):
        load_data(str(write(tmp_path / "x.jsonl", RECORDS)), limit=limit)


ONE = [{"text": "a"}]


@pytest.mark.parametrize(
    ("filename", "records", "kwargs", "message"),
    [
        ("missing.csv", None, {}, "got no such file"),
        ("x.csv", RECORDS, {"split": "eval"}, r"expected a split among train, dev, test for x.csv, which has no 'split'"),
        ("x.csv", [{"text": "a", "split": "train"}], {"split": "test"}, r"among \['train'\] in x.csv, got 'test'"),
        ("x.csv", [{"text": "a", "sentence": "b"}], {}, r"several candidates \['text', 'sentence'\]"),
        ("x.csv", [{"body": "a", "y": 1}], {}, r"columns \['body', 'y'\], got none; pass --text-column"),
        ("x.csv", [{"body": "a"}], {"text_column": "txt"}, r"'txt' among the columns \['body'\]"),
        ("x.csv", ONE, {"label_column": "y"}, "pass --label-column"),
        ("x.csv", ONE, {"id_column": "uid"}, "pass --id-column"),
        ("x.csv", ONE, {"text_pair_column": "b"}, "pass --text-pair-column"),
        ("x.csv", [{"text": "a", "label": 1, "target": 0}], {}, "pass --label-column"),
        ("x.csv", [{"text": "a", "id": 1, "idx": 0}], {}, "pass --id-column"),
        ("x.csv", [{"text": "a", "y": 1}], {"label_column": "text"}, "expected distinct columns"),
        ("x.tsv", [{"text": "a", "label": 1}], {"text_column": "label"}, "expected distinct columns"),
        ("x.csv", [{"text": "a", "label": ""}], {}, "got '' at row 0"),
        ("x.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": None}], {}, "got None at row 1"),
        ("x.jsonl", [{"text": None, "label": 1}], {}, "expected text in every row"),
        ("x.jsonl", [{"text": "a", "label": 0.5}], {}, "integer class indices or class names"),
        ("x.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": -2}], {}, "got -2"),
        ("x.jsonl", [{"text": "a", "id": 3}, {"text": "b", "id": 3}], {}, "expected unique ids"),
        # found by the fuzzer: a list or an object as the label was a pyarrow traceback
        ("x.jsonl", [{"text": "", "label": []}], {}, r"one label per row in column 'label', got values of type list"),
        ("x.jsonl", [{"text": "a", "label": {"x": 1}}], {}, "one label per row in column 'label', got values of type struct"),
    ],
)
def test_input_errors(tmp_path, filename, records, kwargs, message):
    path = tmp_path / filename if records is None else write(tmp_path / filename, records)
    with pytest.raises(AuditError, match=message):
        load_data(str(path), **kwargs)


def test_unsupported_suffix_and_unparsable_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AuditError, match="expected a data file ending in .csv"):
        load_data(str(tmp_path / "notes.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(AuditError, match="expected a well-formed jsonl file"):
        load_data(str(tmp_path / "bad.jsonl"))
    (tmp_path / "ragged.csv").write_text("text,label\na,1,extra\n")
    with pytest.raises(AuditError, match="expected a well-formed csv file"):
        load_data(str(tmp_path / "ragged.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(AuditError, match="expected a header row"):
        load_data(str(tmp_path / "empty.csv"))
    (tmp_path / "dup.csv").write_text("text,text\na,b\n")
    with pytest.raises(AuditError, match="expected distinct column names"):
        load_data(str(tmp_path / "dup.csv"))


def test_zero_rows(tmp_path):
    (tmp_path / "header_only.csv").write_text("text,label\n")
    with pytest.raises(AuditError, match="expected at least one example in header_only, got 0 rows"):
        load_data(str(tmp_path / "header_only.csv"))


@pytest.mark.parametrize(
    ("spec", "shown"),
    [("glue:sst2", "glue:sst2:test"), ("imdb:train", "imdb:train"),
     ("glue:mnli:validation_matched", "glue:mnli:validation_matched"), ("someone/data", "someone/data:test")],
)
def test_hub_offline_fails_fast_with_advice(spec, shown):
    start = time.perf_counter()
    with pytest.raises(AuditError, match="could not load data set .* from the Hugging Face Hub") as err:
        load_data(spec)
    assert time.perf_counter() - start < 5
    assert shown in str(err.value) and "bbc-news" in str(err.value) and "local csv" in str(err.value)


def test_a_folder_without_the_split_names_the_splits_it_has_and_writes_nothing(tmp_path, monkeypatch):
    """Issue 26: a folder with only train.csv went through `datasets`, which wrote into its cache
    (~/.cache/huggingface/datasets), and the refusal did not suggest --split train."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    write(folder / "train.csv", RECORDS)
    with pytest.raises(AuditError, match=r"expected a test split in the folder .*corpus, got only train \(train.csv\); "
                                         "pass --split train"):
        load_data(str(folder))
    assert len(load_data(str(folder), split="train")) == 4  # the fix it names works
    assert not (tmp_path / "hf").exists()  # nothing written into the Hugging Face cache, refused or read
    assert sorted(p.name for p in folder.iterdir()) == ["train.csv"]


def test_folder_files_of_one_split_are_read_as_single_files_are(tmp_path):
    folder = tmp_path / "corpus"
    for split in ("test", "train"):
        (folder / split).mkdir(parents=True)
    write(folder / "test" / "part-0.jsonl", RECORDS[:2])
    write(folder / "test" / "part-1.jsonl", RECORDS[2:])
    write(folder / "train" / "all.csv", [{"id": "007", "text": "t", "label": "pos"}])
    (folder / "notes.txt").write_text("not data")
    d = load_data(str(folder))
    assert d.ids == ["a1", "a2", "a3", "a4"] and d.labels == [2, 0, 1, 2] and d.label_names == ["neg", "neutral", "pos"]
    assert d.info["files"] == ["test/part-0.jsonl", "test/part-1.jsonl"] and len(d.info["sha256"]) == 64
    assert load_data(str(folder), split="train").ids == ["007"]  # a csv cell read as text, as in a single file
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not data")
    with pytest.raises(AuditError, match="expected data files .* named by split in the folder"):
        load_data(str(empty))


def test_malformed_hub_spec():
    with pytest.raises(AuditError, match="expected a data spec name"):
        load_data("a:b:c:d")
