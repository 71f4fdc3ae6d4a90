"""What every saved report carries around its numbers: the versions that produced it, and strict JSON (no NaN)
written atomically."""

from __future__ import annotations

import datetime
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from audit.atomic import write_atomic
from audit.settings import CompareSettings


def envelope(schema: str, settings: CompareSettings, *, data: dict, models: dict, pairs: list[dict],
             students: list[dict], run: dict | None = None, **extra) -> dict:
    """A compare report of any model kind: its numbers (``models``, ``pairs``, ``students``) in the envelope every
    saved report has (schema, creation time, versions, the settings and how the models ran, the data).

    ``extra`` adds top-level fields (``schema_changes``, ``calibration``)."""
    return {
        "schema": schema,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": {**{k: v for k, v in asdict(settings).items() if k not in ("progress", "cache")}, **(run or {})},
        "data": data,
        "models": models,
        "pairs": pairs,
        "students": students,
        **extra,
    }


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
