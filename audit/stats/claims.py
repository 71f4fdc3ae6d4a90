"""The claims of docs/CLAIMS.md as data, the verdict rule for empirical claims, and the claims table.

Two kinds of claim, kept apart:

- ``"math"`` (P1-P13): exact facts about the losses, checked by property tests; a claim holds when its
  tests pass.
- ``"empirical"`` (C1a-C2b): statements about trained models on held-out data; a check measures a
  statistic with a confidence interval and :func:`verdict` turns it into negligible / holds / fails /
  inconclusive, given the smallest effect worth reporting (``delta``, :func:`entropy_delta`,
  :data:`CORRELATION_DELTA`, :data:`RANK_CORRELATION_DELTA`).
- ``"exploratory"`` (X1): a question the paper did not ask, decided like an empirical claim but not one
  of C1-C2; it appears in a table only where a check recorded it.

The test suite and the replication recipes both report through :class:`ClaimResult`, and both print
:func:`format_table` of :func:`table_rows`; a claim checked several ways gets the weakest verdict of its
checks (:func:`overall_verdicts`).

>>> verdict(0.4, (0.1, 0.7), delta=0.05)
'holds'
>>> CLAIMS["P8"].kind
'math'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from audit.errors import AuditError
from audit.settings import VerdictRule

Verdict = Literal["negligible", "holds", "fails", "inconclusive", "insufficient"]
VERDICTS: tuple[str, ...] = ("negligible", "holds", "fails", "inconclusive", "insufficient")
OVERALL_ORDER = ("fails", "insufficient", "inconclusive", "negligible", "holds")
MIN_CLUSTERS = VerdictRule.min_clusters  # the fewest bootstrap clusters a verdict needs (docs/CLAIMS.md)  # a claim's verdict is its weakest check's

CORRELATION_DELTA = 0.02
"""delta of CLAIMS.md for a difference of two correlations (C2b)."""
RANK_CORRELATION_DELTA = 0.1
"""delta of CLAIMS.md for a rank correlation over teachers (C2a)."""


def entropy_delta(num_classes: int) -> float:
    """delta of CLAIMS.md for a difference of mean entropies: 1% of log K nats (0.0069 for K = 2).

    Raises:
        AuditError: K < 2.

    >>> round(entropy_delta(2), 4)
    0.0069
    """
    if num_classes < 2:
        raise AuditError(f"expected at least 2 classes, got {num_classes}; pass the task's number of classes")
    return 0.01 * math.log(num_classes)


@dataclass(frozen=True)
class Claim:
    """One claim of CLAIMS.md: ``id`` as there, a one-line ``statement``, its ``kind`` and the
    ``tolerance`` a math claim is checked to (``""`` for empirical claims)."""

    id: str
    statement: str
    kind: Literal["math", "empirical", "exploratory"]
    tolerance: str = ""


_CATALOGUE = (
    Claim("P1", "LS target q' sums to 1, q'_y = 1-a+a/K, q'_k = a/K", "math", "1e-12"),
    Claim("P2", "H(q',p) = (1-a) H(e_y,p) + a (KL(u||p) + log K)", "math", "1e-10"),
    Claim("P3", "LS = KD with uniform teacher at T=1 (+ a log K), same gradient; not for T != 1", "math", "1e-10"),
    Claim("P4", "at T=1, (1-w) H(e_y,p) + w H(q,p) = H((1-w) e_y + w q, p)", "math", "1e-10"),
    Claim("P5", "dH(t, softmax z)/dz = softmax(z) - t", "math", "1e-6 (finite diff.)"),
    Claim("P6", "dL_KD/dz = (1-w)(p - e_y) + w T (p^T - q_T)", "math", "1e-6 (finite diff.)"),
    Claim("P7", "minimisers: ERM none; LS q'; KD(T=1) (1-w)e_y+wq; pure KD softmax(v)", "math", "1e-6 optim./exact"),
    Claim("P8", "LS optimal logit gap z*_y - z*_k = log(1 + K(1-a)/a)", "math", "1e-8"),
    Claim("P9", "H(q'(a)) strictly increases on [0, 1], from 0 to log K", "math", "exact"),
    Claim("P10", "H(softmax(z/T)) non-decreasing in T to log K; T^2 * soft gradient stays O(1)", "math", "exact/asympt."),
    Claim("P11", "Mueller smoothness index of the LS target equals a", "math", "1e-12"),
    Claim("P12", "teacher q_y >= 1/K: H((1-w) e_y + w q) <= H((1-w) e_y + w u)", "math", "exact"),
    Claim("P13", "T=1 optimal student gold prob. (1-w) + w q_y, increasing in q_y", "math", "exact"),
    Claim("C1a", "LS student has higher mean dev entropy than ERM", "empirical"),
    Claim("C1b", "KD student (stronger teacher) has lower mean dev entropy than LS and ERM", "empirical"),
    Claim("C1c", "reversed KD raises entropy over ERM, by less than LS", "empirical"),
    Claim("C2a", "KD student's mean entropy increases with the teacher's (rank corr. > 0)", "empirical"),
    Claim("C2b", "per-example student/teacher confidence correlation, higher under KD", "empirical"),
    Claim("X1", "KD student's fitted temperature T* rises with its teacher's (rank corr. > 0)", "exploratory"),
)

CLAIMS: Mapping[str, Claim] = {claim.id: claim for claim in _CATALOGUE}
"""Every claim of CLAIMS.md by id, in the document's order, then the exploratory ones."""


