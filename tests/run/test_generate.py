"""The students' own completions (audit.run.generate) on the fixture LMs: what a prompt is, that left-padded
batched decoding equals a plain one-prompt argmax loop, that sampling is seeded and cached, and that the windows
score the completion's tokens only.

Expectations come from the tokenizer and the model's forward directly (a greedy loop written here), never from
``model.generate`` or the module's own helpers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from audit.errors import AuditError
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import IGNORE_INDEX, Documents
from audit.package import fixtures_path
from audit.run.cache import open_store
from audit.run.generate import (
    completion_windows,
    generate_completions,
    generation_key,
    prompt_tokens,
    stop_tokens,
)

STUDENT = str(fixtures_path() / "lm-student")
CPU = torch.device("cpu")
PROMPTS = ["To be, or not to be, that is the question:", "My lord,", "Now is the winter of our discontent made",
           "O Romeo, Romeo!", "Friends, Romans, countrymen,"]

pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm(STUDENT)


def ids_of(lm, texts: list[str]) -> list[list[int]]:
    return [lm.tokenizer(t)["input_ids"] for t in texts]


def complete(lm, prompts, **options) -> list[list[int]]:
    settings = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": 0, "device": CPU,
                "dtype": torch.float32, "batch_size": 2, **options}
    return generate_completions(lm, prompts, **settings)


def with_bias(token: int, bias: float):
    """The fixture student with an output layer that adds ``bias`` to one token's logit (a real model whose
    completions end early when the token is its EOS)."""
    lm = load_causal_lm(STUDENT)
    weight = lm.model.get_input_embeddings().weight
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[token] = bias
    lm.model.lm_head = head
    return dataclasses.replace(lm, name=f"student+{bias:g}@{token}", source=f"{STUDENT} (bias {bias:g} on {token})")


def greedy_loop(lm, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding of one unpadded prompt: the argmax of the last position, appended, until an EOS."""
    tokens, stops = list(prompt), stop_tokens(lm)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = lm.model(input_ids=torch.tensor([tokens])).logits[0, -1].double()
            tokens.append(int(logits.argmax()))
            if tokens[-1] in stops:
                break
    return tokens[len(prompt):]


