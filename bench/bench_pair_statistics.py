"""The classifier report's pair statistics (issue 25): seven statistics with 1000-resample percentile-bootstrap
CIs over examples, batched (``audit.stats.inheritance.pair_statistics``) against the two ways it can be done
one piece at a time.

Run: ``python -m pytest bench/bench_pair_statistics.py`` (add ``--benchmark-json=out.json`` to keep the numbers).

Providers, on the same logits (a grid of logits, so confidences tie as a classifier's do on short texts):

- **ours**: ``pair_statistics``: one (B, N) index chunk drawn for all seven statistics, Spearman's ranks of
  every resample counted from the sample's sorted order (no sort per resample), one read-back of the CIs;
- **before**: the code before issue 25, rebuilt: one bootstrap per statistic, each drawing its own (identical)
  indices and gathering by advanced indexing, Spearman by sorting every resample of the chunk (:func:`before`);
- **loop**: the straightforward reference: the same index stream, every statistic evaluated on one resample
  at a time with the 1-D functions (:func:`per_resample`).

The values are asserted equal to the loop's to 1e-12 (they are equal bit for bit at one thread), and to
before's, in every round. Timing is by :func:`fair.alternate`: one thread, providers alternated round by round
after the same warm-up, the ratio taken per round and its median the figure (``extra_info``: per-round seconds
and ratios, median and range, the load average). Target: ours at least :data:`TARGET_SPEEDUP` x before (a CPU
speed target: ``--kd-targets`` in ``bench/conftest.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from fair import alternate
from kd_targets import Target

from audit import stats
from audit.stats.inheritance import PAIR_STATISTICS, is_constant, pair_statistics
from audit.stats.stats import MAX_CHUNK_ELEMENTS

N_BOOTSTRAP, SEED = 1000, 0
# (N, K, alternated rounds): the default compare's one pair, and a larger set drawn in several chunks
CASES = {"default compare (N=1057, K=2)": (1057, 2, 5), "N=20000, K=3": (20_000, 3, 3)}
LOOP_MAX_N = 5000  # the per-resample loop only where it takes seconds, not minutes
WARMUP = 1
TARGET_SPEEDUP = 3.0  # ours over before (measured ratios in bench/RESULTS.md)
VALUE_ATOL = 1e-12


def logits_pair(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    teacher = (4 * torch.randn(n, k, generator=g)).round() / 2  # logits on a grid of 0.5: tied confidences
    student = (0.8 * teacher + torch.randn(n, k, generator=g)).mul(2).round() / 2
    return teacher, student


def _per_example(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    log_t = torch.log_softmax(teacher_logits.float(), -1)
    log_s = torch.log_softmax(student_logits.float(), -1)
    p_t, p_s = log_t.exp(), log_s.exp()
    h_t, h_s = stats.entropy(p_t), stats.entropy(p_s)
    m_t, m_s = stats.max_probability(p_t), stats.max_probability(p_s)
    return {"agreement": (stats.agreement(log_t, log_s).float(),), "kl": (stats.kl_divergence(log_t, log_s),),
            "entropy_shift": (h_s - h_t,), "corr_entropy_pearson": (h_t, h_s), "corr_entropy_spearman": (h_t, h_s),
            "corr_maxprob_pearson": (m_t, m_s), "corr_maxprob_spearman": (m_t, m_s)}


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(-1)


def _sorted_spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return stats.spearman(x, y)  # on (B, N) or (N,) resamples: ranks by sorting each


FUNCTIONS = {"agreement": _mean, "kl": _mean, "entropy_shift": _mean,
             "corr_entropy_pearson": stats.pearson, "corr_entropy_spearman": _sorted_spearman,
             "corr_maxprob_pearson": stats.pearson, "corr_maxprob_spearman": _sorted_spearman}


def _interval(resampled: torch.Tensor) -> tuple[float, float]:
    alpha = (1 - 0.95) / 2
    low, high = torch.quantile(resampled, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return low, high


def ours(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    out = pair_statistics(teacher_logits, student_logits, n_bootstrap=N_BOOTSTRAP, seed=SEED)
    return {key: (out[key]["value"], *out[key]["ci"]) for key in PAIR_STATISTICS}


def _bootstrap_ci_before(statistic, *samples: torch.Tensor) -> tuple[float, float]:
    """``audit.stats.bootstrap_ci`` before issue 25 (its input checks left out): its own draws, chunked,
    advanced indexing, ``statistic`` on each chunk of resamples."""
    n = samples[0].shape[0]
    chunk = max(1, MAX_CHUNK_ELEMENTS // (n * (1 + sum(s[0].numel() for s in samples))))
    generator = torch.Generator().manual_seed(SEED)
    values = []
    for start in range(0, N_BOOTSTRAP, chunk):
        index = torch.randint(0, n, (min(chunk, N_BOOTSTRAP - start), n), generator=generator)
        values.append(statistic(*(s[index] for s in samples)).double())
    return _interval(torch.cat(values))


def before(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """pair_statistics before issue 25: a constant check and a bootstrap (its own draws) per statistic,
    Spearman by sorting every resample."""
    per_example = _per_example(teacher_logits, student_logits)
    out = {}
    for key in PAIR_STATISTICS:
        samples, fn = per_example[key], FUNCTIONS[key]
        assert not any(is_constant(x) for x in samples if len(samples) == 2)
        out[key] = (float(fn(*samples)), *_bootstrap_ci_before(fn, *samples))
    return out


def per_resample(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """The reference: bootstrap_ci's index stream, then each statistic on one (N,) resample at a time."""
    per_example = _per_example(teacher_logits, student_logits)
    n = teacher_logits.shape[0]
    generator = torch.Generator().manual_seed(SEED)
    index = torch.randint(0, n, (N_BOOTSTRAP, n), generator=generator)  # CPU: the stream of any chunking
    out = {}
    for key in PAIR_STATISTICS:
        samples, fn = per_example[key], FUNCTIONS[key]
        resampled = torch.tensor([float(fn(*(s[row] for s in samples))) for row in index], dtype=torch.float64)
        out[key] = (float(fn(*samples)), *_interval(resampled))
    return out


def _assert_equal(got: dict, expected: dict, who: str) -> None:
    for key in PAIR_STATISTICS:
        assert all(map(math.isfinite, got[key])), key
        for a, b in zip(got[key], expected[key]):
            assert abs(a - b) <= VALUE_ATOL, f"{key}: ours {got[key]} vs {who} {expected[key]}"


@pytest.mark.parametrize("case", list(CASES))
def test_pair_statistics_batched_bootstrap(benchmark, targets, case):
    n, k, n_rounds = CASES[case]
    args = logits_pair(n, k)
    providers = {"ours": ours, "before": before}
    if n <= LOOP_MAX_N:
        providers["loop"] = per_resample

    def agree(results: dict) -> None:
        for name in providers:
            if name != "ours":
                _assert_equal(results["ours"], results[name], name)

    measured = alternate(benchmark, {name: (lambda f=f: f(*args)) for name, f in providers.items()},
                         rounds=n_rounds, warmup=WARMUP, check=agree,
                         ratios={f"{name} / ours": (name, "ours") for name in providers if name != "ours"})
    benchmark.extra_info.update(n=n, k=k, n_bootstrap=N_BOOTSTRAP)
    targets(benchmark, Target(f"ours over before, median of {n_rounds} alternated rounds",
                              measured.ratios["before / ours"].median, TARGET_SPEEDUP, "x", at_most=False))
