"""A resumable cache of predictions: one model's logits on one data set, written to disk as they are computed.

An entry lives in ``audit.load.data.cache_dir() / "predictions" / <digest>``: ``manifest.json`` (what the logits
are of, written once) and ``shard-<first batch>.safetensors`` files, each holding a few whole batches of
:func:`audit.run.evaluate.predict_text`'s plan (tensors ``batch`` and ``rows`` (n,) int64, ``logits`` (n, K)
float32, and the sha256 of those tensors' bytes in the file's metadata). Every file is written to a temp name
and renamed into place, so a run killed at any point leaves only whole shards; the next run with the same key
skips the batches they hold and computes the rest in the same batches, so its logits are bitwise those of an
uninterrupted run.

The cache never trusts its own files: a shard whose checksum does not match, a truncated or unreadable shard,
manifest or hash memo is dropped with a one-line warning (:class:`~audit.errors.AuditWarning`) and recomputed.
A cache folder that cannot be written (``KD_AUDIT_CACHE`` pointing at a file, a read-only folder, ``/proc``)
raises :class:`CacheUnavailable`, which :mod:`audit.compare` turns into a warning and an uncached run.

The key (:func:`prediction_key`) fingerprints everything the logits depend on: the weights (sha256 of the
checkpoint's files, remembered by path, size, mtime, ctime and inode: replacing a file, even with the same size
and its mtime restored, changes its ctime), config and tokenizer; the data's content (texts, pairs, ids) and its
columns and split; dtype, max_length, batch size and device type.

The root holds a marker file, and :func:`clear_cache` deletes only what the cache wrote: entry folders with a
kd-audit manifest, their shards, and the hash memo. Anything else is left where it is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.errors import AuditError, warn
from audit.load.causal_lm import CausalLM
from audit.load.data import TextData, cache_dir
from audit.load.data.text import Documents, TokenWindows
from audit.load.models import TextClassifier

VERSION = 2
SHARD_BATCHES = 16
MANIFEST = "manifest.json"
HASHES = "file-hashes.json"
MARKER = ".kd-audit-cache"
_SHARD_GLOB = "shard-*.safetensors"
_MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json", "vocab.json", "merges.txt", "*.model", "*.gguf")


class CacheUnavailable(AuditError):
    """The prediction cache's folder cannot be created or written."""


def cache_root() -> Path:
    """``audit.load.data.cache_dir() / "predictions"`` (``$KD_AUDIT_CACHE`` moves it); not created here."""
    return cache_dir() / "predictions"


def _make_root() -> Path:
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.exists():
            marker.write_text("kd-audit prediction cache: `python -m audit cache clear` deletes only what it wrote\n")
    except OSError as err:
        raise CacheUnavailable(f"expected a writable cache folder at {root}, got {err.strerror or err}; set "
                               "KD_AUDIT_CACHE to a writable folder or pass --no-cache") from None
    return root


def _read_json(path: Path, what: str) -> dict | None:
    """A JSON object the cache wrote, or None (with a warning) when it is missing, truncated or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as err:
        warn(f"ignoring the unreadable {what} {path} ({type(err).__name__}); it will be rebuilt")
        return None
    if not isinstance(value, dict):
        warn(f"ignoring the malformed {what} {path}; it will be rebuilt")
        return None
    return value


def _file_identity(stat) -> dict:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered in the cache by resolved path, size, mtime, ctime and inode.

    A memo that cannot be read is ignored and one that cannot be written is skipped (with a warning): the
    hash is then computed from the bytes, which is always right.

    >>> file_sha256(Path("model.safetensors"))  # doctest: +SKIP
    '3f1c...'
    """
    path = path.resolve()
    identity = _file_identity(path.stat())
    memo_path = cache_root() / HASHES
    entry = (_read_json(memo_path, "hash memo") or {}).get(str(path))
    if isinstance(entry, dict) and {k: entry.get(k) for k in identity} == identity and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    try:
        _make_root()
        memo = _read_json(memo_path, "hash memo") or {}  # another process may have added some
        memo[str(path)] = {**identity, "sha256": digest.hexdigest()}
        write_atomic(memo_path, lambda p: p.write_text(json.dumps(memo, indent=1)))
    except (CacheUnavailable, OSError):
        pass  # the memo only saves time; an unwritable cache is reported where the cache is opened
    return digest.hexdigest()


