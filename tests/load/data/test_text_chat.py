"""Chat, packing, token limits and hash splits of LM text (audit.load.data.text): the SmolLM2 tokenizer of the LM
fixtures (its ChatML template) and the fixture teacher; expectations from the tokenizer's own ``apply_chat_template``,
a hand-written walk of ChatML's token ids, hashlib and the model run on each document alone."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from chatml import assistant_positions
from transformers import AutoTokenizer

from audit.errors import AuditError, AuditWarning
from audit.load.data.builtin import SPLIT_SEED
from audit.load.data.text import Documents, document_tokens, pack_windows, read_documents, tokenize_windows
from audit.package import fixtures_path

TEACHER = fixtures_path() / "lm-teacher"
HAMLET = [
    [{"role": "user", "content": "Who's there?"}, {"role": "assistant", "content": "Nay, answer me: stand, and unfold "
                                                                                   "yourself."},
     {"role": "user", "content": "Long live the king!"}, {"role": "assistant", "content": "Bernardo?"}],
    [{"role": "system", "content": "You are Horatio."}, {"role": "user", "content": "What, is Horatio there?"},
     {"role": "assistant", "content": "A piece of him."}],
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TEACHER)


def test_chat_scores_the_assistant_replies_through_their_end_of_turn(tokenizer):
    documents = Documents("chat", ["a", "b"], ["0", "1"], messages=HAMLET)
    for turns, (tokens, scored) in zip(HAMLET, document_tokens(documents, tokenizer)):
        whole = tokenizer.apply_chat_template(turns, tokenize=True)["input_ids"]
        assert tokens == whole  # piece by piece, the same ids as the template tokenised at once
        assert [i for i, s in enumerate(scored) if s] == assistant_positions(whole, tokenizer)
        replies = "".join(t["content"] + "<|im_end|>" for t in turns if t["role"] == "assistant")
        assert tokenizer.decode([t for t, s in zip(tokens, scored) if s]) == replies


@pytest.mark.parametrize("max_length, stride", [(8, 4), (16, 15), (512, 256)])
def test_chat_windows_score_each_reply_token_once(tokenizer, max_length, stride):
    documents = Documents("chat", ["a", "b"], ["0", "1"], messages=HAMLET)
    windows = tokenize_windows(documents, tokenizer, max_length=max_length, stride=stride)
    docs, positions = windows.scored()
    expected = {(d, p) for d, turns in enumerate(HAMLET)
                for p in assistant_positions(tokenizer.apply_chat_template(turns)["input_ids"], tokenizer)}
    got = list(zip(docs.tolist(), positions.tolist()))
    assert len(got) == len(set(got)) and set(got) == expected


def _tokenizer_copy(tmp_path, template: str | None):
    """The fixture tokenizer saved again with another chat template (None: without one)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TEACHER / name, folder / name)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return AutoTokenizer.from_pretrained(folder)


