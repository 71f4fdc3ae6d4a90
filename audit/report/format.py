"""The one way reports write a statistic with its confidence interval."""

from __future__ import annotations


def with_ci(stat: dict | None, fmt: str) -> str:
    """``"value [lo, hi]"``; ``"undefined"`` for a statistic that has no value (its reason is in the report).

    >>> with_ci({"value": 0.5, "ci": [0.25, 0.75]}, "{:.2f}")
    '0.50 [0.25, 0.75]'
    >>> with_ci({"value": None, "ci": None, "reason": "constant"}, "{:.2f}")
    'undefined'
    """
    if not stat or stat.get("value") is None:
        return "undefined" if stat else "-"
    if not stat.get("ci"):
        return fmt.format(stat["value"])
    lo, hi = stat["ci"]
    return f"{fmt.format(stat['value'])} [{fmt.format(lo)}, {fmt.format(hi)}]"
