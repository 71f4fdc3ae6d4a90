"""The one way reports write a statistic with its confidence interval, a number that may be undefined, and a
verdict with its reason."""

from __future__ import annotations


def format_value(value, fmt: str) -> str:
    """``fmt`` of a number; ``"-"`` for one the report holds as null (undefined).

    >>> format_value(0.25, "{:.3f}"), format_value(None, "{:.3f}")
    ('0.250', '-')
    """
    return "-" if value is None else fmt.format(value)


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


def verdict_sentence(verdict: str, reason: str) -> tuple[str, str]:
    """A pair's verdict as it is read, and what its reason adds: the reason continues the sentence where it
    opens with the verdict itself (so the verdict is said once), and stands in parentheses where it does not.

    >>> verdict_sentence("inconclusive", "inconclusive: a CI crosses a threshold")
    ('inconclusive', ': a CI crosses a threshold')
    >>> verdict_sentence("inherits", "inherits the teacher's confidence: rho 0.8")
    ('inherits', " the teacher's confidence: rho 0.8")
    >>> verdict_sentence("inconclusive", "cannot decide: KL is undefined")
    ('inconclusive', ' (cannot decide: KL is undefined)')
    """
    label = verdict.replace("_", " ")
    rest = reason[len(label):] if reason.startswith(label) else None
    if rest is not None and (not rest or rest[0] in " :;,."):
        return label, rest
    return label, f" ({reason})"
