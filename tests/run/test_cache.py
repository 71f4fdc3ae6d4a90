"""The prediction cache: shards on disk, keys that change with what the logits depend on, a real killed run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from audit.compare import CompareSettings, compare
from audit.load.data import TextData, load_data
from audit.load.models import load_model
from audit.recipes.train import build_classifier_student
from audit.run.adapters import batch_plan
from audit.run.cache import (
    PredictionStore,
    cache_root,
    clear_cache,
    data_fingerprint,
    file_sha256,
    list_cache,
    model_fingerprint,
    prediction_key,
)
from audit.run.evaluate import predict_text

LABELS = ["negative", "positive"]
CPU = dict(device=torch.device("cpu"), dtype=torch.float32)


pytestmark = pytest.mark.usefixtures("one_thread", "own_cache")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_pair):
    """Two tiny checkpoints and 1000 real movie sentences (enough batches of 2 to kill a run mid-way)."""
    root = tmp_path_factory.mktemp("cache")
    for model in ("teacher", "student"):
        (root / model).symlink_to(tiny_pair / model)
    data = load_data("vader-movies", split="train", limit=1000)
    (root / "data.jsonl").write_text("".join(
        json.dumps({"id": i, "text": t, "label": data.label_names[y]}) + "\n"
        for i, t, y in zip(data.ids, data.texts, data.labels)))
    return root


def _store(name: str = "m", shard_batches: int = 2) -> PredictionStore:
    return PredictionStore.open({"test": name}, name=name, num_classes=2, shard_batches=shard_batches)


def test_shards_hold_whole_batches_and_load_back():
    store = _store()
    for batch in range(5):
        store.add(batch, torch.tensor([2 * batch, 2 * batch + 1]), torch.full((2, 2), float(batch)))
    assert len(list(store.folder.glob("shard-*.safetensors"))) == 2  # batches 0-1 and 2-3; 4 still pending
    assert store.cached_batches() == {0, 1, 2, 3}
    store.flush()
    assert store.cached_batches() == {0, 1, 2, 3, 4}
    rows, logits = store.load({1, 4})
    assert rows.tolist() == [2, 3, 8, 9] and logits[:, 0].tolist() == [1.0, 1.0, 4.0, 4.0]
    assert not list(store.folder.glob("*.tmp"))  # atomic writes leave no temp files
    assert _store().cached_batches() == {0, 1, 2, 3, 4}  # the same key reopens the same entry


def test_list_and_clear():
    assert list_cache() == [] and clear_cache() == (0, 0)
    store = _store("a")
    store.add(0, torch.tensor([0, 1, 2]), torch.zeros(3, 2))
    store.flush()
    _store("b")
    rows = {r["name"]: r for r in list_cache()}
    assert rows["a"]["rows"] == 3 and rows["a"]["shards"] == 1 and rows["b"]["rows"] == 0
    assert rows["a"]["bytes"] > 0 and rows["a"]["key"] == {"test": "a"}
    assert clear_cache() == (2, 0) and list_cache() == [] and not cache_root().exists()


def test_key_changes_with_what_the_logits_depend_on(setup, tmp_path):
    model = load_model(str(setup / "teacher"))
    data = load_data(str(setup / "data.jsonl"), limit=10)
    base = dict(dtype=torch.float32, max_length=64, batch_size=2, device=torch.device("cpu"))
    key = prediction_key(model, data, **base)
    assert prediction_key(model, data, **base) == key
    for change in (dict(dtype=torch.bfloat16), dict(max_length=32), dict(batch_size=4)):
        assert prediction_key(model, data, **{**base, **change}) != key
    assert prediction_key(model, load_data(str(setup / "data.jsonl"), limit=11), **base) != key
    edited = TextData("d", data.texts[:-1] + [data.texts[-1] + "!"], data.ids, data.labels, data.label_names)
    assert data_fingerprint(edited) != data_fingerprint(data)
    assert prediction_key(load_model(str(setup / "student")), data, **base)["model"] != key["model"]
    in_memory = build_classifier_student("tiny:hidden=32,layers=1", LABELS, seed=0)  # not a folder: hashed from its tensors
    assert model_fingerprint(in_memory) == model_fingerprint(build_classifier_student("tiny:hidden=32,layers=1", LABELS, seed=0))
    assert model_fingerprint(in_memory) != model_fingerprint(build_classifier_student("tiny:hidden=32,layers=1", LABELS, seed=1))


def test_file_hash_is_remembered_while_the_file_is_untouched(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 100)
    first = file_sha256(weights)
    memo_path = cache_root() / "file-hashes.json"
    memo = json.loads(memo_path.read_text())
    assert memo[str(weights.resolve())]["sha256"] == first
    memo[str(weights.resolve())]["sha256"] = "remembered"
    memo_path.write_text(json.dumps(memo))
    assert file_sha256(weights) == "remembered"  # read from the memo, not rehashed
    weights.write_bytes(b"b" * 100)
    os.utime(weights, ns=(memo[str(weights.resolve())]["mtime_ns"],) * 2)  # same size and mtime, new ctime
    assert file_sha256(weights) not in ("remembered", first)


def test_cached_batches_are_read_not_run_and_a_partial_cache_resumes_bitwise(setup):
    model = load_model(str(setup / "teacher"))
    data = load_data(str(setup / "data.jsonl"), limit=40)
    plain = predict_text(model, data, batch_size=4, progress=False, **CPU)
    store = _store("teacher", shard_batches=3)
    cached = predict_text(model, data, batch_size=4, progress=False, store=store, **CPU)
    assert torch.equal(cached.logits, plain.logits)
    shards = sorted(store.folder.glob("shard-*.safetensors"))
    assert len(shards) == 4 and store.cached_batches() == set(range(len(batch_plan(40, 4))))
    for shard in shards[1::2]:
        shard.unlink()  # as if killed: some batches on disk, some not
    resumed = predict_text(model, data, batch_size=4, progress=False, store=store, **CPU)
    assert torch.equal(resumed.logits, plain.logits)
    with torch.no_grad():
        for p in model.model.parameters():
            p.zero_()  # a run that needs the model would now give other logits
    assert torch.equal(predict_text(model, data, batch_size=4, progress=False, store=store, **CPU).logits, plain.logits)


def test_no_cache_writes_nothing(setup):
    compare(str(setup / "teacher"), [str(setup / "student")], str(setup / "data.jsonl"),
            settings=CompareSettings(limit=20, n_bootstrap=20, progress=False, cache=False))
    assert not cache_root().exists() or list_cache() == []


def test_killed_run_resumes_with_identical_numbers(setup, tmp_path):
    """A real `python -m audit compare`, SIGKILLed once its first shard is on disk, then rerun."""
    out = tmp_path / "resumed.json"
    command = [sys.executable, "-m", "audit", "compare", "--teacher", str(setup / "teacher"), "--student",
               str(setup / "student"), "--data", str(setup / "data.jsonl"), "--batch-size", "2", "--bootstrap", "200",
               "--no-progress", "--json", str(out)]
    run = dict(env=dict(os.environ), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process = subprocess.Popen(command, **run)
    deadline = time.monotonic() + 120
    while not list(cache_root().glob("*/shard-*.safetensors")) and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no shard written within 120 s")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    survivors = {p: p.stat().st_mtime_ns for p in cache_root().glob("*/shard-*.safetensors")}
    (entry,) = list_cache()
    assert 0 < entry["rows"] < 1000 and not out.exists()

    rerun = subprocess.run(command, **run, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in survivors.items())  # the killed run's shards were reused
    assert sorted(r["rows"] for r in list_cache()) == [1000, 1000]

    uninterrupted = compare(str(setup / "teacher"), [str(setup / "student")], str(setup / "data.jsonl"),
                            settings=CompareSettings(batch_size=2, n_bootstrap=200, progress=False, cache=False))
    resumed = json.loads(out.read_text())
    resumed.pop("created"), uninterrupted.pop("created")
    assert resumed == json.loads(json.dumps(uninterrupted))


def test_entry_folder_is_named_by_the_key_digest():
    a, b = _store("x"), _store("y")
    assert a.folder != b.folder and a.folder.parent == b.folder.parent == cache_root()
    assert json.loads((a.folder / "manifest.json").read_text())["key"] == {"test": "x"}
    assert {r["name"]: r["digest"] for r in list_cache()} == {"x": a.folder.name, "y": b.folder.name}


def test_a_renamed_model_opens_its_entry_without_a_warning(recwarn):
    """Issue 26: the manifest stored the display name and the key did not, so a renamed model (``--name``, or the
    same checkpoint listed twice) warned "whose manifest does not match its key" and recomputed."""
    store = _store("teacher")
    store.add(0, torch.tensor([0, 1]), torch.ones(2, 2))
    store.flush()
    renamed = PredictionStore.open({"test": "teacher"}, name="big-model", num_classes=2)
    assert renamed.folder == store.folder and renamed.cached_batches() == {0}
    assert not [w for w in recwarn if "does not match" in str(w.message)]
    assert json.loads((store.folder / "manifest.json").read_text())["name"] == "teacher"  # the name it was written as
    with pytest.warns(UserWarning, match="does not match its key"):  # another width under the key still rebuilds
        assert PredictionStore.open({"test": "teacher"}, name="teacher", num_classes=3).cached_batches() == set()


def _count_forwards(monkeypatch) -> list[int]:
    from audit.run.adapters import ClassifierAdapter

    calls: list[int] = []
    original = ClassifierAdapter._forward
    monkeypatch.setattr(ClassifierAdapter, "_forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def test_a_checkpoint_under_other_names_hits_its_cache_entry(setup, monkeypatch, recwarn):
    """Renamed with names=/--name, or compared with itself (teacher and ``teacher#2``): every model's logits come
    from the entries the first run wrote, with the same numbers and no warning."""
    calls = _count_forwards(monkeypatch)
    settings = CompareSettings(limit=20, n_bootstrap=20, progress=False, batch_size=4)
    teacher, student, data = str(setup / "teacher"), str(setup / "student"), str(setup / "data.jsonl")
    first = compare(teacher, [student], data, settings=settings)
    assert calls
    calls.clear()
    renamed = compare(teacher, [student], data, names=["big", "small"], settings=settings)
    assert calls == []  # both models' logits read from the cache
    assert renamed["models"]["big"] == first["models"]["teacher"]
    assert renamed["pairs"][0]["kl"] == first["pairs"][0]["kl"]
    itself = compare(teacher, [teacher], data, settings=settings)
    assert calls == [] and itself["pairs"][0]["kl"]["value"] == 0
    assert not [w for w in recwarn if "does not match" in str(w.message)]


def test_a_renamed_causal_lm_hits_its_token_cache_entry(tmp_path, monkeypatch, recwarn):
    """The token audit's entry is keyed by the models' content, not by their names (stored as ``T+S``)."""
    from audit.package import fixtures_path
    from audit.run.adapters import CausalLMAdapter

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("To be, or not to be, that is the question. " * 3)
    teacher, student = str(fixtures_path() / "lm-teacher"), f"{fixtures_path() / 'lm-teacher'}@layers=1"
    calls: list[int] = []
    original = CausalLMAdapter.forward
    monkeypatch.setattr(CausalLMAdapter, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    settings = CompareSettings(max_length=32, n_bootstrap=20, progress=False)
    first = compare(teacher, [student], str(docs), settings=settings)
    assert calls
    calls.clear()
    renamed = compare(teacher, [student], str(docs), names=["big", "small"], settings=settings)
    assert calls == [] and renamed["pairs"][0]["kl"] == first["pairs"][0]["kl"]
    assert not [w for w in recwarn if "does not match" in str(w.message)]
