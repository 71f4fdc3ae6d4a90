"""`audit train` (audit.recipes.train_lm) on short prompt/completion and chat documents: packed into shared windows, the
loss on the completion or assistant tokens only. The first step's loss is checked against a float64 loss of the
initial student and the fixture teacher run on each document alone (so packing lets no attention cross documents);
a student whose attention would cross gets a window per document; a file without a split column is split by hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from audit_cli import cli
from chatml import assistant_positions
from scipy.special import log_softmax, rel_entr

from audit.load.causal_lm import load_causal_lm
from audit.load.data.builtin import SPLIT_SEED
from audit.package import fixtures_path
from audit.recipes.train_lm import attends_within_documents, build_lm_student, train_lm
from audit.settings import LMTrainSettings

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = "tiny-llama:hidden=32,layers=1"
LINES = ["Who's there?", "Nay, answer me: stand, and unfold yourself.", "Long live the king!", "Bernardo?", "He.",
         "You come most carefully upon your hour.", "'Tis now struck twelve; get thee to bed, Francisco.",
         "For this relief much thanks: 'tis bitter cold,", "And I am sick at heart.", "Have you had quiet guard?",
         "Not a mouse stirring.", "Well, good night."]

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def teacher():
    return load_causal_lm(TEACHER, name="teacher")


def pairs_file(folder, *, split: bool = True) -> str:
    rows = [{"q": f"FRANCISCO: {LINES[i]}\n", "a": f"BERNARDO: {LINES[(i + 1) % len(LINES)]}"}
            for i in range(len(LINES))]
    if split:
        rows = [{**r, "split": "dev" if i in (3, 8) else "train"} for i, r in enumerate(rows)]
    path = folder / ("pairs.jsonl" if split else "pairs-nosplit.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chats_file(folder) -> str:
    rows = []
    for i in range(0, len(LINES) - 3, 2):
        turns = [{"role": "user", "content": LINES[i]}, {"role": "assistant", "content": LINES[i + 1]},
                 {"role": "user", "content": LINES[i + 2]}, {"role": "assistant", "content": LINES[i + 3]}]
        rows.append({"messages": turns, "split": "dev" if i == 2 else "train"})
    path = folder / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def float64_loss(teacher, settings: LMTrainSettings, documents: list[tuple[list[int], list[int]]], *,
                 kd_weight: float) -> float:
    """The mean over every scored token of (1 - w) CE + w KL(teacher || student) in float64, each document (ids,
    scored positions) run alone through the initial student and the teacher."""
    student = build_lm_student(settings.model, teacher, seed=settings.seed).model.eval()
    terms = []
    with torch.no_grad():
        for ids, scored in documents:
            x = torch.tensor([ids])
            s, t = (m(input_ids=x).logits[0].double().numpy() for m in (student, teacher.model))
            at = np.array(scored) - 1  # the logits before a token predict it
            log_p, log_q = log_softmax(s[at], -1), log_softmax(t[at], -1)
            ce = -log_p[np.arange(len(at)), np.array(ids)[np.array(scored)]]
            kl = rel_entr(np.exp(log_q), np.exp(log_p)).sum(-1)
            terms.append((1 - kd_weight) * ce + kd_weight * kl)
    return float(np.concatenate(terms).mean())


def test_short_pairs_are_packed_and_the_loss_is_on_completions_only(teacher, tmp_path):
    data = pairs_file(tmp_path)
    settings = LMTrainSettings(data=data, model=STUDENT, teacher=TEACHER, out=str(tmp_path / "run"), loss="kd",
                               kd_weight=0.5, temperature=1.0, prompt_column="q", completion_column="a", steps=2,
                               batch_size=64, max_length=48, lr=1e-2, warmup=0.0, device="cpu")
    record = train_lm(settings, teacher=teacher, progress=False)
    train = [json.loads(line) for line in open(data) if json.loads(line)["split"] == "train"]
    assert record["packed"] == {"documents": len(train), "rows": record["windows"]} and record["windows"] < len(train)
    documents = []
    for row in train:
        prompt = teacher.tokenizer(row["q"])["input_ids"]
        completion = teacher.tokenizer(row["a"], add_special_tokens=False)["input_ids"]
        documents.append((prompt + completion, list(range(len(prompt), len(prompt) + len(completion)))))
    assert sum(len(ids) for ids, _ in documents) <= record["windows"] * 48
    expected = float64_loss(teacher, settings, documents, kd_weight=0.5)
    assert record["loss_history"]["values"][0] == pytest.approx(expected, rel=1e-5)
    assert record["dev_data"]["n_sequences"] == 2 and record["dev_data"]["columns"]["prompt"] == "q"
    # the dev audit scores the dev completions' tokens only
    dev = [json.loads(line) for line in open(data) if json.loads(line)["split"] == "dev"]
    assert record["dev"]["n"] == sum(len(teacher.tokenizer(r["a"], add_special_tokens=False)["input_ids"]) for r in dev)


def test_chats_train_on_the_assistant_turns_only(teacher, tmp_path):
    data = chats_file(tmp_path)
    settings = LMTrainSettings(data=data, model=STUDENT, teacher=TEACHER, out=str(tmp_path / "run"), loss="ce",
                               steps=2, batch_size=64, max_length=256, lr=1e-2, warmup=0.0, device="cpu")
    record = train_lm(settings, teacher=teacher, progress=False)
    chats = [json.loads(line)["messages"] for line in open(data) if json.loads(line)["split"] == "train"]
    documents = []
    for turns in chats:
        ids = teacher.tokenizer.apply_chat_template(turns)["input_ids"]
        documents.append((ids, assistant_positions(ids, teacher.tokenizer)))
    assert record["packed"]["documents"] == len(chats) and record["windows"] < len(chats)
    expected = float64_loss(teacher, settings, documents, kd_weight=0.0)
    assert record["loss_history"]["values"][0] == pytest.approx(expected, rel=1e-5)
    assert record["dev_data"]["columns"]["messages"] == "messages"
    # the saved student carries the chat template it was trained with
    assert "chat_template" in json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())


@pytest.fixture(scope="module")
def bloom_student(tmp_path_factory) -> str:
    """A tiny random BLOOM over the fixture tokenizer: ALiBi, no position ids, so attention crosses packed documents."""
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    folder = tmp_path_factory.mktemp("bloom") / "bloom"
    torch.manual_seed(0)
    BloomForCausalLM(BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=1, n_head=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_student_whose_attention_crosses_documents_gets_a_window_per_document(teacher, bloom_student, tmp_path):
    assert attends_within_documents(teacher)
    assert not attends_within_documents(load_causal_lm(bloom_student))
    data = pairs_file(tmp_path)
    settings = LMTrainSettings(data=data, model=bloom_student, teacher=TEACHER, out=str(tmp_path / "run"),
                               prompt_column="q", completion_column="a", steps=2, batch_size=4, max_length=48,
                               device="cpu")
    with pytest.warns(Warning, match="let attention cross packed documents"):
        record = train_lm(settings, teacher=teacher, progress=False, audit_dev=False)
    train = sum(1 for line in open(data) if json.loads(line)["split"] == "train")
    assert record["packed"] is None and record["windows"] == train
    assert all(np.isfinite(record["loss_history"]["values"]))


def test_train_cli_on_a_file_without_a_split_column(tmp_path, capsys):
    data = pairs_file(tmp_path, split=False)
    rows = [json.loads(line) for line in open(data)]
    # the built-ins' rule, by prompt: 80/10/10 of the rows in sha256(seed, prompt) order
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{SPLIT_SEED}\0{rows[i]['q']}".encode()).digest())
    dev = [i for rank, i in enumerate(order) if round(0.8 * len(rows)) <= rank < round(0.9 * len(rows))]
    code, out, err = cli(capsys, "train", "--data", data, "--model", STUDENT, "--teacher", TEACHER, "--prompt-column",
                         "q", "--completion-column", "a", "--steps", "2", "--max-length", "48", "--batch-size", "4",
                         "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "no 'split' column" in line]
    assert warnings == [f"kd-audit: warning: pairs-nosplit.jsonl has no 'split' column: its {len(rows)} rows are "
                        "split 80/10/10 by a seeded hash of each prompt or text, as the built-ins are (train 10, dev 1, "
                        "test 1); add a 'split' column to choose the rows"]
    assert "drop --split" not in err
    record = json.loads((tmp_path / "run" / "training_record.json").read_text())
    assert record["dev_data"]["n_sequences"] == len(dev)
    assert record["dev"]["n"] == sum(len(load_causal_lm(TEACHER).tokenizer(rows[i]["a"], add_special_tokens=False)
                                         ["input_ids"]) for i in dev)


@pytest.mark.parametrize("args, message", [
    (["--prompt-column", "q"], "expected --completion-column together with --prompt-column"),
    (["--prompt-column", "q", "--completion-column", "answer"], "expected the column 'answer'"),
])
def test_bad_columns_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    code, _, err = cli(capsys, "train", "--data", pairs_file(tmp_path), "--model", STUDENT, "--teacher", TEACHER, *args,
                       "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress")
    lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "run").exists()
