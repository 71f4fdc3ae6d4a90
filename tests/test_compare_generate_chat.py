"""``compare --generate`` on chat data (a ``messages`` column): each student writes the conversation's last reply,
from the conversation rendered by the chat template up to that reply (with the assistant header), on the fixture
LM pair on CPU.

The expected prompt is rendered here with ``apply_chat_template(turns[:last], add_generation_prompt=True)`` and
the completion recomputed with a greedy argmax loop over the fixture student's forward, written here.
"""

from __future__ import annotations

import json

import pytest
import torch
from audit_cli import cli

from audit.compare import compare_lm
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import read_documents
from audit.package import fixtures_path
from audit.report.schema import validate_report
from audit.run.generate import prompt_tokens, stop_tokens
from audit.settings import CompareSettings

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = str(fixtures_path() / "lm-student")
LINES = ["Who's there?", "Nay, answer me: stand, and unfold yourself.", "Long live the king!", "Bernardo?", "He.",
         "You come most carefully upon your hour.", "'Tis now struck twelve; get thee to bed, Francisco.",
         "For this relief much thanks: 'tis bitter cold,", "And I am sick at heart."]

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture
def chats(tmp_path) -> tuple[str, list[list[dict]]]:
    """Conversations of 2 to 4 turns, some with a system turn and one ending in a user turn after the reply."""
    conversations = [
        [{"role": "user", "content": LINES[0]}, {"role": "assistant", "content": LINES[1]}],
        [{"role": "system", "content": "You are a sentry."}, {"role": "user", "content": LINES[2]},
         {"role": "assistant", "content": LINES[3]}, {"role": "user", "content": LINES[4]},
         {"role": "assistant", "content": LINES[5]}],
        [{"role": "user", "content": LINES[6]}, {"role": "assistant", "content": LINES[7]},
         {"role": "user", "content": LINES[8]}],
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"id": f"chat{i}", "messages": m}) + "\n" for i, m in enumerate(conversations)))
    return str(path), conversations


def rendered_prompt(tokenizer, turns: list[dict]) -> str:
    """The turns before the last assistant reply, rendered as a model is given them to reply."""
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    return tokenizer.apply_chat_template(turns[:last], tokenize=False, add_generation_prompt=True)


def greedy(lm, prompt: list[int], max_new_tokens: int) -> list[int]:
    tokens, stops = list(prompt), stop_tokens(lm)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            tokens.append(int(lm.model(input_ids=torch.tensor([tokens])).logits[0, -1].double().argmax()))
            if tokens[-1] in stops:
                break
    return tokens[len(prompt):]


def test_a_conversations_prompt_is_its_rendering_up_to_the_last_reply(chats):
    path, conversations = chats
    tokenizer = load_causal_lm(STUDENT).tokenizer
    prompts = prompt_tokens(read_documents(path), tokenizer, max_length=256, max_new_tokens=8, context=2048)
    for prompt, turns in zip(prompts, conversations):
        text = rendered_prompt(tokenizer, turns)
        assert text.endswith("<|im_start|>assistant\n") and '"role"' not in text  # not the turns' JSON
        assert prompt == tokenizer(text, add_special_tokens=False)["input_ids"]
    # the prompt leaves out the last reply and anything after it
    assert LINES[5] not in tokenizer.decode(prompts[1]) and LINES[3] in tokenizer.decode(prompts[1])
    assert LINES[7] not in tokenizer.decode(prompts[2]) and LINES[8] not in tokenizer.decode(prompts[2])


def test_students_reply_to_the_rendered_conversation(chats):
    path, conversations = chats
    settings = CompareSettings(max_length=256, n_bootstrap=100, progress=False, generate=True, max_new_tokens=6,
                               temperature=0.0, batch_size=2, device="cpu", dtype="fp32")
    report = compare_lm(TEACHER, [STUDENT], path, settings=settings)
    validate_report(report)
    student = load_causal_lm(STUDENT)
    completions = [greedy(student, student.tokenizer(rendered_prompt(student.tokenizer, t),
                                                     add_special_tokens=False)["input_ids"], 6) for t in conversations]
    own = report["pairs"][0]["on_policy"]
    assert own["n"] == sum(map(len, completions)) and own["n_sequences"] == len(conversations)
    shown = {g["id"]: g for g in own["generations"]}
    for i, (turns, completion) in enumerate(zip(conversations, completions)):
        assert shown[f"chat{i}"]["completion"] == student.tokenizer.decode(completion, skip_special_tokens=True)
        assert shown[f"chat{i}"]["prompt"] == rendered_prompt(student.tokenizer, turns)
    assert report["on_policy"]["prompts"].startswith("each conversation rendered by the chat template")


def test_the_cli_generates_on_a_messages_column(chats, tmp_path, capsys):
    out = tmp_path / "report.json"
    code, _, err = cli(capsys, "compare", "--teacher", TEACHER, "--student", STUDENT, "--data", chats[0], "--generate",
                       "--max-new-tokens", "4", "--max-length", "256", "--bootstrap", "100", "--device", "cpu",
                       "--json", str(out), "--no-progress")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["models"]["lm-student"]["on_policy"]["generation"]["prompts"] == 3
