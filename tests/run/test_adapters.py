"""Model kinds as adapters (audit.run.adapters) and the notebook API audit.compare.compare_callable.

Expected numbers are computed here in numpy float64 from the models' own outputs, never with audit's metric
or reduction code.
"""

import re

import numpy as np
import pytest
import torch

from audit.compare import compare, compare_callable
from audit.errors import AuditError
from audit.load.models import Predictions
from audit.run.adapters import CausalLMAdapter, ClassifierAdapter, LogitsFileAdapter, set_up
from audit.settings import CompareSettings

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(n_bootstrap=30, progress=False, device="cpu", cache=False)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _expected(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per-model and per-pair means of (P, V) float64 logits at P scored positions, by the textbook formulas."""
    out = {}
    logs = {"teacher": _log_softmax(teacher), "student": _log_softmax(student)}
    for name, logp in logs.items():
        p = np.exp(logp)
        conf, top = p.max(-1), p.argmax(-1)
        hit = top == labels
        # ECE over equal-width bins [i/n, (i+1)/n): sum over bins of |accuracy - confidence| x share of positions
        bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
        ece = sum(abs(hit[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
                  for b in range(n_bins) if (bins == b).any())
        out[name] = {"n": len(labels), "accuracy": hit.mean(), "nll": -logp[np.arange(len(labels)), labels].mean(),
                     "entropy_mean": -(p * logp).sum(-1).mean(), "maxprob_mean": conf.mean(), "ece": ece, "top": top}
    q, p = np.exp(logs["teacher"]), np.exp(logs["student"])
    gap = logs["teacher"] - logs["student"]
    out["pair"] = {"agreement": (out["teacher"]["top"] == out["student"]["top"]).mean(),
                   "kl": (q * gap).sum(-1).mean(), "kl_reverse": (-p * gap).sum(-1).mean(),
                   "entropy_shift": out["student"]["entropy_mean"] - out["teacher"]["entropy_mean"]}
    return out


class Recorder(torch.nn.Module):
    """A linear classifier that records every batch it sees (to check that all models saw the same ones)."""

    def __init__(self, features: int, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(features, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.linear(x)


def test_callables_over_a_shuffling_dataloader_match_numpy():
    torch.manual_seed(0)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    teacher, student = Recorder(6, 4, seed=1), Recorder(6, 4, seed=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    report = compare_callable(teacher, [lambda inputs: 0.5 * student(inputs)], loader,
                              settings=CompareSettings(**SETTINGS))
    # the loader ran once: the teacher and the student saw the same shuffled batches
    assert len(teacher.seen) == len(student.seen) == 5
    assert all(torch.equal(a, b) for a, b in zip(teacher.seen, student.seen))
    with torch.no_grad():
        t_logits, s_logits = teacher.linear(x).double().numpy(), 0.5 * student.linear(x).double().numpy()
    expected = _expected(t_logits, s_logits, y.numpy())
    assert report["schema"] == "kd-audit/compare/1" and report["settings"]["device"] == "cpu"
    for name in ("teacher", "student"):
        model = report["models"][name]
        assert model["n"] == 300 and model["num_classes"] == 4
        for key in ("accuracy", "nll", "entropy_mean", "maxprob_mean", "ece"):
            assert model[key] == pytest.approx(expected[name][key], abs=1e-5), (name, key)
    pair = report["pairs"][0]
    for key in ("agreement", "kl", "entropy_shift"):
        assert pair[key]["value"] == pytest.approx(expected["pair"][key], abs=1e-5), key


class TinyLM(torch.nn.Module):
    """Embedding -> linear over a vocabulary: (B, T) token ids -> (B, T, V) logits."""

    def __init__(self, vocab: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))


def test_token_level_callables_match_numpy_on_the_scored_positions():
    vocab, rows, length = 13, 10, 9
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (rows, length))
    labels = torch.randint(0, vocab, (rows, length))
    labels[:, :3] = -100  # a prompt: unscored
    labels[4, :] = -100  # a row with nothing to score
    teacher, student = TinyLM(vocab, seed=1), TinyLM(vocab, seed=2)
    batches = [{"input_ids": ids[i:i + 4], "labels": labels[i:i + 4]} for i in range(0, rows, 4)]
    report = compare_callable(teacher, [student], batches, names=["big", "small"],
                              settings=CompareSettings(**SETTINGS))
    keep = (labels != -100).numpy()
    with torch.no_grad():
        t_logits, s_logits = teacher(ids).double().numpy()[keep], student(ids).double().numpy()[keep]
    expected = _expected(t_logits, s_logits, labels.numpy()[keep])
    assert report["schema"] == "kd-audit/compare/2" and report["data"]["unit"] == "token"
    for name, key in (("big", "teacher"), ("small", "student")):
        model = report["models"][name]
        assert model["n"] == int(keep.sum()) == 54 and model["n_sequences"] == 9 and model["num_classes"] == vocab
        for stat in ("accuracy", "nll", "entropy_mean", "maxprob_mean", "ece"):
            assert model[stat] == pytest.approx(expected[key][stat], abs=1e-5), (name, stat)
    pair = report["pairs"][0]
    for stat in ("agreement", "kl", "kl_reverse", "entropy_shift"):
        assert pair[stat]["value"] == pytest.approx(expected["pair"][stat], abs=1e-5), stat


def test_bad_callable_input_is_one_audit_error():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    net = torch.nn.Linear(3, 2)
    settings = CompareSettings(**SETTINGS)
    cases = {
        "empty DataLoader": ([], [net]),
        "of shape (8,) + (classes,)": ([(x, y)], [lambda v: net(v)[:4]]),
        "labels in [0, 2)": ([(x, y + 5)], [net]),
        "a 'labels' key": ([{"x": x}], [net]),
        "pass checkpoints to audit.compare": ([(x, y)], ["student/"]),
        "at least one --student": ([(x, y)], []),
        "a list of students": ([(x, y)], net),
    }
    for message, (batches, students) in cases.items():
        with pytest.raises(AuditError, match=re.escape(message)):
            compare_callable(net, students, batches, settings=settings)
    with pytest.raises(AuditError, match="compare_callable"):
        compare(net, [net], None, settings=settings)
    with pytest.raises(AuditError, match="calibrate=False for callables"):
        compare_callable(net, [net], [(x, y)], settings=CompareSettings(**SETTINGS, calibrate=True))


def test_set_up_names_adapters_without_changing_what_it_was_given():
    logits = torch.randn(5, 3)
    teacher, student = Predictions("same", logits), Predictions("same", logits + 1)
    setup = set_up(teacher, [student, student], ["t"], CompareSettings(**SETTINGS))
    assert setup.kind == "classifier" and all(isinstance(m, LogitsFileAdapter) for m in setup.models)
    assert [m.name for m in setup.models] == ["t", "same", "same#2"]
    assert teacher.name == student.name == "same"  # renamed copies; the caller's objects are untouched
    assert setup.device == torch.device("cpu") and setup.dtype == torch.float32
    with pytest.raises(AuditError, match="at most 3 --name"):
        set_up(teacher, [student, student], list("abcd"), CompareSettings(**SETTINGS))


def test_classifier_adapter_yields_one_position_per_example():
    from transformers import AutoTokenizer

    from audit.cli import DEFAULT_DATA, FIXTURES
    from audit.load.data import load_data
    from audit.load.models import load_model
    from audit.run.adapters import batch_plan

    classifier = load_model(str(FIXTURES / "teacher"))
    data = load_data(str(DEFAULT_DATA), limit=10)
    plan = batch_plan(len(data), 4)
    batches = list(ClassifierAdapter(classifier).batches(
        data, plan, {0, 2}, device=torch.device("cpu"), dtype=torch.float32, max_length=64, batch_size=4,
        halving=False, window=8192))
    assert [b.index for b in batches] == [0, 2] and [b.logits.shape[0] for b in batches] == [4, 2]
    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURES / "teacher"))
    for batch in batches:
        assert batch.mask.shape == (batch.logits.shape[0], 1) and batch.mask.all()
        assert batch.targets.tolist() == [-100] * batch.logits.shape[0]  # the classifier audit maps labels itself
        for row, logits in zip(batch.groups.tolist(), batch.logits):  # each example alone, without padding
            encoded = tokenizer(data.texts[row], truncation=True, max_length=64, return_tensors="pt")
            with torch.no_grad():
                alone = classifier.model(**encoded).logits[0]
            torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def _toy_windows(lm):
    from audit.load.data.text import Documents, tokenize_windows

    documents = Documents("toy", ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind"],
                          ["a", "b"])
    return tokenize_windows(documents, lm.tokenizer, max_length=8, stride=4)


@pytest.mark.parametrize("lazy", [False, True])
def test_causal_lm_adapter_yields_the_scored_next_token_positions(lazy):
    from audit.load.causal_lm import load_causal_lm
    from audit.package import fixtures_path
    from audit.reduce.reduction import HeadLogits, as_tensor

    lm = load_causal_lm(str(fixtures_path() / "lm-teacher"))
    windows = _toy_windows(lm)
    plan = [(0, 2), (2, len(windows))]
    batches = list(CausalLMAdapter(lm).batches(windows, plan, {0, 1}, device=torch.device("cpu"),
                                               dtype=torch.float32, lazy=lazy))
    sequence_ids, _ = windows.scored()
    assert torch.equal(torch.cat([b.groups for b in batches]), sequence_ids)
    for batch, (a, b) in zip(batches, plan):
        with torch.no_grad():
            logits = lm.model(input_ids=windows.input_ids[a:b], attention_mask=windows.attention_mask[a:b]).logits
        scored = windows.targets[a:b] != -100
        assert torch.equal(batch.mask, scored) and torch.equal(batch.targets, windows.targets[a:b][scored])
        # the head splits from the body: only the scored positions' hidden states are kept
        assert isinstance(batch.logits, HeadLogits) if lazy else isinstance(batch.logits, torch.Tensor)
        torch.testing.assert_close(as_tensor(batch.logits), logits[scored])


def test_a_head_with_a_step_of_its_own_runs_as_the_model_runs_it(monkeypatch):
    """Issue 25: a head that is more than a linear layer (here a soft cap, as Gemma 2's) fails the check on the first
    window, and the model runs whole with logits_to_keep; the reduction then reads the scored rows in place."""
    import functools

    from audit.load.causal_lm import load_causal_lm
    from audit.package import fixtures_path
    from audit.reduce.reduction import KeptRows, as_tensor

    lm = load_causal_lm(str(fixtures_path() / "lm-teacher"))
    original = lm.model.forward

    @functools.wraps(original)
    def capped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 30 * torch.tanh(out.logits / 30)
        return out

    monkeypatch.setattr(lm.model, "forward", capped)
    windows = _toy_windows(lm)
    adapter = CausalLMAdapter(lm)
    with torch.no_grad():
        assert adapter.head(windows.input_ids, windows.attention_mask) is None
        assert CausalLMAdapter(load_causal_lm(str(fixtures_path() / "lm-teacher"))).head(
            windows.input_ids, windows.attention_mask) is not None
        logits = lm.model(input_ids=windows.input_ids, attention_mask=windows.attention_mask).logits
    scored = windows.targets != -100
    for lazy in (False, True):
        [batch] = adapter.batches(windows, [(0, len(windows))], {0}, device=torch.device("cpu"), dtype=torch.float32,
                                  lazy=lazy)
        # the second window of the first text scores its last 4 positions only: rows of the span are left out
        assert isinstance(batch.logits, KeptRows) if lazy else isinstance(batch.logits, torch.Tensor)
        torch.testing.assert_close(as_tensor(batch.logits), logits[scored])


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_window_is_read_up_to_its_last_scored_position_only(attention):
    """Issue 25: the audit drops each window's last position (it has no target). Causal attention: the last
    token changes no earlier logit, bitwise; and the logits of the cut window are those of the whole one, bitwise
    for eager attention, to float32 rounding for SDPA (the CPU kernel's blocks depend on the length: 6 ulp)."""
    from transformers import AutoModelForCausalLM

    from audit.load.causal_lm import load_causal_lm
    from audit.package import fixtures_path

    path = str(fixtures_path() / "lm-teacher")
    windows = _toy_windows(load_causal_lm(path))
    assert (windows.targets[:, -1] == -100).all()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention, dtype=torch.float32).eval()
    ids, mask = windows.input_ids, windows.attention_mask
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        changed = model(input_ids=other, attention_mask=mask).logits[:, :-1]
        cut = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits
    assert torch.equal(whole, changed)
    if attention == "eager":
        assert torch.equal(whole, cut)
    torch.testing.assert_close(cut, whole, rtol=2e-6, atol=2e-6 * float(whole.abs().max()))


def _windows(max_length: int, stride: int):
    """Token windows of one document of 9 tokens, 8 scored positions (1..8), as audit.load.data.text builds them."""
    from audit.load.data.text import TokenWindows

    ids = torch.arange(9)[None]
    targets = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], 1)
    positions = torch.cat([torch.arange(1, 9)[None], torch.full((1, 1), -1)], 1)
    return TokenWindows(ids, torch.ones_like(ids), targets, positions, torch.zeros(1, dtype=torch.int64),
                        {"max_length": max_length, "stride": stride, "documents": 1})


