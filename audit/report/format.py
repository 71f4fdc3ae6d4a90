"""The one way reports write a statistic with its confidence interval, a number that may be undefined, and a
verdict with its reason."""

from __future__ import annotations

from collections.abc import Callable

Format = str | Callable[[float], str]  # a format string, or a function of the number


def format_value(value, fmt: Format) -> str:
    """``fmt`` of a number; ``"-"`` for one the report holds as null (undefined).

    >>> format_value(0.25, "{:.3f}"), format_value(None, "{:.3f}")
    ('0.250', '-')
    """
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else fmt.format(value)


def perplexity(value: float) -> str:
    """A perplexity to 3 significant figures, scientific from 1e4 (a perplexity spans many orders).

    >>> [perplexity(v) for v in (1.2345, 55.234, 495.5, 1539.4, 182868144.08)]
    ['1.23', '55.2', '496', '1539', '1.83e+08']
    """
    if value >= 1e4:
        return f"{value:.2e}"
    return f"{value:.0f}" if value >= 1e3 else f"{value:.3g}"


def unit_word(report: dict, plural: bool = True) -> str:
    """What one row of the report's data is: ``"tokens"`` for a token audit, else ``"examples"``."""
    word = "token" if report.get("data", {}).get("unit") == "token" else "example"
    return word + "s" if plural else word


def with_ci(stat: dict | None, fmt: Format) -> str:
    """``"value [lo, hi]"``; ``"undefined"`` for a statistic that has no value (its reason is in the report).

    >>> with_ci({"value": 0.5, "ci": [0.25, 0.75]}, "{:.2f}")
    '0.50 [0.25, 0.75]'
    >>> with_ci({"value": None, "ci": None, "reason": "constant"}, "{:.2f}")
    'undefined'
    """
    if not stat or stat.get("value") is None:
        return "undefined" if stat else "-"
    if not stat.get("ci"):
        return format_value(stat["value"], fmt)
    lo, hi = stat["ci"]
    return f"{format_value(stat['value'], fmt)} [{format_value(lo, fmt)}, {format_value(hi, fmt)}]"


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
