"""Pair statistics and the verdict rule."""

import pytest
import torch

from audit import stats as audit_stats
from audit.stats import stats as stats_impl
from audit.stats.inheritance import (
    PAIR_STATISTICS,
    VerdictRule,
    inheritance_verdict,
    pair_statistics,
    student_differences,
)


def _logits(n=400, k=3, seed=0):
    return 3 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_identical_models():
    z = _logits()
    stats = pair_statistics(z, z.clone(), n_bootstrap=200)
    assert set(stats) == set(PAIR_STATISTICS)
    assert stats["agreement"]["value"] == 1.0
    assert stats["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert stats["entropy_shift"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert stats["corr_entropy_spearman"]["value"] == pytest.approx(1.0)
    label, reason = inheritance_verdict(stats, teacher_entropy_mean=0.5)
    assert label == "inherits" and "Spearman" in reason


def test_student_that_ignores_the_teacher_moves_away():
    stats = pair_statistics(_logits(seed=0), _logits(seed=1), n_bootstrap=200)
    assert abs(stats["corr_entropy_spearman"]["value"]) < 0.2
    assert inheritance_verdict(stats, teacher_entropy_mean=0.5)[0] == "moves_away"


def test_uniformly_sharper_student_moves_away_overall():
    z = _logits()
    stats = pair_statistics(z, 4 * z, n_bootstrap=200)  # same ranking of confidence, much more confident
    assert stats["corr_entropy_spearman"]["value"] > 0.9
    assert stats["entropy_shift"]["ci"][1] < 0
    label, reason = inheritance_verdict(stats, teacher_entropy_mean=float(torch.distributions.Categorical(logits=z).entropy().mean()))
    assert label == "moves_away" and "more confident" in reason


def test_inconclusive_when_ci_crosses_threshold():
    stats = {"corr_entropy_spearman": {"value": 0.55, "ci": [0.45, 0.65]},
             "entropy_shift": {"value": 0.0, "ci": [-0.01, 0.01]}}
    assert inheritance_verdict(stats, 0.5, VerdictRule(min_correlation=0.5))[0] == "inconclusive"


def test_student_differences_are_paired_and_signed():
    z = _logits()
    diffs = student_differences({"sharp": 4 * z, "flat": z / 4}, n_bootstrap=100)
    assert [(d["a"], d["b"]) for d in diffs] == [("sharp", "flat")]
    assert diffs[0]["entropy_difference"]["ci"][0] > 0  # flat minus sharp: higher entropy


# --- the batched bootstrap of issue 25: the same numbers as the per-statistic bootstrap it replaced ---------------

def _tied_case(n, k, seed):
    """Teacher and two students on a grid of logits: many examples share their confidences (ties)."""
    g = torch.Generator().manual_seed(seed)
    t = (2 * torch.randn(n, k, generator=g) / 0.5).round() * 0.5
    s = (0.7 * t + torch.randn(n, k, generator=g)).mul(2).round() / 2
    u = (1.5 * t + 0.8 * torch.randn(n, k, generator=g)).mul(2).round() / 2
    return t, s, u


# Recorded from the code before the change (one bootstrap_ci per statistic and per student pair, Spearman by a
# sort of every resample), as (value, ci low, ci high); "chunked" draws in several chunks whose size differs
# between the one-sample means and the two-sample correlations (MAX_CHUNK_ELEMENTS = 4M, N = 6000).
RECORDED = {
    "small": (dict(n=300, k=3, seed=0), dict(n_bootstrap=500, seed=7), {
        "agreement": (0.6833333373069763, 0.6266666650772095, 0.7366666793823242),
        "kl": (0.24489814043045044, 0.21253825314342975, 0.27867379114031793),
        "entropy_shift": (0.07144968956708908, 0.040893817879259595, 0.10245275218039751),
        "corr_entropy_pearson": (0.595763623714447, 0.5166634798049927, 0.6609584584832191),
        "corr_entropy_spearman": (0.5515076518058777, 0.45794641748070725, 0.6209490120410919),
        "corr_maxprob_pearson": (0.4918712377548218, 0.4090395547449589, 0.5780029892921448),
        "corr_maxprob_spearman": (0.526153028011322, 0.4345983289182186, 0.6093302696943282),
    }, [
        ("s", "u", -0.22140787541866302, -0.2563481375575066, -0.1852521348744631),
        ("s", "t", -0.07144968956708908, -0.1024527670815587, -0.0408938235603273),
        ("u", "t", 0.14995817840099335, 0.13135122805833818, 0.16875083446502684),
    ]),
    "chunked": (dict(n=6000, k=3, seed=1), dict(n_bootstrap=300, seed=0), {
        "agreement": (0.703499972820282, 0.6911666393280029, 0.715666651725769),
        "kl": (0.24220633506774902, 0.23461744114756583, 0.2504455476999283),
        "entropy_shift": (0.06236691772937775, 0.055657591111958025, 0.06941857021301984),
        "corr_entropy_pearson": (0.5285987854003906, 0.5081172376871109, 0.5483038976788521),
        "corr_entropy_spearman": (0.5021929144859314, 0.48126097172498705, 0.5223066285252571),
        "corr_maxprob_pearson": (0.4121837615966797, 0.3907631576061249, 0.43217179402709005),
        "corr_maxprob_spearman": (0.43217238783836365, 0.4096342854201794, 0.453242090344429),
    }, [
        ("s", "u", -0.24023103713989258, -0.24886295050382615, -0.2314085688441992),
        ("s", "t", -0.06236691772937775, -0.06941857412457465, -0.055657593067735434),
        ("u", "t", 0.17786411941051483, 0.17331042140722275, 0.1823998887091875),
    ]),
}


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_values_equal_those_recorded_before_the_batched_bootstrap(case):
    shape, boot, pair, differences = RECORDED[case]
    t, s, u = _tied_case(**shape)
    stats = pair_statistics(t, s, **boot)
    assert list(stats) == list(PAIR_STATISTICS)
    for key, (value, low, high) in pair.items():
        assert stats[key]["value"] == pytest.approx(value, abs=1e-12), key
        assert stats[key]["ci"] == pytest.approx([low, high], abs=1e-12), key
    diffs = student_differences({"s": s, "u": u, "t": t}, **boot)
    got = [(d["a"], d["b"], d["entropy_difference"]["value"], *d["entropy_difference"]["ci"]) for d in diffs]
    assert [g[:2] for g in got] == [d[:2] for d in differences]
    for g, d in zip(got, differences):
        assert g[2:] == pytest.approx(d[2:], abs=1e-12)


def _per_statistic(teacher_logits, student_logits, n_bootstrap, seed):
    """The route before the change: one bootstrap_ci per statistic, each on its own draws, and Spearman by
    sorting every resample (the lambda keeps bootstrap_ci off its counted-ranks path)."""
    log_t, log_s = torch.log_softmax(teacher_logits.float(), -1), torch.log_softmax(student_logits.float(), -1)
    p_t, p_s = log_t.exp(), log_s.exp()
    h_t, h_s = audit_stats.entropy(p_t), audit_stats.entropy(p_s)
    m_t, m_s = audit_stats.max_probability(p_t), audit_stats.max_probability(p_s)
    agree = audit_stats.agreement(log_t, log_s).float()
    kl = audit_stats.kl_divergence(log_t, log_s)

    def mean(x):
        return x.float().mean(-1)

    def spearman(x, y):
        return audit_stats.spearman(x, y)

    requests = {"agreement": (mean, agree), "kl": (mean, kl), "entropy_shift": (mean, h_s - h_t),
                "corr_entropy_pearson": (audit_stats.pearson, h_t, h_s), "corr_entropy_spearman": (spearman, h_t, h_s),
                "corr_maxprob_pearson": (audit_stats.pearson, m_t, m_s), "corr_maxprob_spearman": (spearman, m_t, m_s)}
    return {key: (float(fn(*samples)), audit_stats.bootstrap_ci(fn, *samples, n_resamples=n_bootstrap, seed=seed))
            for key, (fn, *samples) in requests.items()}


@pytest.mark.parametrize("max_chunk", [None, 3 * 250 * 7 + 5, 1])  # default; 7 and 10 resamples a chunk; 1 each
def test_shared_draws_equal_one_bootstrap_per_statistic(monkeypatch, max_chunk):
    t, s, _ = _tied_case(250, 4, 3)
    if max_chunk is not None:
        monkeypatch.setattr(stats_impl, "MAX_CHUNK_ELEMENTS", max_chunk)
    got = pair_statistics(t, s, n_bootstrap=60, seed=5)
    for key, (value, ci) in _per_statistic(t, s, 60, 5).items():
        assert got[key]["value"] == value and got[key]["ci"] == list(ci), key


def test_undefined_statistics_are_reported_as_before():
    t = torch.tensor([[2.0, 0.0]] * 20)  # constant teacher: no correlation with it
    s = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    stats = pair_statistics(t, s, n_bootstrap=50)
    for key in PAIR_STATISTICS[3:]:
        assert stats[key]["value"] is None and "teacher's per-example" in stats[key]["reason"], key
    assert all(stats[key]["ci"] is not None for key in PAIR_STATISTICS[:3])
    # three distinct examples: some resamples draw one of them only, so their correlation is undefined
    t = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]).repeat(2, 1)
    stats = pair_statistics(t, 2 * t, n_bootstrap=200)
    assert stats["corr_entropy_spearman"]["value"] is None
    assert "too few distinct examples" in stats["corr_entropy_spearman"]["reason"]


