"""The LM replication: claims decided from per-token entropies whose answer is known, cluster-bootstrap draws
equal to audit.stats.cluster's intervals, bad options, and (slow) the tiny grid end to end through the CLI. The claims
and the divergence comparison on fixed entropies, and the tiny grid's summary, give the numbers of tests/expected/."""

import json
from pathlib import Path

import pytest
import torch
from audit_cli import cli as _cli
from test_stored_reports import differences

from audit.recipes.grid import LM_GRID
from audit.recipes.lm_claims import divergence_comparison, resampled
from audit.stats.claims import claim_rows
from audit.stats.cluster import cluster_bootstrap_cis

V = 49_152
EXPECTED = Path(__file__).parents[1] / "expected"


def _entropies(seed: int, *, ls_shift: float, kd_follows_teacher: bool) -> tuple[dict, torch.Tensor]:
    """Per-token entropies of 40 sequences x 25 tokens: LS a=0.1 and 0.3 move ERM's by ``ls_shift`` and 3 times
    it; KD students follow their (graded) teacher token by token, or sit at 2.5 plus noise."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.arange(40).repeat_interleave(25)
    teacher = 2 + torch.rand(1000, generator=g, dtype=torch.float64)
    noise = lambda: 0.3 * torch.randn(1000, generator=g, dtype=torch.float64)  # noqa: E731
    h = {"teacher": teacher, "erm": 2.5 + noise()}
    h["ls-0.1"], h["ls-0.3"] = h["erm"] + ls_shift, h["erm"] + 3 * ls_shift
    for teacher_name, student in LM_GRID.inheritance:
        scaled = teacher * LM_GRID.arm(student).teacher_temperature  # a flatter teacher, a flatter student
        if teacher_name != "teacher":
            h[teacher_name] = scaled
        h[student] = (scaled if kd_follows_teacher else 2.5) + noise()
    return h, groups


def _verdicts(results) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in results:
        out.setdefault(r.claim_id, set()).add(r.verdict)
    return out


def test_claims_hold_when_the_entropies_say_so():
    h, groups = _entropies(0, ls_shift=0.5, kd_follows_teacher=True)
    results, inheritance = LM_GRID.decide_claims(h, groups=groups, vocab_size=V, n_bootstrap=300)
    verdicts = _verdicts(results)
    assert verdicts["C1a"] == {"holds"} and verdicts["C2a"] == {"holds"} and verdicts["C2b"] == {"holds"}
    assert inheritance["spearman"]["value"] == 1.0
    # KD (~2.5 from a teacher of mean 2.5) is well below LS 0.1 (3.0): C1b's first check holds
    assert next(r for r in results if r.statistic.startswith("H(KD) - H(LS")).verdict == "holds"


def test_claims_fail_when_the_entropies_say_the_opposite():
    h, groups = _entropies(1, ls_shift=-0.5, kd_follows_teacher=False)
    verdicts = _verdicts(LM_GRID.decide_claims(h, groups=groups, vocab_size=V, n_bootstrap=300)[0])
    assert verdicts["C1a"] == {"fails"}
    assert "holds" not in verdicts["C2b"]


def test_resampled_draws_give_the_cluster_bootstrap_intervals():
    h, groups = _entropies(2, ls_shift=0.1, kd_follows_teacher=True)
    requests = {"mean": ("mean", (h["erm"],)), "spearman": ("spearman", (h["teacher"], h["kd-forward-kl"]))}
    draws = resampled(requests, groups, n_resamples=200, seed=3)
    expected = cluster_bootstrap_cis(requests, groups=groups, n_resamples=200, seed=3)
    for name, (low, high) in expected.items():
        q = torch.quantile(draws[name], torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        assert q == pytest.approx([low, high], rel=1e-12), name


def _assert_stored(name: str, actual: dict) -> None:
    found = differences(json.loads((EXPECTED / f"{name}.json").read_text()), actual)
    assert not found, f"{len(found)} differences from tests/expected/{name}.json, e.g.\n" + "\n".join(found[:20])


def _lm_claim_outputs() -> dict:
    """The claims, inheritance table and divergence comparison of fixed per-token entropies and confidences (the
    numbers of tests/expected/replicate-lm-claims.json, which is this function's output as JSON)."""
    h, groups = _entropies(4, ls_shift=0.0, kd_follows_teacher=True)
    g = torch.Generator().manual_seed(5)
    draw = lambda: torch.rand(1000, generator=g, dtype=torch.float64)  # noqa: E731
    h["ls-0.1"], h["ls-0.3"] = h["erm"] + 0.1 * draw(), h["erm"] + 0.3 * draw()
    columns = {arm: {"entropy": h.get(arm, 2 + draw()), "maxprob": draw(), "correct": (draw() < 0.5).double()}
               for arm in ("kd-forward-kl", "kd-reverse-kl", "kd-jsd-0.5")}
    claims, inheritance = LM_GRID.decide_claims(h, groups=groups, vocab_size=V, n_bootstrap=200)
    return {"claims": claim_rows(claims), "inheritance": inheritance,
            "divergence": divergence_comparison(LM_GRID.divergence_arms, columns, groups, n_bootstrap=200)}


def test_lm_claims_give_the_stored_numbers():
    _assert_stored("replicate-lm-claims", _lm_claim_outputs())


def test_the_grid_has_every_arm_of_the_issue():
    names = [a.name for a in LM_GRID.arms]
    assert names == ["erm", "ls-0.1", "ls-0.3", "kd-forward-kl", "kd-reverse-kl", "kd-jsd-0.5", "kd-tau0.5",
                     "kd-tau2", "kd-tau4"]




@pytest.mark.parametrize("args,message", [
    (["--profile", "nope"], "--profile quick or full or tiny"),
    (["--seeds", "0"], "--seeds >= 1"),
    (["--eval-task", "sst2"], "no --eval-task, --jobs, --plots or --html with --task shakespeare"),
    (["--jobs", "2"], "no --eval-task, --jobs, --plots or --html with --task shakespeare"),
])
def test_bad_options_are_one_line_and_write_nothing(args, message, tmp_path, capsys):
    code, _, err = _cli(capsys, "replicate", "--task", "shakespeare", "--out", str(tmp_path / "out"), *args,
                        "--no-progress")
    lines = [line for line in err.splitlines() if line.startswith("kd-audit: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache"))
    code, out, err = _cli(capsys, "replicate", "--task", "shakespeare", "--profile", "tiny", "--out",
                          str(tmp_path / "rep"), "--bootstrap", "50", "--no-progress")
    assert code == 0, err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert [a["arm"] for a in summary["arms"]] == [a.name for a in LM_GRID.arms]
    assert set(summary["claim_verdicts"]) == {"C1a", "C1b", "C2a", "C2b"}
    assert "reverse minus forward entropy" in summary["exploratory"] and "C2a" in out and "unigram model" in out
    _assert_stored("replicate-lm-tiny", summary)  # its summary less settings.out, for an intended change of numbers
