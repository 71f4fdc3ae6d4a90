"""What a benchmark asks of a figure: :class:`Target`, and the machines a target is meant for.

Imported by ``bench/conftest.py`` (the ``targets`` fixture and ``--kd-targets``) and by the benchmarks
(pytest puts ``bench/`` on ``sys.path``: ``from kd_targets import Target``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


class TargetMissed(UserWarning):
    """A speed target missed under ``--kd-targets=report``."""


def _hopper() -> bool:
    return torch.cuda.is_available() and any(name in torch.cuda.get_device_name() for name in ("H100", "H200"))


# Where a target is meant to be checked: GPU targets were set for an H100/H200, CPU targets for any CPU run, and
# targets set for two cores where there are at least two.
MACHINES: dict[str, Callable[[], bool]] = {"h100/h200": _hopper, "cpu": lambda: True,
                                           "cpu, 2+ cores": lambda: (os.cpu_count() or 1) >= 2}


@dataclass(frozen=True)
class Target:
    """One figure against its target: ``measured <= limit`` (``at_most``) or ``measured >= limit``.

    ``kind`` is "speed" (reportable on a noisy machine) or "memory" (always enforced); ``machine`` a key
    of :data:`MACHINES`.
    """

    name: str
    measured: float
    limit: float
    unit: str = ""
    at_most: bool = True
    kind: str = "speed"
    machine: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in ("speed", "memory") or self.machine not in MACHINES:
            raise ValueError(f"expected kind speed|memory and machine in {sorted(MACHINES)}, "
                             f"got {self.kind!r}, {self.machine!r}; fix the benchmark's Target")

    @property
    def met(self) -> bool:
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def describe(self) -> str:
        relation = "<=" if self.at_most else ">="
        return f"{self.name}: {self.measured:.4g}{self.unit}, target {relation} {self.limit:.4g}{self.unit}"
