"""The fair-timing helper every CPU benchmark uses (``bench/fair.py``): the thread count it names and restores,
the order it alternates providers in, and the per-round ratios it reports.

Run with the benchmarks: ``python -m pytest bench/test_fair.py``. The ratio tests time real sleeps of known
lengths, different in every round, so that the median of per-round ratios, the ratio of medians and the mean
of ratios are far apart, and a warm-up round counted as timed would move the median.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch
from fair import Ratio, alternate, thread_count
from threadpoolctl import threadpool_info

# milliseconds each provider sleeps in each round, the warm-up round first: per-round ratios a / b of the
# timed rounds are 0.5, 3.0, 2.5 (median 2.5); the ratio of medians is 60 / 40 = 1.5, the mean ratio 2.0;
# with the warm-up round (ratio 0.05) counted the median would be 1.5
SLEEP_MS = {"a": [5, 20, 60, 200], "b": [100, 40, 20, 80]}
EXPECTED_PER_ROUND = [a / b for a, b in zip(SLEEP_MS["a"][1:], SLEEP_MS["b"][1:])]
RATIO_TOLERANCE = 0.15  # sleeps overrun by a millisecond or two on a loaded machine


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def two_threads(monkeypatch):
    """torch at two threads and OMP_NUM_THREADS unset, the state the helper must come back to."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_thread_count_is_set_inside_and_restored_after_an_error(two_threads):
    import numpy  # noqa: F401  (its BLAS pool must be loaded to be limited)

    blas_before = _blas_threads()
    with pytest.raises(RuntimeError, match="inside"), thread_count(1) as count:
        assert count == 1
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert all(n == 1 for n in _blas_threads())
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    assert "OMP_NUM_THREADS" not in os.environ
    assert _blas_threads() == blas_before


def test_thread_count_restores_a_set_environment(two_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with thread_count(3):
        assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
    assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "7"


def test_a_provider_that_raises_leaves_the_threads_restored(two_threads):
    def broken() -> None:
        raise ValueError("provider failed")

    with pytest.raises(ValueError, match="provider failed"):
        alternate(None, {"ok": lambda: None, "broken": broken}, rounds=2, warmup=1, threads=1)
    assert torch.get_num_threads() == 2
    assert "OMP_NUM_THREADS" not in os.environ


def test_providers_alternate_in_a_rotated_order_with_the_same_rounds(two_threads):
    calls, seen_threads = [], []

    def provider(name: str):
        def run() -> str:
            calls.append(name)
            seen_threads.append(torch.get_num_threads())
            return f"{name}{len(calls)}"
        return run

    measured = alternate(None, {n: provider(n) for n in "abc"}, rounds=3, warmup=2, threads=1)
    expected = ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c", "b", "c", "a"]  # 2 warm-up + 3 rounds
    assert calls == expected
    assert measured.orders == [tuple(expected[i:i + 3]) for i in range(0, 15, 3)]
    assert [calls.count(n) for n in "abc"] == [5, 5, 5]
    assert len(measured.seconds) == 3 and all(set(r) == set("abc") for r in measured.seconds)
    assert measured.results == {"b": "b13", "c": "c14", "a": "a15"}  # the last round's
    assert set(seen_threads) == {1}
    assert torch.get_num_threads() == 2


def test_check_sees_every_round_warm_up_included():
    seen = []
    alternate(None, {"x": lambda: 1, "y": lambda: 2}, rounds=2, warmup=1, check=lambda r: seen.append(dict(r)))
    assert seen == [{"x": 1, "y": 2}] * 3


def _sleepers() -> dict:
    turns = {"a": 0, "b": 0}

    def sleeper(name: str):
        def run() -> None:
            time.sleep(SLEEP_MS[name][turns[name]] / 1e3)
            turns[name] += 1
        return run

    return {"a": sleeper("a"), "b": sleeper("b")}


def test_the_ratio_is_the_median_of_per_round_ratios(benchmark):
    measured = alternate(benchmark, _sleepers(), rounds=3, warmup=1, ratios={"a / b": ("a", "b")})
    ratio = measured.ratios["a / b"]
    assert ratio.per_round == pytest.approx(EXPECTED_PER_ROUND, rel=RATIO_TOLERANCE)
    assert ratio.median == pytest.approx(statistics.median(EXPECTED_PER_ROUND), rel=RATIO_TOLERANCE)
    assert (ratio.low, ratio.high) == (min(ratio.per_round), max(ratio.per_round))
    assert ratio.low == pytest.approx(0.5, rel=RATIO_TOLERANCE) and ratio.high == pytest.approx(3.0, rel=RATIO_TOLERANCE)
    assert measured.median("a") == pytest.approx(0.060, rel=RATIO_TOLERANCE)
    info = json.loads(json.dumps(benchmark.extra_info))  # lands in pytest-benchmark's JSON as is
    assert info["threads"] == 1 and info["rounds"] == 3 and info["warmup_rounds"] == 1
    assert info["ratios"]["a / b"]["median"] == ratio.median
    assert info["ratios"]["a / b"]["range"] == [ratio.low, ratio.high]
    assert info["ratios"]["a / b"]["per_round"] == list(ratio.per_round)
    assert [s["a"] for s in info["seconds"]] == pytest.approx([0.02, 0.06, 0.2], rel=RATIO_TOLERANCE)
    assert set(info["load_average"]) == {"before", "after"}


def test_ratio_summary_of_given_rounds():
    ratio = Ratio((0.5, 3.0, 2.5, 1.0))
    assert ratio.median == 1.75 and (ratio.low, ratio.high) == (0.5, 3.0)
    assert ratio.describe() == "1.75x [0.5-3]"


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"warmup": -1}, {"ratios": {"x": ("a", "nope")}}])
def test_bad_arguments_are_refused(bad):
    kwargs = {"rounds": 1, **bad}
    with pytest.raises(ValueError, match="expected"):
        alternate(None, {"a": lambda: None}, **kwargs)