@pytest.mark.parametrize("lie, message", [
    ("windows", r"max_length 64 and stride 32 \(the audit's\), got max_length 16 and stride 8"),
    ("renormalised", "renormalised over the top k"),
])
def test_a_topk_file_that_lies_is_refused_when_read_for_the_windows(tmp_path, lie, message):
    """Issue 26: a file renormalised over its top 16 (no tail: KL 1.45 for 0.10) or written from windows of 16/8
    and audited at 64/32 was accepted without a word."""
    from audit.load.causal_lm import TopkTeacher
    from audit.reduce.topk import topk_from_logits, write_topk_logits
    from audit.run.adapters import TopkFileAdapter

    windows = _windows(64, 32)
    ids, logprobs = topk_from_logits(torch.randn(8, 40, generator=torch.Generator().manual_seed(0)), 4)
    if lie == "renormalised":
        logprobs = torch.log_softmax(logprobs, -1)
    metadata = {"max_length": "16", "stride": "8"} if lie == "windows" else {"max_length": "64", "stride": "32"}
    path = write_topk_logits(tmp_path / "top4.safetensors", ids, logprobs, *windows.scored(), metadata=metadata)
    adapter = TopkFileAdapter(TopkTeacher("top4", str(path)))
    with pytest.raises(AuditError, match=message):
        adapter.read(windows, 40)
    if lie == "windows":  # the fix the message names: the windows the file was written from
        assert adapter.read(_windows(16, 8), 40).k == 4
