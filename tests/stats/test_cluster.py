"""Cluster bootstrap (audit.stats.cluster) against a naive loop that materialises every resample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from audit.errors import AuditError
from audit.stats import bootstrap_ci, ece
from audit.stats import cluster as cluster_module
from audit.stats.cluster import average_ranks, cluster_bootstrap_ci, group_sums


def clustered_data(n_groups: int, seed: int, effect: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Groups of 1-30 positions; x and y share a per-group effect (intra-group correlation)."""
    g = np.random.default_rng(seed)
    sizes = g.integers(1, 31, n_groups)
    groups = np.repeat(g.permutation(n_groups) * 7 + 3, sizes)  # arbitrary, non-contiguous ids
    shared = np.repeat(g.normal(size=n_groups), sizes)
    x = effect * shared + g.normal(size=groups.size)
    y = 0.5 * x + effect * shared + g.normal(size=groups.size)
    conf = 1 / (1 + np.exp(-x))
    hit = (g.random(groups.size) < 1 / (1 + np.exp(-y))).astype(float)
    order = g.permutation(groups.size)  # positions of a group need not be contiguous
    return tuple(torch.from_numpy(a[order]) for a in (groups, x, y, conf, hit))


def naive_ci(statistic, groups, values, n_resamples, seed, level, chunk):
    """Replays the documented draws ((B, G) randint chunks of one generator), concatenates the positions of
    the drawn groups, and evaluates the statistic on them with numpy/scipy/audit.stats.ece."""
    ids = np.unique(groups.numpy())
    members = {i: np.flatnonzero(groups.numpy() == gid) for i, gid in enumerate(ids)}
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = torch.randint(0, len(ids), (b, len(ids)), generator=generator)
        for row in draws.tolist():
            rows = np.concatenate([members[i] for i in row])
            v = [a.numpy()[rows] for a in values]
            if statistic == "mean":
                out.append(v[0].mean())
            elif statistic == "pearson":
                out.append(scipy_stats.pearsonr(v[0], v[1]).statistic)
            elif statistic == "spearman":  # ranks taken once over all positions (module docstring)
                ranks = [scipy_stats.rankdata(a.numpy())[rows] for a in values]
                out.append(scipy_stats.pearsonr(*ranks).statistic)
            else:
                out.append(float(ece(torch.from_numpy(v[0]), torch.from_numpy(v[1]).bool(), 15)))
    alpha = (1 - level) / 2
    return tuple(np.quantile(out, [alpha, 1 - alpha]))


@pytest.mark.parametrize("statistic", ["mean", "pearson", "spearman", "ece"])
def test_matches_the_naive_loop(statistic, monkeypatch):
    groups, x, y, conf, hit = clustered_data(40, 0)
    values = {"mean": (x,), "pearson": (x, y), "spearman": (x, y), "ece": (conf, hit)}[statistic]
    monkeypatch.setattr(cluster_module, "MAX_CHUNK_ELEMENTS", 40 * 7)  # chunks of 7 resamples, the last short
    got = cluster_bootstrap_ci(*values, groups=groups, statistic=statistic, n_resamples=50, seed=3, level=0.9)
    want = naive_ci(statistic, groups, values, 50, 3, 0.9, chunk=7)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_another_seed_gives_other_draws():
    groups, x, *_ = clustered_data(40, 1)
    assert cluster_bootstrap_ci(x, groups=groups, seed=0, n_resamples=50) != \
        cluster_bootstrap_ci(x, groups=groups, seed=1, n_resamples=50)


def test_group_sums_and_point_estimates():
    groups, x, y, *_ = clustered_data(30, 2)
    sums, ids = group_sums(x, groups=groups)
    assert torch.equal(ids, torch.unique(groups))
    for i, gid in enumerate(ids.tolist()):
        member = groups == gid
        assert sums[i, 0] == member.sum() and torch.isclose(sums[i, 1], x[member].sum())
    for statistic, want in (("pearson", scipy_stats.pearsonr(x, y).statistic),
                            ("spearman", scipy_stats.spearmanr(x, y).statistic)):
        # one resample that draws every group once is the full sample: the point estimate
        total = group_sums(x, y, groups=groups, statistic=statistic)[0].sum(0, keepdim=True)
        np.testing.assert_allclose(float(cluster_module.statistic_from_sums(statistic, total, 15)), want, rtol=1e-10)


def test_average_ranks_match_scipy():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 5.0, 3.0])
    np.testing.assert_array_equal(average_ranks(x).numpy(), scipy_stats.rankdata(x.numpy()))