def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path):
    bare = _tokenizer_copy(tmp_path, None)
    assert not bare.chat_template
    with pytest.raises(AuditError, match="expected a tokenizer with a chat template to render the messages of chat"):
        tokenize_windows(Documents("chat", ["a"], ["0"], messages=HAMLET[:1]), bare, max_length=32)


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    # renders only the last turn: the conversation's beginning is no prefix of the whole
    last_only = _tokenizer_copy(tmp_path, "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(AuditError, match="render conversation '0' of chat turn by turn"):
        document_tokens(Documents("chat", ["a"], ["0"], messages=HAMLET[:1]), last_only)


@pytest.mark.parametrize("cell, message", [
    ("Who's there?", "expected a non-empty list of messages in column 'messages' of chat, got \"Who's there?\" at row 1"),
    ([], "expected a non-empty list of messages"),
    (["Who's there?"], "expected messages with a string role and content"),
    ([{"role": "user"}, {"role": "assistant", "content": "x"}], "expected messages with a string role and content"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": 4}], "string role and content"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected an assistant message after"),
    ([{"role": "assistant", "content": "alone"}], "expected an assistant message after the first"),
])
def test_bad_messages_are_refused_with_the_row(tmp_path, cell, message):
    # a json array of rows, read row by row: one good conversation, then the bad cell
    (tmp_path / "chat.json").write_text(json.dumps([{"messages": HAMLET[1]}, {"messages": cell}]))
    (tmp_path / "alone.jsonl").write_text(json.dumps({"messages": cell}) + "\n")
    for path, row in ((tmp_path / "chat.json", 1), (tmp_path / "alone.jsonl", 0)):
        try:
            read_documents(str(path))
        except AuditError as err:
            refused = str(err)
        else:
            raise AssertionError(f"{cell!r} in {path.name} was read")
        if "well-formed" in refused:  # pyarrow cannot type a column of lists and strings together: refused too
            continue
        assert "\n" not in refused and f"row {row}" in refused, refused
        assert message.replace(" of chat,", f" of {path.stem},").replace("row 1", f"row {row}") in refused, refused


def test_messages_are_detected_and_keep_their_turns(tmp_path):
    rows = [{"id": f"c{i}", "messages": turns, "prompt": "ignored"} for i, turns in enumerate(HAMLET)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    documents = read_documents(str(tmp_path / "chat.jsonl"))
    assert documents.messages == HAMLET and documents.ids == ["c0", "c1"] and documents.prompts is None
    assert documents.info["columns"]["messages"] == "messages"
    assert json.loads(documents.texts[0]) == HAMLET[0]
    text = read_documents(str(tmp_path / "chat.jsonl"), text_column="prompt")  # an explicit column wins
    assert text.messages is None and text.texts == ["ignored", "ignored"]


# ---------------------------------------------------------------------------------------------- hash split


def expected_splits(keys: list[str]) -> list[str]:
    """80/10/10 over the distinct keys in sha256(seed, key) order, copies following their first: written again here."""
    order = sorted(range(len(keys)), key=lambda i: (hashlib.sha256(f"{SPLIT_SEED}\0{keys[i]}".encode()).digest(), i))
    n, split_of, out = len(keys), {}, [None] * len(keys)
    for rank, i in enumerate(order):
        split_of.setdefault(keys[i], "train" if rank < round(0.8 * n) else "dev" if rank < round(0.9 * n) else "test")
        out[i] = split_of[keys[i]]
    return out


def test_a_file_without_a_split_column_is_split_by_prompt_with_a_warning(tmp_path):
    rows = [{"prompt": f"Q{i % 37}: who goes there?", "completion": f"answer {i}"} for i in range(60)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = expected_splits([r["prompt"] for r in rows])
    got = {}
    for split in ("train", "dev", "validation", "test"):
        with pytest.warns(AuditWarning, match=r"sft.jsonl has no 'split' column: its 60 rows are split 80/10/10"):
            got[split] = read_documents(str(tmp_path / "sft.jsonl"), split=split)
    assert got["dev"].texts == got["validation"].texts
    for split in ("train", "dev", "test"):
        assert got[split].texts == [r["completion"] for r, s in zip(rows, expected) if s == split]
        assert got[split].ids == [str(i) for i, s in enumerate(expected) if s == split]
    prompts = {s: set(got[s].prompts) for s in ("train", "dev", "test")}
    assert not (prompts["train"] & prompts["dev"] or prompts["train"] & prompts["test"] or prompts["dev"] & prompts["test"])
    with pytest.raises(AuditError, match="expected a split among train, dev, test for sft.jsonl"):
        read_documents(str(tmp_path / "sft.jsonl"), split="holdout")


# ---------------------------------------------------------------------------------------------- --limit-tokens


def test_limit_tokens_takes_whole_windows_up_to_the_limit(tokenizer):
    texts = [("To be, or not to be, that is the question: " * (i % 4 + 1)).strip() for i in range(40)]
    documents = Documents("verse", texts, [str(i) for i in range(40)])
    full = tokenize_windows(documents, tokenizer, max_length=16, stride=8)
    per_window = (full.targets != -100).sum(1).cumsum(0)
    for limit in (1, 37, 250, int(per_window[-1]), 10 ** 6):
        cut = tokenize_windows(documents, tokenizer, max_length=16, stride=8, limit_tokens=limit)
        k = len(cut)
        assert torch.equal(cut.input_ids, full.input_ids[:k]) and torch.equal(cut.targets, full.targets[:k])
        taken = cut.info["tokens_scored"]
        assert taken == int(per_window[k - 1])
        assert taken >= limit or k == len(full)  # enough, or everything
        assert k == 1 or int(per_window[k - 2]) < limit  # one window fewer would not be
        assert cut.info["documents"] == int(cut.sequence_ids[-1]) + 1 and cut.info["limit_tokens"] == limit
    with pytest.raises(AuditError, match="expected --limit-tokens >= 1"):
        tokenize_windows(documents, tokenizer, max_length=16, limit_tokens=0)


# ---------------------------------------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def mixed_windows(tokenizer):
    """Prompt/completion pairs of many lengths (some longer than a window) as windows of 32 tokens."""
    g = torch.Generator().manual_seed(0)
    words = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()
    prompts, completions = [], []
    for i in range(30):
        n = int(torch.randint(1, 8 if i % 7 else 40, (1,), generator=g))
        prompts.append("Q: " + " ".join(words[int(j)] for j in torch.randint(len(words), (n,), generator=g)) + "\n")
        completions.append("A: " + " ".join(words[int(j)] for j in torch.randint(len(words), (n + 2,), generator=g)))
    documents = Documents("pairs", completions, [str(i) for i in range(30)], prompts=prompts)
    return documents, tokenize_windows(documents, tokenizer, max_length=32, stride=31)


def test_packing_keeps_every_scored_token_and_fills_rows(mixed_windows):
    _, windows = mixed_windows
    packed = pack_windows(windows)
    lengths = windows.attention_mask.sum(1)
    short = [w for w in range(len(windows)) if (windows.sequence_ids == windows.sequence_ids[w]).sum() == 1
             and lengths[w] < 32]
    assert packed.info["packed"]["documents"] == len(short) > 2
    assert len(packed) == len(windows) - len(short) + packed.info["packed"]["rows"] < len(windows)
    # the same (document, position, target) triples, each once
    def triples(w):
        docs, positions = w.scored()
        return sorted(zip(docs.tolist(), positions.tolist(), w.targets[w.targets != -100].tolist()))
    assert triples(packed) == triples(windows)
    # best-fit decreasing: at most 11/9 of the fewest rows that could hold the tokens, plus one
    bound = -(-int(lengths[short].sum()) // 32)
    assert packed.info["packed"]["rows"] <= bound * 11 // 9 + 1
    for r in range(len(packed)):
        ids, docs, pos = packed.input_ids[r], packed.documents[r], packed.position_ids[r]
        for d in docs.unique().tolist():
            if d < 0:
                continue
            at = (docs == d).nonzero().flatten()
            assert pos[at].tolist() == list(range(len(at)))  # each document's positions from 0, contiguous
            assert (at.diff() == 1).all()
            alone = [w for w in range(len(windows)) if int(windows.sequence_ids[w]) == d]
            if len(alone) == 1:
                assert ids[at].tolist() == windows.input_ids[alone[0], :len(at)].tolist()
        pad = (docs == -1).nonzero().flatten()
        assert pos[pad].tolist() == list(range(len(pad)))  # the padding is a sequence of its own
        assert (packed.attention_mask[r] == (docs >= 0).long()).all()


def test_packed_rows_give_each_document_its_own_logits(mixed_windows):
    """The fixture teacher on packed rows (position ids, no mask) gives at every scored position the logits of the
    document run alone: attention never crosses documents."""
    from audit.load.causal_lm import load_causal_lm

    documents, windows = mixed_windows
    packed = pack_windows(windows)
    model = load_causal_lm(str(TEACHER)).model
    torch.manual_seed(0)
    alone = {}  # (document, position) -> logits of its window run by itself
    with torch.no_grad():
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits
        for w in range(len(windows)):
            length = int(windows.attention_mask[w].sum())
            out = model(input_ids=windows.input_ids[w:w + 1, :length], use_cache=False).logits[0]
            for i, p in enumerate(windows.positions[w, :length].tolist()):
                if p >= 0:
                    alone[(int(windows.sequence_ids[w]), p)] = out[i]
    docs, positions = packed.scored()
    expected = torch.stack([alone[key] for key in zip(docs.tolist(), positions.tolist())])
    assert len(alone) == len(expected) == int((windows.targets != -100).sum())
    torch.testing.assert_close(logits[packed.targets != -100].double(), expected.double(), atol=2e-4, rtol=1e-4)
