"""What every saved report carries around its numbers: the versions that produced it, and strict JSON (no NaN)
written atomically."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch

from audit.atomic import write_atomic


def versions() -> dict[str, str]:
    """Versions of what produced a report (read from package metadata: importing transformers costs memory)."""
    from importlib.metadata import version

    return {"kd-audit": version("kd-audit"), "torch": torch.__version__, "transformers": version("transformers"),
            "python": platform.python_version()}


def json_ready(value):
    """``value`` with every non-finite float made ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def json_text(report: dict) -> str:
    """The report as strict JSON text."""
    return json.dumps(json_ready(report), indent=2, allow_nan=False)


def write_json(report: dict, path: str | Path) -> None:
    """Write the report as strict JSON, atomically (a temp file renamed into place)."""
    write_atomic(path, lambda tmp: tmp.write_text(json_text(report)))
