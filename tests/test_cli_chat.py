"""`compare` on prompt/completion and chat data with the fixture LM pair: the built-in dialogue set, a messages
column scored on its assistant tokens, the window that follows the models' context, --limit-tokens, and bad chat
input as one line (exit 2) with nothing written. Token counts are computed here with the tokenizer itself."""

from __future__ import annotations

import json
import shutil

import pytest
from audit_cli import cli
from transformers import AutoTokenizer

from audit.load.data.builtin import read_corpus
from audit.package import fixtures_path

FIXTURES = fixtures_path()
PAIR = ["--teacher", str(FIXTURES / "lm-teacher"), "--student", str(FIXTURES / "lm-student")]
FAST = ["--bootstrap", "20", "--no-progress"]
TURNS = [("Who's there?", "Nay, answer me: stand, and unfold yourself."), ("Long live the king!", "Bernardo?"),
         ("He.", "You come most carefully upon your hour."),
         ("'Tis now struck twelve; get thee to bed, Francisco.", "For this relief much thanks."),
         ("Have you had quiet guard?", "Not a mouse stirring."), ("Well, good night.", "Stand, ho! Who's there?")]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path_factory.getbasetemp() / "kd-audit-cache"))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "lm-teacher")


def context() -> int:
    """The smallest max_position_embeddings of the pair, from their config files."""
    return min(json.loads((FIXTURES / name / "config.json").read_text())["max_position_embeddings"]
               for name in ("lm-teacher", "lm-student"))


def test_the_dialogue_set_scores_the_replies_in_windows_of_the_models_context(tmp_path, capsys, tokenizer):
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", *PAIR, "--data", "shakespeare-dialogue:test", "--limit", "12", *FAST,
                       "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    table, _ = read_corpus("shakespeare-dialogue", "test")
    replies = table.column("completion").to_pylist()[:12]
    assert report["data"]["windows"]["max_length"] == report["settings"]["max_length"] == context() == 2048
    assert report["data"]["columns"]["prompt"] == "prompt" and report["data"]["n_sequences"] == 12
    assert report["data"]["n"] == sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)


def test_limit_tokens_stops_at_the_window_that_reaches_it(tmp_path, capsys, tokenizer):
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", *PAIR, "--data", "shakespeare-dialogue:test", "--limit-tokens", "300", *FAST,
                       "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    table, _ = read_corpus("shakespeare-dialogue", "test")
    taken, documents = 0, 0
    for reply in table.column("completion").to_pylist():  # one window per pair: each fits the context
        if taken >= 300:
            break
        taken += len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        documents += 1
    assert report["data"]["limit_tokens"] == {"requested": 300, "taken": taken, "documents": documents}
    assert report["data"]["n"] == taken and report["data"]["n_sequences"] == documents
    assert report["settings"]["limit_tokens"] == 300


def chat_file(path, cells) -> str:
    path.write_text("".join(json.dumps({"id": f"c{i}", "messages": cell}) + "\n" for i, cell in enumerate(cells)))
    return str(path)


def conversations() -> list[list[dict]]:
    out = []
    for i in range(12):
        a, b = TURNS[i % len(TURNS)], TURNS[(i + 1) % len(TURNS)]
        out.append([{"role": "user", "content": a[0]}, {"role": "assistant", "content": a[1]},
                    {"role": "user", "content": b[0]}, {"role": "assistant", "content": b[1] + "!" * (i // 6)}])
    return out


def test_a_messages_column_is_scored_on_its_assistant_tokens(tmp_path, capsys, tokenizer):
    chats = conversations()
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", *PAIR, "--data", chat_file(tmp_path / "chat.jsonl", chats), *FAST,
                       "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    # each reply's content and its <|im_end|>, tokenised as the template writes them
    expected = sum(len(tokenizer(t["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
                   for chat in chats for t in chat if t["role"] == "assistant")
    assert report["data"]["n"] == expected and report["data"]["n_sequences"] == 12
    assert report["data"]["columns"]["messages"] == "messages"


@pytest.mark.parametrize("cell, message", [
    ("Who's there?", "expected a non-empty list of messages in column 'messages'"),
    ([{"role": "user", "text": "Who's there?"}, {"role": "assistant", "text": "Nay"}], "string role and content"),
    ([{"role": "user", "content": "Who's there?"}], "expected an assistant message after the first"),
])
def test_bad_messages_are_one_line_and_write_nothing(tmp_path, capsys, cell, message):
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", *PAIR, "--data", chat_file(tmp_path / "chat.jsonl", [cell]), *FAST,
                       "--json", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kd-audit: error: ") and message in lines[0], err
    assert not out.exists()


def test_models_without_a_chat_template_are_refused_for_messages(tmp_path, capsys):
    folders = []
    for name in ("lm-teacher", "lm-student"):
        shutil.copytree(FIXTURES / name, tmp_path / name, ignore=shutil.ignore_patterns("chat_template.jinja"))
        folders.append(str(tmp_path / name))
    out = tmp_path / "r.json"
    code, _, err = cli(capsys, "compare", "--teacher", folders[0], "--student", folders[1], "--data",
                       chat_file(tmp_path / "chat.jsonl", conversations()), *FAST, "--json", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "expected a tokenizer with a chat template" in lines[0], err
    assert not out.exists()


def test_a_split_of_a_file_without_a_split_column_is_said_once(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: {q}\n", "completion": a}) + "\n"
                            for i, (q, a) in enumerate(TURNS * 4)))
    code, _, err = cli(capsys, "compare", *PAIR, "--data", str(path), "--split", "train", *FAST)
    assert code == 0, err
    said = [line for line in err.splitlines() if "no 'split' column" in line]
    assert said == ["kd-audit: warning: pairs.jsonl has no 'split' column: its 24 rows are split 80/10/10 by a seeded "
                    "hash of each prompt or text, as the built-ins are (train 19, dev 3, test 2); add a 'split' column "
                    "to choose the rows"]


def test_data_list_names_the_text_corpora(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # names whole, not folded
    code, out, _ = cli(capsys, "data", "list")
    assert code == 0
    for name in ("shakespeare", "shakespeare-dialogue", "vader-movies"):
        assert name in out
