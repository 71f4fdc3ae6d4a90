"""Output paths: checked before any work, and written all or nothing.

Every command declares what it will write (:class:`Output`) and what it reads; :func:`check_outputs` refuses,
before anything is loaded or computed, an output that is an input (or would write into or over one), a file
path that is a folder or the reverse, a parent that is a file, and a place that cannot be written (a
read-only folder, ``/proc``). :func:`write_files` then writes a set of files as one transaction: every file
goes to a temp name beside its target first, and only when all are written are they renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError


@dataclass(frozen=True)
class Output:
    """A path a command will write: a ``"file"`` or a ``"folder"``, named by its option for messages."""

    path: Path
    kind: str
    option: str


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(output: Output, path: Path) -> None:
    anchor = _first_existing(path if output.kind == "folder" else path.parent)
    if not anchor.is_dir():
        raise AuditError(f"expected a folder above {output.option} {path}, got the file {anchor}; choose another path")
    try:  # the one reliable test of writability (os.access is wrong for root, /proc and some mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".kd-audit-probe-", dir=anchor))
    except OSError as err:
        raise AuditError(f"expected a writable place for {output.option} {path}, got {anchor} "
                         f"({err.strerror or type(err).__name__}); choose another path") from None


def check_outputs(outputs: list[Output], inputs: list[str | Path]) -> None:
    """Refuse outputs that cannot be written or would touch an input; writes nothing.

    Args:
        outputs: what the command will write.
        inputs: paths it reads (data files and folders, checkpoints, logits files); strings that are not
            existing paths (hub ids, built-in names) are ignored.

    Raises:
        AuditError: the first problem found, naming the option and the path.
    """
    read = [_absolute(p) for p in inputs if p is not None and Path(p).expanduser().exists()]
    read += [Path(os.path.realpath(p)) for p in read]
    seen: dict[Path, str] = {}
    for output in outputs:
        path = _absolute(output.path)
        if output.kind == "file" and path.is_dir():
            raise AuditError(f"expected a file path for {output.option}, got the folder {path}; name a file")
        if output.kind == "folder" and path.exists() and not path.is_dir():
            raise AuditError(f"expected a folder for {output.option}, got the file {path}; name a folder")
        for target in {path, Path(os.path.realpath(path))}:
            for source in read:
                if target == source or _inside(target, source) or (output.kind == "folder" and _inside(source, target)):
                    raise AuditError(f"expected {output.option} to be separate from the inputs, got {path}, which "
                                     f"{'is' if target == source else 'overlaps'} the input {source}; write elsewhere")
        for other, option in seen.items():
            if path == other or _inside(path, other) or _inside(other, path):
                raise AuditError(f"expected {output.option} and {option} to be different paths, got {path} for both; "
                                 "give each its own")
        seen[path] = output.option
        _check_writable(output, path)


def write_files(files: dict[Path, bytes]) -> list[Path]:
    """Write several files as one transaction: all of them, or (on any error) none.

    Raises:
        AuditError: a file could not be written (nothing of this call is left behind).
    """
    staged: list[tuple[Path, Path]] = []
    made: list[Path] = []
    try:
        for path, content in files.items():
            path = Path(path)
            for folder in reversed([path.parent, *path.parent.parents]):
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged.append((tmp, path))
            tmp.write_bytes(content)
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as err:
        for tmp, _ in staged:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # never created (its folder could not be)
                pass
        for folder in reversed(made):
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise AuditError(f"expected to write {len(files)} output files, got {err.strerror or err} on "
                         f"{getattr(err, 'filename', None) or 'one of them'}; nothing was written") from None
    return [path for _, path in staged]
