"""Fair timing for the CPU benchmarks: a named thread count, providers alternated round by round, a ratio per round.

Every CPU benchmark times its providers through :func:`alternate` (pytest puts ``bench/`` on ``sys.path``:
``from fair import alternate``):

- **a named thread count** (:func:`thread_count`; one unless the benchmark names another): torch's intra-op threads,
  the OpenMP and BLAS pools numpy and scipy use (the peers' libraries), and ``OMP_NUM_THREADS`` for launched
  processes, all restored after, whether the rounds end or raise. On a small shared CPU a second thread mostly
  spins, so figures taken at different thread counts do not compare;
- **the same warm-up and the same timed rounds for every provider**, each round running every provider once,
  the order rotated by one from the round before (round ``i`` starts with provider ``i mod n``), so that a slow
  spell of the machine falls on all of them and none always runs first, on a cold cache;
- **the ratio taken per round** (:meth:`Rounds.ratio`: two providers' seconds in the same round), reported as the
  median and range of those ratios (:class:`Ratio`), never as a ratio of medians taken at different times.

What :func:`alternate` measured goes into the benchmark's ``extra_info`` (pytest-benchmark's JSON): the thread
count, the warm-up and timed rounds, each round's order and seconds, each provider's median seconds, each named
ratio's median, range and per-round values, and the load average before and after. The benchmark's own figure
is the time of one round of all providers.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def thread_count(count: int = 1) -> Iterator[int]:
    """Run the body at ``count`` threads: torch's intra-op pool, the OpenMP and BLAS pools of the libraries
    loaded (numpy's, scipy's), and ``OMP_NUM_THREADS`` for processes launched inside; each restored on exit,
    on an exception too. Yields ``count``.

    Raises:
        ValueError: ``count`` is below one.
    """
    if count < 1:
        raise ValueError(f"expected a thread count >= 1, got {count}; name one thread unless the benchmark needs more")
    torch_before, env_before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        torch.set_num_threads(torch_before)
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before


@dataclass(frozen=True)
class Ratio:
    """One provider's seconds over another's, one value per timed round (in round order)."""

    per_round: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def low(self) -> float:
        return min(self.per_round)

    @property
    def high(self) -> float:
        return max(self.per_round)

    def as_dict(self) -> dict[str, object]:
        return {"median": self.median, "range": [self.low, self.high], "per_round": list(self.per_round)}

    def describe(self) -> str:
        """``1.23x [1.10-1.31]``: the median and range, for messages and RESULTS.md."""
        return f"{self.median:.3g}x [{self.low:.3g}-{self.high:.3g}]"


@dataclass
class Rounds:
    """What :func:`alternate` measured.

    ``orders``: the providers' order in every round, warm-up rounds first; ``seconds``: each timed round's
    seconds per provider; ``results``: each provider's return value in the last round; ``ratios``: the named
    ratios asked of :func:`alternate`.
    """

    threads: int
    warmup: int
    orders: list[tuple[str, ...]] = field(default_factory=list)
    seconds: list[dict[str, float]] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    load_average: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """The median seconds of provider ``name`` over the timed rounds."""
        return statistics.median(r[name] for r in self.seconds)

    def ratio(self, numerator: str, denominator: str) -> Ratio:
        """``numerator``'s seconds over ``denominator``'s, round by round (a speed-up of B over A is ``ratio(A, B)``)."""
        return Ratio(tuple(r[numerator] / r[denominator] for r in self.seconds))

    def info(self) -> dict[str, object]:
        """The JSON-ready figures :func:`alternate` writes into ``extra_info``."""
        names = list(self.seconds[0]) if self.seconds else []
        return {"threads": self.threads, "warmup_rounds": self.warmup, "rounds": len(self.seconds),
                "orders": [list(order) for order in self.orders], "seconds": self.seconds,
                "median_s": {name: self.median(name) for name in names},
                "ratios": {name: ratio.as_dict() for name, ratio in self.ratios.items()},
                "load_average": {when: list(value) for when, value in self.load_average.items()}}


def alternate(benchmark, providers: Mapping[str, Callable[[], object]], *, rounds: int, warmup: int = 1,
              threads: int = 1, ratios: Mapping[str, tuple[str, str]] | None = None,
              check: Callable[[dict[str, object]], None] | None = None) -> Rounds:
    """Time ``providers`` alternated: ``warmup`` untimed rounds, then ``rounds`` timed ones, every provider once a
    round in an order rotated by one each round, all at ``threads`` threads (:func:`thread_count`).

    Args:
        benchmark: pytest-benchmark's fixture (its figure is one round of all providers; the measurements go into
            its ``extra_info``), or None to run the rounds without it.
        providers: name -> a call that does the work once (on CUDA, synchronising before it returns).
        ratios: label -> (numerator, denominator): the per-round ratios to report, e.g.
            ``{"before / ours": ("before", "ours")}`` for ours' speed-up over before.
        check: called after every round, warm-up included, with each provider's result of that round (to assert
            that the providers agree; a failed check fails the benchmark).

    Every round is run under ``--benchmark-disable`` too (pytest-benchmark then makes one call), so the
    figures and the checks do not depend on it.

    Raises:
        ValueError: no providers, fewer than one timed round, or a ratio naming an unknown provider.
    """
    names, ratios = list(providers), dict(ratios or {})
    if not names or rounds < 1 or warmup < 0:
        raise ValueError(f"expected providers, rounds >= 1 and warmup >= 0, got {names}, {rounds}, {warmup}")
    unknown = {name for pair in ratios.values() for name in pair} - set(names)
    if unknown:
        raise ValueError(f"expected ratios of the providers {names}, got {sorted(unknown)}")
    measured = Rounds(threads=threads, warmup=warmup)
    every_round: list[dict[str, float]] = []

    def one_round() -> None:
        turn = len(measured.orders) % len(names)
        order = tuple(names[turn:] + names[:turn])
        seconds, results = {}, {}
        for name in order:
            started = time.perf_counter()
            results[name] = providers[name]()
            seconds[name] = time.perf_counter() - started
        measured.orders.append(order)
        every_round.append({name: seconds[name] for name in names})
        measured.results = results
        if check is not None:
            check(results)

    measured.load_average["before"] = os.getloadavg()
    with thread_count(threads):
        if benchmark is None:
            for _ in range(warmup + rounds):
                one_round()
        elif benchmark.enabled:
            benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup, iterations=1)
        else:  # --benchmark-disable: pedantic makes one call, which runs every round
            benchmark.pedantic(lambda: [one_round() for _ in range(warmup + rounds)])
    measured.load_average["after"] = os.getloadavg()
    measured.seconds = every_round[warmup:]
    measured.ratios = {label: measured.ratio(*pair) for label, pair in ratios.items()}
    if benchmark is not None:
        benchmark.extra_info.update(measured.info())
    return measured
