"""The replication recipe through the real command, on the tiny profile (the quick profile is `slow`)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from audit.cli import app
from audit.replicate import decide_claims, grid, overall_verdicts, untrained_arms


def test_replicate_tiny_profile_end_to_end(tmp_path):
    out = tmp_path / "rep"
    args = ["replicate", "--task", "vader-movies", "--profile", "tiny", "--out", str(out), "--bootstrap", "100",
            "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "kd-audit/replicate/1"
    assert [a["arm"] for a in summary["arms"]] == [arm.name for arm in grid()]
    assert {c["claim"] for c in summary["claims"]} == {"C1a", "C1b", "C1c", "C2a", "C2b"}
    assert all(c["verdict"] in ("holds", "fails", "inconclusive") for c in summary["claims"])
    assert "C2a" in result.stdout and "small-kd" in result.stdout
    compare_report = json.loads((out / "seed0" / "compare-big-erm.json").read_text())
    assert compare_report["schema"] == "kd-audit/compare/1" and "small-kd" in compare_report["models"]
    # a second call reuses every run and gives the same numbers
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["claims"] == summary["claims"]


def test_claim_decisions_follow_the_data():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(300, generator=g) * 0.3
    h = {"big-erm": base, "small-erm": base + 0.02, "small-ls-0.1": base + 0.3, "small-ls-0.3": base + 0.5,
         "small-kd": base + 0.01 * torch.rand(300, generator=g), "big-self-kd": base - 0.01,
         "big-reversed-kd": base + 0.05, "big-ls-0.1": base + 0.3, "small-kd-from-big-ls": base + 0.25}
    for t in (0.5, 2.0, 4.0):
        h[f"big-erm-tau{t:g}"] = base * t
        h[f"small-kd-tau{t:g}"] = base * t + 0.01
    verdicts = overall_verdicts(decide_claims(h, n_bootstrap=200))
    assert verdicts["C1a"] == "holds" and verdicts["C1c"] == "holds" and verdicts["C2a"] == "holds"


@pytest.mark.slow
def test_replicate_quick_profile(tmp_path):
    """The quick profile on a real task (about 10 minutes on 2 cores)."""
    result = CliRunner().invoke(app, ["replicate", "--task", "vader-tweets", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["arms"][0]["accuracy"]["value"] > 0.6


def test_untrained_arms_are_flagged():
    labels = torch.tensor([0] * 60 + [1] * 40)
    entropy = {"flat": torch.full((100,), 0.69), "majority": torch.full((100,), 0.3), "learned": torch.full((100,), 0.3)}
    accuracy = {"flat": torch.full((100,), 0.8), "majority": (labels == 0).float(), "learned": torch.full((100,), 0.8)}
    assert untrained_arms(entropy, accuracy, labels, ["flat", "majority", "learned"]) == ["flat", "majority"]