def model_fingerprint(classifier: TextClassifier) -> str:
    """sha256 naming a classifier's weights, config and tokenizer.

    A local checkpoint folder is fingerprinted by its files' bytes (:func:`file_sha256`); a model that is
    not a folder (a hub id, or built in Python) by its state dict's bytes, config and vocabulary.
    """
    digest = hashlib.sha256()
    folder = Path(classifier.source)
    files = sorted({f for pattern in _MODEL_FILES for f in folder.glob(pattern)}) if folder.is_dir() else []
    if files:
        for f in files:
            digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
        return digest.hexdigest()
    for name, tensor in classifier.model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(classifier.model.config.to_json_string().encode())
    digest.update(json.dumps(sorted(classifier.tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def data_fingerprint(data: TextData, *, chunk: int = 10_000) -> str:
    """sha256 of the data's texts, text pairs and ids (in order), hashed a chunk at a time."""
    digest = hashlib.sha256()
    for values in (data.texts, data.text_pairs or [], data.ids):
        digest.update(f"[{len(values)}]".encode())
        for start in range(0, len(values), chunk):
            digest.update(json.dumps(values[start:start + chunk]).encode())
    return digest.hexdigest()


def prediction_key(classifier: TextClassifier, data: TextData, *, dtype: torch.dtype, max_length: int,
                   batch_size: int, device: torch.device) -> dict:
    """Everything a model's logits on ``data`` depend on, as a JSON-ready dict (its digest names the entry): the
    model by its content, never by its display name or the spelling of its path, so a renamed model hits its entry.

    ``batch_size`` and the device type are part of it because a batch's padding and kernels change the
    last bits of the logits; the number of processes is not (every process runs the same batches).
    """
    return {
        "version": VERSION,
        "model": model_fingerprint(classifier),
        "data": data_fingerprint(data),
        "columns": data.info.get("columns"),
        "split": data.info.get("split"),
        "n": len(data),
        "dtype": str(dtype).removeprefix("torch."),
        "max_length": max_length,
        "batch_size": batch_size,
        "device": device.type,
    }


def token_key(models: list, documents: Documents, windows: TokenWindows, *, dtype: torch.dtype,
              device: torch.device, batch_size: int, scaled: dict[str, dict[int, float]] | None = None) -> dict:
    """Everything a token audit's columns depend on, as :func:`prediction_key` for a classifier's logits: every
    model in order by its content (a top-k teacher by its file's bytes; no display name or path spelling), the
    documents, the windowing, how they ran, and the temperatures of the scaled views
    (:func:`audit.run.evaluate.evaluate_tokens`)."""
    digest = hashlib.sha256()
    for values in (documents.texts, documents.ids, documents.prompts or []):
        digest.update(json.dumps(values).encode())
    key = {"version": 2, "kind": "lm-columns",
           "models": [model_fingerprint(m) if isinstance(m, CausalLM) else file_sha256(Path(m.source)) for m in models],
           "documents": digest.hexdigest(), "windows": windows.info, "dtype": str(dtype), "device": device.type,
           "batch_size": batch_size}
    if scaled:
        key["scaled"] = {name: [[i, float(t).hex()] for i, t in view.items()] for name, view in scaled.items()}
    return key


def open_store(key: dict, *, name: str, width: int) -> PredictionStore | None:
    """The cache entry of ``key`` (``width`` values per row), or None, with a warning, when the cache cannot be
    written: the run goes on uncached. ``name`` labels a new entry in ``cache list``; it is no part of the match
    (:meth:`PredictionStore.open`)."""
    try:
        return PredictionStore.open(key, name=name, num_classes=width)
    except CacheUnavailable as err:
        warn(f"running without the prediction cache: {err}")
        return None


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_manifest(manifest: dict | None) -> bool:
    return manifest is not None and isinstance(manifest.get("key"), dict) and isinstance(manifest.get("name"), str)


class PredictionStore:
    """One cache entry: the shards of a model's logits on a data set, read and appended to.

    A shard is written every ``shard_batches`` batches (a few seconds of work on the device at the default
    batch sizes); :meth:`flush` writes the rest. Shards are read and verified once, on first use.
    """

    def __init__(self, folder: Path, *, num_classes: int, shard_batches: int = SHARD_BATCHES) -> None:
        self.folder = folder
        self.num_classes = num_classes
        self.shard_batches = shard_batches
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._verified: dict[str, dict[str, torch.Tensor]] | None = None

    @classmethod
    def open(cls, key: dict, *, name: str, num_classes: int, shard_batches: int = SHARD_BATCHES,
             root: Path | None = None) -> PredictionStore:
        """The entry for ``key`` (created with its manifest when new; rebuilt when its manifest is damaged).

        ``name`` is a display name only: the manifest keeps the one the entry was first written under (what
        :func:`list_cache` shows), and the entry is matched by ``key`` and ``num_classes`` alone, so a model renamed
        (``--name``) or listed twice (``teacher#2``) opens the entry its logits are in.

        Raises:
            CacheUnavailable: the cache folder cannot be created or written.
        """
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        folder = (root or _make_root()) / digest
        identity = {"key": key, "num_classes": num_classes}  # what the logits are of; the name is not
        try:
            folder.mkdir(parents=True, exist_ok=True)
            saved = _read_json(folder / MANIFEST, "cache manifest")
            if saved is not None and ({k: saved.get(k) for k in identity} != identity
                                      or not isinstance(saved.get("name"), str)):
                warn(f"ignoring the cache entry {folder} whose manifest does not match its key; recomputing it")
                saved = None
            if saved is None:
                for shard in folder.glob(_SHARD_GLOB):
                    shard.unlink()
                created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                manifest = {"key": key, "name": name, "num_classes": num_classes, "created": created}
                write_atomic(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
        except OSError as err:
            raise CacheUnavailable(f"expected a writable cache folder at {folder}, got {err.strerror or err}; set "
                                   "KD_AUDIT_CACHE to a writable folder or pass --no-cache") from None
        return cls(folder, num_classes=num_classes, shard_batches=shard_batches)

    def _shards(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every shard on disk whose checksum matches, read once; bad shards are deleted with a warning."""
        if self._verified is None:
            self._verified = {}
            for path in sorted(self.folder.glob(_SHARD_GLOB)):
                tensors = _read_shard(path, self.num_classes)
                if tensors is None:
                    warn(f"dropping the damaged cache shard {path}; its batches will be recomputed")
                    path.unlink(missing_ok=True)
                else:
                    self._verified[path.name] = tensors
        return self._verified

    def cached_batches(self) -> set[int]:
        """Indices of the batches whose logits are on disk (in verified shards)."""
        done: set[int] = set()
        for tensors in self._shards().values():
            done.update(tensors["batch"].unique().tolist())
        return done

    def load(self, batches: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (n,) int64 and logits (n, K) float32 of the given cached batches."""
        wanted = torch.tensor(sorted(set(batches)), dtype=torch.int64)
        rows, logits = [torch.empty(0, dtype=torch.int64)], [torch.empty(0, self.num_classes)]
        for tensors in self._shards().values() if wanted.numel() else []:
            keep = torch.isin(tensors["batch"], wanted)
            if keep.any():
                rows.append(tensors["rows"][keep])
                logits.append(tensors["logits"][keep])
        return torch.cat(rows), torch.cat(logits)

    def add(self, batch: int, rows: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep one batch's logits; write a shard once ``shard_batches`` batches are pending."""
        self._pending.append((batch, rows, logits))
        if len(self._pending) >= self.shard_batches:
            self.flush()

    def flush(self) -> None:
        """Write the pending batches as one shard, named by its first batch index, with its checksum."""
        if not self._pending:
            return
        from safetensors.torch import save_file

        tensors = {
            "batch": torch.cat([torch.full((r.numel(),), b, dtype=torch.int64) for b, r, _ in self._pending]),
            "rows": torch.cat([r for _, r, _ in self._pending]).long().contiguous(),
            "logits": torch.cat([x for _, _, x in self._pending]).float().contiguous(),
        }
        path = self.folder / f"shard-{self._pending[0][0]:09d}.safetensors"
        write_atomic(path, lambda p: save_file(tensors, str(p), metadata={"sha256": _tensors_sha256(tensors)}))
        if self._verified is not None:
            self._verified[path.name] = tensors
        self._pending = []


def _read_shard(path: Path, num_classes: int) -> dict[str, torch.Tensor] | None:
    """A shard's tensors if the file is whole, well-formed and matches its checksum, else None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get("sha256")
            tensors = {name: f.get_tensor(name) for name in ("batch", "rows", "logits")}
    except (OSError, SafetensorError, ValueError, RuntimeError, KeyError):
        return None
    n = tensors["batch"].shape[0]
    shapes_ok = tensors["rows"].shape == (n,) and tensors["logits"].shape == (n, num_classes)
    return tensors if shapes_ok and expected == _tensors_sha256(tensors) else None


def _entries(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = _read_json(folder / MANIFEST, "cache manifest") if folder.is_dir() else None
        if _is_manifest(manifest):
            out.append((folder, manifest))
    return out


def list_cache() -> list[dict]:
    """One dict per cache entry: digest, name, rows cached out of n, shards, bytes, created, and its key.

    >>> list_cache()  # doctest: +SKIP
    [{'digest': '9c1e...', 'name': 'teacher', 'rows': 872, 'n': 872, 'shards': 1, 'bytes': 9216, ...}]
    """
    out = []
    for folder, manifest in _entries(cache_root()):
        store = PredictionStore(folder, num_classes=int(manifest.get("num_classes", 0)))
        shards = store._shards()
        out.append({"digest": folder.name, "name": manifest["name"],
                    "rows": sum(t["rows"].shape[0] for t in shards.values()), "n": manifest["key"].get("n"),
                    "shards": len(shards), "bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
                    "created": manifest.get("created"), "key": manifest["key"]})
    return out


def clear_cache() -> tuple[int, int]:
    """Delete what the cache wrote; return (entries removed, paths left because the cache did not write them).

    Only entry folders with a kd-audit manifest are touched, and in them only the manifest, shards and
    temp files of interrupted writes; a folder is removed once it is empty. The hash memo and the marker go too.

    Raises:
        AuditError: the folder is not a kd-audit cache (no marker and no kd-audit entry in it).
    """
    root = cache_root()
    if not root.exists():
        return 0, 0
    if not root.is_dir():
        raise AuditError(f"expected the prediction cache {root} to be a folder, got a file; fix KD_AUDIT_CACHE")
    entries = _entries(root)
    children = list(root.iterdir())
    if children and not (root / MARKER).exists() and not entries:
        raise AuditError(f"expected a kd-audit prediction cache at {root}, got a folder kd-audit did not write; "
                         "point KD_AUDIT_CACHE at kd-audit's cache folder, or delete the files yourself")
    removed = 0
    for folder, _ in entries:
        for path in [folder / MANIFEST, *folder.glob(_SHARD_GLOB), *folder.glob(".shard-*.tmp"),
                     *folder.glob(f".{MANIFEST}.*.tmp")]:
            path.unlink(missing_ok=True)
        removed += 1
        if not any(folder.iterdir()):
            folder.rmdir()
    (root / HASHES).unlink(missing_ok=True)
    left = [p for p in root.iterdir() if p.name != MARKER]
    if not left:
        (root / MARKER).unlink(missing_ok=True)
        root.rmdir()
    return removed, len(left)