def _check_claim_id(claim_id: str) -> None:
    if claim_id not in CLAIMS:
        raise AuditError(f"expected a claim id of CLAIMS.md ({', '.join(CLAIMS)}), got {claim_id!r}; fix the id")


def verdict(estimate: float, ci: tuple[float, float], direction: int = +1, *, delta: float,
            n_clusters: int | None = None) -> Verdict:
    """The verdict on an empirical claim from a statistic, its confidence interval and the smallest effect
    worth reporting, by the rule of CLAIMS.md.

    The claim says the statistic is positive (``direction=+1``) or negative (``direction=-1``). It is
    ``"negligible"`` when the whole interval lies inside [-delta, +delta]; it ``"holds"`` when the whole
    interval lies strictly on the claimed side of zero and the estimate is outside [-delta, +delta],
    ``"fails"`` when the same is true on the other side; anything else (the interval contains zero, or
    straddles an edge of the band with the estimate inside it) is ``"inconclusive"``. A CI from fewer than
    :data:`MIN_CLUSTERS` bootstrap clusters (``n_clusters``: examples, or sequences of tokens) carries no verdict:
    ``"insufficient"``.

    Args:
        estimate: the point estimate; must lie inside ``ci``.
        ci: (low, high) with low <= high, both finite.
        direction: +1 or -1, the sign the claim predicts.
        delta: the band's half-width, >= 0 (see :func:`entropy_delta`, :data:`CORRELATION_DELTA`,
            :data:`RANK_CORRELATION_DELTA`).

    Raises:
        AuditError: a non-finite value, low > high, an estimate outside the interval, a direction
            other than +1/-1, or a negative delta.

    >>> verdict(-0.2, (-0.5, 0.1), delta=0.01)
    'inconclusive'
    >>> verdict(-0.2, (-0.5, -0.1), direction=-1, delta=0.01)
    'holds'
    >>> verdict(0.002, (-0.001, 0.005), delta=0.01)
    'negligible'
    >>> verdict(0.008, (0.002, 0.014), delta=0.01)
    'inconclusive'
    """
    low, high = ci
    if direction not in (1, -1):
        raise AuditError(f"expected direction +1 or -1, got {direction!r}; pass the sign the claim predicts")
    if not all(math.isfinite(x) for x in (estimate, low, high, delta)):
        raise AuditError(f"expected a finite estimate, interval and delta, got {estimate} in {ci}, delta {delta}; "
                         "check the statistic")
    if delta < 0:
        raise AuditError(f"expected delta >= 0, got {delta}; pass the smallest effect worth reporting")
    if not low <= estimate <= high:
        raise AuditError(f"expected low <= estimate <= high, got {estimate} in {ci}; pass (low, high) of this estimate")
    if n_clusters is not None and n_clusters < MIN_CLUSTERS:
        return "insufficient"
    if -delta <= low and high <= delta:
        return "negligible"
    if abs(estimate) > delta:
        low, high = sorted((direction * low, direction * high))
        if low > 0:
            return "holds"
        if high < 0:
            return "fails"
    return "inconclusive"


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of one check of one claim.

    Attributes:
        claim_id: an id of :data:`CLAIMS`.
        verdict: one of :data:`VERDICTS`.
        statistic: name of the measured statistic, e.g. "mean entropy difference (LS - ERM)".
        value: its point estimate.
        ci: (low, high) confidence interval, or None for a math check.
        detail: free text (settings, seeds, n).
        delta: the smallest effect worth reporting the verdict used, or None for a math check.

    Raises:
        AuditError: an unknown claim id or verdict.

    >>> ClaimResult.from_interval("C1a", "entropy LS - ERM", 0.3, (0.1, 0.5), delta=0.0069).verdict
    'holds'
    """

    claim_id: str
    verdict: Verdict
    statistic: str
    value: float
    ci: tuple[float, float] | None = None
    detail: str = ""
    delta: float | None = None

    def __post_init__(self) -> None:
        _check_claim_id(self.claim_id)
        if self.verdict not in VERDICTS:
            raise AuditError(f"expected a verdict in {VERDICTS}, got {self.verdict!r}; use audit.stats.claims.verdict")

    @classmethod
    def from_interval(
        cls, claim_id: str, statistic: str, value: float, ci: tuple[float, float], *, delta: float,
        direction: int = +1, detail: str = "", n_clusters: int | None = None,
    ) -> ClaimResult:
        """A result whose verdict is :func:`verdict` of ``value``, ``ci``, ``direction``, ``delta`` and
        ``n_clusters``."""
        ci = (float(ci[0]), float(ci[1]))
        return cls(claim_id, verdict(value, ci, direction, delta=delta, n_clusters=n_clusters), statistic, value, ci,
                   detail, delta)

    @property
    def figure(self) -> str:
        """The measured figure as the claims table shows it, e.g. ``"rho=0.41 [0.12, 0.66] delta 0.1"``."""
        interval = "" if self.ci is None else f" [{self.ci[0]:.3g}, {self.ci[1]:.3g}]"
        band = "" if self.delta is None else f" delta {self.delta:.2g}"
        return f"{self.statistic}={self.value:.3g}{interval}{band}"


def smoothed_targets(labels: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """The label-smoothing target ``q' = (1-a) e_y + a/K`` of CLAIMS.md, one row per label.

    The losses never build it (they use ``H(q', p)`` in closed form); it is here for checks of the
    claims that are statements about the target itself (P9, P11, P12).

    Args:
        labels: (N,) integer class ids in [0, K).
        num_classes: K >= 1.
        label_smoothing: a in [0, 1].

    Returns:
        (N, K) float64 rows summing to 1.

    Raises:
        AuditError: a in the wrong range or labels out of range.

    >>> smoothed_targets(torch.tensor([1]), 2, 0.2)
    tensor([[0.1000, 0.9000]], dtype=torch.float64)
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise AuditError(f"expected label_smoothing in [0, 1], got {label_smoothing}")
    uniform = torch.full((labels.shape[0], num_classes), 1.0 / num_classes, dtype=torch.float64, device=labels.device)
    return distilled_targets(labels, uniform, label_smoothing)


def distilled_targets(labels: torch.Tensor, teacher_probs: torch.Tensor, kd_weight: float) -> torch.Tensor:
    """The T=1 KD target ``(1-w) e_y + w q`` of CLAIMS.md (P4, P7, P12, P13).

    Args:
        labels: (N,) integer class ids in [0, K).
        teacher_probs: (N, K) teacher distributions q.
        kd_weight: w in [0, 1].

    Returns:
        (N, K) rows in the promoted dtype of ``teacher_probs`` and float64.

    Raises:
        AuditError: w out of range, mismatched shapes, labels out of range.

    >>> distilled_targets(torch.tensor([0]), torch.tensor([[0.5, 0.5]]), 0.5)
    tensor([[0.7500, 0.2500]], dtype=torch.float64)
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise AuditError(f"expected kd_weight in [0, 1], got {kd_weight}")
    if teacher_probs.ndim != 2 or labels.shape != teacher_probs.shape[:1]:
        raise AuditError(
            f"expected labels (N,) and teacher_probs (N, K), got {tuple(labels.shape)} and "
            f"{tuple(teacher_probs.shape)}; pass one label per teacher row"
        )
    k = teacher_probs.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise AuditError(f"expected labels in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")
    q = teacher_probs.to(torch.promote_types(teacher_probs.dtype, torch.float64))
    one_hot = torch.nn.functional.one_hot(labels.long(), k).to(q.dtype)
    return (1.0 - kd_weight) * one_hot + kd_weight * q


@dataclass(frozen=True)
class TableRow:
    """One line of the claims table."""

    claim_id: str
    statement: str
    test: str
    verdict: str
    figure: str


def table_rows(
    outcomes: Mapping[str, Sequence[tuple[str, str]]], results: Iterable[tuple[str, ClaimResult]] = (),
) -> list[TableRow]:
    """The claims table: one row per claim of :data:`CLAIMS` (one per result for empirical claims).

    Args:
        outcomes: claim id -> [(test name, outcome)], outcome "passed", "failed", "error" or "skipped".
        results: (test name, result) pairs recorded by empirical checks.

    Math claims read "holds" when their tests ran and all passed, "fails" when one failed, "error" when
    one could not run; a claim without a test that ran reads "not run". An empirical claim shows each
    recorded verdict and figure; a test that failed without recording one reads "error".

    >>> rows = table_rows({"P8": [("test_p8", "passed")]})
    >>> (rows[7].verdict, rows[0].verdict)
    ('holds', 'not run')
    """
    recorded: dict[str, list[tuple[str, ClaimResult]]] = {}
    for test, result in results:
        recorded.setdefault(result.claim_id, []).append((test, result))
    rows = []
    for claim in CLAIMS.values():
        ran = [(test, outcome) for test, outcome in outcomes.get(claim.id, ()) if outcome != "skipped"]
        status = {outcome for _, outcome in ran}
        tests = sorted({test for test, _ in outcomes.get(claim.id, ())})
        test_cell = "" if not tests else tests[0] + (f" (+{len(tests) - 1})" if len(tests) > 1 else "")
        if claim.id in recorded:
            rows += [TableRow(claim.id, claim.statement, test, r.verdict, r.figure) for test, r in recorded[claim.id]]
            continue
        if claim.kind == "exploratory":
            continue
        if "failed" in status:
            verdict_cell = "error" if claim.kind == "empirical" else "fails"
        elif "error" in status:
            verdict_cell = "error"
        elif status and claim.kind == "math":
            verdict_cell = "holds"
        else:
            verdict_cell = "not run"
        figure = f"tol {claim.tolerance}" if claim.kind == "math" and ran else ""
        rows.append(TableRow(claim.id, claim.statement, test_cell, verdict_cell, figure))
    return rows


def format_table(rows: Sequence[TableRow], width: int = 120) -> list[str]:
    """Plain-text lines of the claims table for a terminal ``width`` columns wide.

    The statement gets the room the other columns leave (at least 30 characters); statement and test
    names that do not fit end in "~"; the figure comes last and is never cut. Where an empirical (or
    exploratory) claim reads "fails", a note under the table says that this is what a check measured on its
    small synthetic data, a finding and not a failed test (a math claim's "fails" is a failed test).

    >>> format_table([TableRow("P8", "optimal gap", "test_p8", "holds", "tol 1e-8")], width=90)[1]
    'P8   optimal gap                    test_p8                            holds        tol 1e-8'
    """
    sizes = [4, 0, 34, 12]  # id, statement, test, verdict ("inconclusive" is 12)
    sizes[1] = max(width - sum(sizes) - 4 - 20, 30)  # 4 separators, ~20 for the figure

    def cell(text: str, size: int) -> str:
        return (text if len(text) <= size else text[: size - 1] + "~").ljust(size)

    lines = []
    for row in (TableRow("id", "statement", "test", "verdict", "figure"), *rows):
        cells = (row.claim_id, row.statement, row.test, row.verdict)
        lines.append((" ".join(cell(text, size) for text, size in zip(cells, sizes, strict=True)) + " " + row.figure).rstrip())
    findings = list(dict.fromkeys(r.claim_id for r in rows if r.verdict == "fails" and r.claim_id in CLAIMS
                                  and CLAIMS[r.claim_id].kind != "math"))
    if findings:
        import textwrap

        lines += textwrap.wrap(f"note: {', '.join(findings)} fails is what a check measured on the tests' small synthetic "
                               "data: a finding about that data, not a failed test (pytest lists failed tests; an "
                               "empirical check that could not run reads error)", max(width, 40))
    return lines


def overall_verdicts(results: list[ClaimResult]) -> dict[str, str]:
    """One verdict per claim id, from the weakest of its checks: fails if any check fails, else insufficient if any
    check had too few clusters, else inconclusive
    if any is inconclusive, else negligible if any is negligible (a part of the claim measured too small to
    matter), else holds (every check holds)."""
    by_claim: dict[str, set[str]] = {}
    for r in results:
        by_claim.setdefault(r.claim_id, set()).add(r.verdict)
    return {claim: next(v for v in OVERALL_ORDER if v in verdicts) for claim, verdicts in by_claim.items()}


def claim_rows(claims: list[ClaimResult]) -> list[dict]:
    """The JSON rows of checked claims (a replicate summary's ``claims``), each with its statement."""
    return [{"claim": r.claim_id, "statement": CLAIMS[r.claim_id].statement, "verdict": r.verdict,
             "statistic": r.statistic, "value": r.value, "ci": list(r.ci), "delta": r.delta, "detail": r.detail}
            for r in claims]


def direction_survives(in_domain: dict[str, str], shifted: dict[str, str]) -> dict[str, bool | None]:
    """Per claim: did the direction measured in-domain survive the shift? True when the in-domain verdict
    (holds or fails) is the shifted one too, False when it is not, None when in-domain gave no direction
    (inconclusive or negligible).

    >>> direction_survives({"C1a": "holds", "C1b": "fails", "C2a": "negligible"},
    ...                    {"C1a": "holds", "C1b": "inconclusive", "C2a": "holds"})
    {'C1a': True, 'C1b': False, 'C2a': None}
    """
    return {c: (shifted.get(c) == v if v in ("holds", "fails") else None) for c, v in in_domain.items()}