def test_clustered_intervals_are_wider_than_iid_ones_on_intra_correlated_data():
    groups, x, y, *_ = clustered_data(200, 4, effect=2.0)
    for statistic, values, iid_stat in (("mean", (x,), lambda b: b.mean(-1)),
                                        ("pearson", (x, y), None)):
        low, high = cluster_bootstrap_ci(*values, groups=groups, statistic=statistic, n_resamples=400)
        from audit.stats import pearson
        ilow, ihigh = bootstrap_ci(iid_stat or pearson, *(v.double() for v in values), n_resamples=400)
        assert high - low > 2 * (ihigh - ilow), statistic  # ~ sqrt(design effect) = sqrt(1 + (m - 1) rho)


def test_one_position_per_group_is_the_iid_bootstrap_in_distribution():
    x = torch.from_numpy(np.random.default_rng(5).normal(size=2000))
    low, high = cluster_bootstrap_ci(x, groups=torch.arange(2000), n_resamples=1000)
    ilow, ihigh = bootstrap_ci(lambda b: b.mean(-1), x, n_resamples=1000)
    assert abs((high - low) / (ihigh - ilow) - 1) < 0.15


@pytest.mark.parametrize("bad", [
    dict(statistic="median"),
    dict(values=()),  # mean needs one column
    dict(groups=torch.zeros(5)),  # float groups
    dict(groups=torch.zeros(4, dtype=torch.long)),  # another length
    dict(values=(torch.tensor([0.0, 1.0, float("nan"), 0.0, 1.0]),)),
    dict(n_resamples=0),
    dict(level=1.0),
    dict(statistic="ece", values=(torch.full((5,), 1.5), torch.ones(5))),
])
def test_bad_input_raises(bad):
    args = dict(values=(torch.arange(5.0),), groups=torch.arange(5), statistic="mean", n_resamples=10, level=0.9)
    args.update(bad)
    with pytest.raises(AuditError, match="expected"):
        cluster_bootstrap_ci(*args["values"], groups=args["groups"], statistic=args["statistic"],
                             n_resamples=args["n_resamples"], level=args["level"])


def test_several_statistics_share_the_draws():
    groups, x, y, conf, hit = clustered_data(60, 6)
    specs = {"mean_x": ("mean", (x,)), "rho": ("spearman", (x, y)), "ece": ("ece", (conf, hit)),
             "r": ("pearson", (x, y))}
    together = cluster_module.cluster_bootstrap_cis(specs, groups=groups, n_resamples=100, seed=7)
    for name, (statistic, values) in specs.items():
        alone = cluster_bootstrap_ci(*values, groups=groups, statistic=statistic, n_resamples=100, seed=7)
        np.testing.assert_allclose(together[name], alone, rtol=1e-12)
    with pytest.raises(AuditError, match="expected at least one statistic"):
        cluster_module.cluster_bootstrap_cis({}, groups=groups)


def test_the_order_of_positions_does_not_matter():
    """Sorted group ids take the no-sort path (unique_consecutive); shuffled ones torch.unique: same draws."""
    groups, x, y, *_ = clustered_data(50, 8)
    order = torch.argsort(groups, stable=True)
    for statistic, values in (("mean", (x,)), ("spearman", (x, y))):
        shuffled = cluster_bootstrap_ci(*values, groups=groups, statistic=statistic, n_resamples=60)
        ordered = cluster_bootstrap_ci(*(v[order] for v in values), groups=groups[order], statistic=statistic,
                                       n_resamples=60)
        np.testing.assert_allclose(shuffled, ordered, rtol=1e-12)


def _coverage(n_clusters: int, repetitions: int = 300) -> float:
    """How often the 95% cluster-bootstrap interval of a mean covers the known mean (1) of a skewed per-position
    value with a cluster effect (docs/CLAIMS.md, "The minimum: 10 clusters")."""
    g = torch.Generator().manual_seed(n_clusters)
    hits = 0
    for r in range(repetitions):
        sizes = torch.randint(25, 100, (n_clusters,), generator=g)
        groups = torch.repeat_interleave(torch.arange(n_clusters), sizes)
        scale = torch.exp(0.5 * torch.randn(n_clusters, generator=g, dtype=torch.float64) - 0.125)[groups]
        x = scale * torch.empty(groups.numel(), dtype=torch.float64).exponential_(generator=g)
        lo, hi = cluster_bootstrap_ci(x, groups=groups, n_resamples=500, seed=r)
        hits += lo <= 1.0 <= hi
    return hits / repetitions


def test_the_minimum_for_a_verdict_is_where_coverage_is_reached():
    """Below VerdictRule.min_clusters the nominal 95% interval misses far too often; at it, it covers >= 84%."""
    from audit.settings import VerdictRule

    assert _coverage(2) < 0.65
    assert _coverage(VerdictRule().min_clusters) >= 0.84