def test_student_differences_share_one_set_of_draws():
    t, s, u = _tied_case(200, 3, 4)
    diffs = student_differences({"t": t, "s": s, "u": u}, n_bootstrap=80, seed=2)
    ent = {k: audit_stats.entropy(torch.softmax(z, -1)) for k, z in (("t", t), ("s", s), ("u", u))}
    for d in diffs:
        diff = ent[d["b"]] - ent[d["a"]]
        ci = audit_stats.bootstrap_ci(lambda x: x.float().mean(-1), diff, n_resamples=80, seed=2)
        assert d["entropy_difference"] == {"value": float(diff.float().mean()), "ci": list(ci)}
    assert student_differences({"only": t}) == []


def _entropy(z: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Categorical(logits=z.double()).entropy()


@pytest.mark.parametrize("fraction, expected", [(0.03, "inherits"), (0.3, "moves_away")])
def test_a_known_shift_inside_the_band_inherits_and_outside_moves(fraction, expected):
    """A student that is the teacher at a temperature chosen to move its mean entropy by a known fraction of
    the teacher's: inside the measured band (10%) it inherits, outside it moves away (same per-example order)."""
    z = _logits(n=3000)
    h_t = float(_entropy(z).mean())
    lo, hi = 0.5, 3.0  # bisect the temperature whose mean entropy is h_t * (1 + fraction)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(_entropy(z / mid).mean()) < h_t * (1 + fraction) else (lo, mid)
    student = z / lo
    stats = pair_statistics(z, student, n_bootstrap=300)
    assert stats["entropy_shift"]["value"] == pytest.approx(fraction * h_t, rel=1e-3)  # the shift is what was planted
    assert inheritance_verdict(stats, h_t, VerdictRule(), n_clusters=3000)[0] == expected


def test_too_few_clusters_are_insufficient_whatever_the_numbers():
    z = _logits()
    stats = pair_statistics(z, z.clone(), n_bootstrap=50)
    label, reason = inheritance_verdict(stats, 0.5, n_clusters=9, unit="token")
    assert label == "insufficient" and "9 sequences" in reason and "at least 10" in reason
    assert inheritance_verdict(stats, 0.5, n_clusters=10)[0] == "inherits"


def test_the_fixed_rule_keeps_the_older_thresholds():
    from audit.settings import VERDICT_RULES

    assert (VERDICT_RULES["fixed"].shift_band, VERDICT_RULES["fixed"].min_correlation) == (0.25, 0.5)
    assert VERDICT_RULES["measured"] == VerdictRule()
