"""A resumable cache of predictions: one model's logits on one data set, written to disk as they are computed.

An entry lives in ``audit.data.cache_dir() / "predictions" / <digest>``: ``manifest.json`` (what the logits
are of, written once) and ``shard-<first batch>.safetensors`` files, each holding a few whole batches of
:func:`audit.predict.predict_text`'s plan (tensors ``batch`` and ``rows`` (n,) int64, ``logits`` (n, K)
float32). Every file is written to a temp name and renamed into place, so a run killed at any point leaves
only whole shards; the next run with the same key skips the batches they hold and computes the rest in the
same batches, so its logits are bitwise those of an uninterrupted run.

The key (:func:`prediction_key`) fingerprints everything the logits depend on: the weights (sha256 of the
checkpoint's files, remembered by path, mtime and size so a file is hashed once), config and tokenizer; the
data's content (texts, pairs, ids) and its columns and split; dtype, max_length, batch size and device type.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.data import TextData, cache_dir
from audit.errors import AuditError
from audit.models import TextClassifier

VERSION = 1
SHARD_BATCHES = 16
MANIFEST = "manifest.json"
HASHES = "file-hashes.json"
_MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json", "vocab.json", "merges.txt", "*.model")


def cache_root() -> Path:
    """``audit.data.cache_dir() / "predictions"`` (``$KD_AUDIT_CACHE`` moves it); not created here."""
    return cache_dir() / "predictions"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered in the cache by resolved path, mtime and size.

    >>> file_sha256(Path("model.safetensors"))  # doctest: +SKIP
    '3f1c...'
    """
    path = path.resolve()
    stat = path.stat()
    memo_path = cache_root() / HASHES
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    entry = memo.get(str(path))
    if entry and entry["mtime_ns"] == stat.st_mtime_ns and entry["size"] == stat.st_size:
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}  # another process may have added some
    memo[str(path)] = {"mtime_ns": stat.st_mtime_ns, "size": stat.st_size, "sha256": digest.hexdigest()}
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(memo_path, lambda p: p.write_text(json.dumps(memo, indent=1)))
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
    """Everything a model's logits on ``data`` depend on, as a JSON-ready dict (its digest names the entry).

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


class PredictionStore:
    """One cache entry: the shards of a model's logits on a data set, read and appended to.

    A shard is written every ``shard_batches`` batches (a few seconds of work on the device at the default
    batch sizes); :meth:`flush` writes the rest.
    """

    def __init__(self, folder: Path, *, num_classes: int, shard_batches: int = SHARD_BATCHES) -> None:
        self.folder = folder
        self.num_classes = num_classes
        self.shard_batches = shard_batches
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def open(cls, key: dict, *, name: str, num_classes: int, shard_batches: int = SHARD_BATCHES,
             root: Path | None = None) -> PredictionStore:
        """The entry for ``key`` (created with its manifest when new).

        Raises:
            AuditError: the cache folder cannot be created.
        """
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        folder = (root or cache_root()) / digest
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AuditError(f"expected a writable cache folder at {folder}, got {err.strerror}; set KD_AUDIT_CACHE "
                             "to another folder or pass --no-cache") from None
        if not (folder / MANIFEST).exists():
            manifest = {"key": key, "name": name, "num_classes": num_classes,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            write_atomic(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
        return cls(folder, num_classes=num_classes, shard_batches=shard_batches)

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.safetensors"))

    def cached_batches(self) -> set[int]:
        """Indices of the batches whose logits are on disk."""
        from safetensors import safe_open

        done: set[int] = set()
        for shard in self._shards():
            with safe_open(str(shard), framework="pt") as f:
                done.update(f.get_tensor("batch").unique().tolist())
        return done

    def load(self, batches: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (n,) int64 and logits (n, K) float32 of the given cached batches."""
        from safetensors import safe_open

        wanted = torch.tensor(sorted(set(batches)), dtype=torch.int64)
        rows, logits = [torch.empty(0, dtype=torch.int64)], [torch.empty(0, self.num_classes)]
        for shard in self._shards() if wanted.numel() else []:
            with safe_open(str(shard), framework="pt") as f:
                keep = torch.isin(f.get_tensor("batch"), wanted)
                if keep.any():
                    rows.append(f.get_tensor("rows")[keep])
                    logits.append(f.get_tensor("logits")[keep])
        return torch.cat(rows), torch.cat(logits)

    def add(self, batch: int, rows: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep one batch's logits; write a shard once ``shard_batches`` batches are pending."""
        self._pending.append((batch, rows, logits))
        if len(self._pending) >= self.shard_batches:
            self.flush()

    def flush(self) -> None:
        """Write the pending batches as one shard, named by its first batch index."""
        if not self._pending:
            return
        from safetensors.torch import save_file

        tensors = {
            "batch": torch.cat([torch.full((r.numel(),), b, dtype=torch.int64) for b, r, _ in self._pending]),
            "rows": torch.cat([r for _, r, _ in self._pending]).long(),
            "logits": torch.cat([x for _, _, x in self._pending]).float().contiguous(),
        }
        path = self.folder / f"shard-{self._pending[0][0]:09d}.safetensors"
        write_atomic(path, lambda p: save_file(tensors, str(p)))
        self._pending = []


def list_cache() -> list[dict]:
    """One dict per cache entry: digest, name, rows cached out of n, shards, bytes, created, and its key.

    >>> list_cache()  # doctest: +SKIP
    [{'digest': '9c1e...', 'name': 'teacher', 'rows': 872, 'n': 872, 'shards': 1, 'bytes': 9216, ...}]
    """
    from safetensors import safe_open

    root = cache_root()
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text())
        shards = sorted(folder.glob("shard-*.safetensors"))
        rows = 0
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                rows += f.get_slice("rows").get_shape()[0]
        out.append({"digest": folder.name, "name": manifest["name"], "rows": rows, "n": manifest["key"].get("n"),
                    "shards": len(shards), "bytes": sum(f.stat().st_size for f in folder.iterdir()),
                    "created": manifest["created"], "key": manifest["key"]})
    return out


def clear_cache() -> int:
    """Delete every cached prediction (and the remembered file hashes); return the number of entries removed."""
    root = cache_root()
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.iterdir():
        if path.is_dir():
            removed += (path / MANIFEST).exists()
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