def test_a_plain_documents_prompt_is_the_first_half_of_its_first_window(lm):
    texts = [" ".join(["To be, or not to be, that is the question."] * k) for k in (1, 3, 8)]
    documents = Documents("docs", texts, ["a", "b", "c"])
    prompts = prompt_tokens(documents, lm.tokenizer, max_length=32, max_new_tokens=8, context=2048)
    whole = [lm.tokenizer(t)["input_ids"] for t in texts]
    assert prompts == [w[:min(len(w), 32) // 2] for w in whole]
    assert len(prompts[0]) < 16 and len(prompts[2]) == 16  # a short document's half, a long one's half-window
    # where the context is the limit, a plain document's prompt is cut to leave room for the completion
    assert prompt_tokens(documents, lm.tokenizer, max_length=32, max_new_tokens=10, context=20)[2] == whole[2][:10]


def test_a_prompt_columns_prompt_is_tokenised_whole_and_must_fit_the_context(lm):
    documents = Documents("pc", [" answer", " reply"], ["q0", "q1"], prompts=PROMPTS[:2])
    prompts = prompt_tokens(documents, lm.tokenizer, max_length=8, max_new_tokens=4, context=2048)
    assert prompts == ids_of(lm, PROMPTS[:2])  # never cut to --max-length
    longest = len(prompts[0])
    with pytest.raises(AuditError, match=r"prompt of \d+ tokens in document 'q0'.*--max-new-tokens"):
        prompt_tokens(documents, lm.tokenizer, max_length=8, max_new_tokens=2048 - longest + 1, context=2048)
    with pytest.raises(AuditError, match="--max-new-tokens below the models' context of 2048"):
        prompt_tokens(documents, lm.tokenizer, max_length=8, max_new_tokens=2048, context=2048)
    empty = Documents("pc", ["answer"], ["q0"], prompts=[""])
    with pytest.raises(AuditError, match="prompt of at least one token"):
        prompt_tokens(empty, lm.tokenizer, max_length=8, max_new_tokens=4, context=2048)


def test_windows_score_the_completion_tokens_only():
    windows = completion_windows([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad=2)
    assert windows.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 2]]
    assert windows.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    n = IGNORE_INDEX
    assert windows.targets.tolist() == [[n, n, 9, 10, n], [11, 12, 13, n, n]]
    assert windows.positions.tolist() == [[-1, -1, 3, 4, -1], [1, 2, 3, -1, -1]]
    assert windows.sequence_ids.tolist() == [0, 1] and windows.info["tokens_scored"] == 5


def test_batched_left_padded_greedy_decoding_equals_a_one_prompt_argmax_loop(lm):
    prompts = ids_of(lm, PROMPTS)  # five lengths: every batch of two is left-padded
    assert len({len(p) for p in prompts}) == len(prompts)
    completions = complete(lm, prompts, temperature=0.0)
    assert completions == [greedy_loop(lm, p, 12) for p in prompts]
    # nucleus sampling that keeps only the most likely token is greedy decoding too: top-p reaches the sampler
    assert complete(lm, prompts, top_p=1e-6, seed=3) == completions
    # a student that likes its EOS: a row that stops while its batch goes on is cut at its EOS
    stopper = with_bias(min(stop_tokens(lm)), 12.0)
    completions = complete(stopper, prompts, temperature=0.0)
    assert completions == [greedy_loop(stopper, p, 12) for p in prompts]
    assert sorted(map(len, completions))[0] < 12 == sorted(map(len, completions))[-1]


def test_sampling_is_seeded_and_stops_at_eos(lm):
    prompts = ids_of(lm, PROMPTS)
    first = complete(lm, prompts, seed=7)
    assert complete(lm, prompts, seed=7) == first
    assert complete(lm, prompts, seed=8) != first
    assert complete(lm, prompts, seed=7, temperature=0.0) != first  # sampled, not greedy
    stops = stop_tokens(lm)
    sampled = complete(with_bias(min(stops), 12.0), prompts * 2, seed=0)
    assert len({len(t) for t in sampled}) > 2  # completions of many lengths
    for tokens in first + sampled:  # each stops at its first EOS, or at --max-new-tokens without one
        assert 1 <= len(tokens) <= 12 and not any(t in stops for t in tokens[:-1])
        assert len(tokens) == 12 or tokens[-1] in stops


def test_a_second_run_reads_the_completions_from_the_cache(lm, monkeypatch):
    prompts = ids_of(lm, PROMPTS)
    options = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 5}

    def store(**changed):
        key = generation_key(lm, prompts, dtype=torch.float32, device=CPU, batch_size=2, **{**options, **changed})
        return open_store(key, name=lm.name, width=key["max_new_tokens"])

    first = complete(lm, prompts, store=store(), **options)
    calls = []
    original = type(lm.model).generate
    monkeypatch.setattr(type(lm.model), "generate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert complete(lm, prompts, store=store(), **options) == first
    assert calls == []  # every batch came from the cache
    complete(lm, prompts, store=store(seed=6), **{**options, "seed": 6})
    assert len(calls) == 3  # another seed is another entry: its three batches ran


def test_the_key_names_the_weights_prompts_and_sampling_but_not_the_name(lm):
    prompts = ids_of(lm, PROMPTS)
    base = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": 0, "dtype": torch.float32,
            "device": CPU, "batch_size": 2}
    key = generation_key(lm, prompts, **base)
    assert generation_key(dataclasses.replace(lm, name="renamed"), prompts, **base) == key
    for changed in ({"temperature": 0.7}, {"top_p": 0.95}, {"seed": 1}, {"max_new_tokens": 11}, {"batch_size": 3}):
        assert generation_key(lm, prompts, **{**base, **changed}) != key, changed
    assert generation_key(lm, prompts[:-1], **base) != key
    other = load_causal_lm(str(fixtures_path() / "lm-teacher"))
    assert generation_key(dataclasses.replace(other, name=lm.name), prompts, **base) != key
