"""Where a student diverges: the breakdown against float64 numpy over the same per-position arrays, on synthetic
columns and on the fixture LM pair (per-token KL recomputed from the models' own logits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from audit.compare import compare_lm
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import IGNORE_INDEX, read_documents, tokenize_windows
from audit.settings import CompareSettings
from audit.stats.divergence import (
    ENTROPY_BUCKETS,
    POSITION_BUCKETS,
    TOP_TOKENS,
    divergence_breakdown,
    top_share,
)

ROOT = Path(__file__).resolve().parents[2]


def _numpy_breakdown(kl, shift, h_t, position, length, token):
    """The breakdown by its definition in numpy float64 (numpy's own quantile, searchsorted and bincount)."""
    out = {"q": {q: np.quantile(kl, q) for q in (0.5, 0.9, 0.99)},
           "shift_q": {q: np.quantile(shift, q) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}}
    k = int(np.ceil(0.01 * kl.size))
    out["share"] = np.sort(kl)[::-1][:k].sum() / kl.sum()
    inner = np.quantile(h_t, np.arange(1, ENTROPY_BUCKETS) / ENTROPY_BUCKETS)
    bucket = np.searchsorted(inner, h_t, side="left")
    out["entropy"] = [kl[bucket == b].mean() if (bucket == b).any() else None for b in range(ENTROPY_BUCKETS)]
    out["entropy_n"] = [int((bucket == b).sum()) for b in range(ENTROPY_BUCKETS)]
    n_buckets = min(POSITION_BUCKETS, length)
    pbucket = position * n_buckets // length
    out["position"] = [kl[pbucket == b].mean() if (pbucket == b).any() else None for b in range(n_buckets)]
    totals = np.bincount(token, weights=kl)
    out["tokens"] = [int(t) for t in np.argsort(-totals, kind="stable")[:TOP_TOKENS]]
    out["totals"] = totals
    out["top_rows"] = [int(r) for r in np.argsort(-kl, kind="stable")[:10]]
    return out


def _check(got: dict, want: dict) -> None:
    assert [got["kl_quantiles"][f"q{round(q * 100):02d}"] for q in want["q"]] == pytest.approx(list(want["q"].values()), rel=1e-9)
    assert [got["entropy_shift_quantiles"][f"q{round(q * 100):02d}"] for q in want["shift_q"]] == pytest.approx(
        list(want["shift_q"].values()), rel=1e-9, abs=1e-12)
    assert got["kl_top1pct_share"] == pytest.approx(want["share"], rel=1e-9)
    assert [b["n"] for b in got["by_teacher_entropy"]] == want["entropy_n"]
    assert [b["kl_mean"] for b in got["by_teacher_entropy"]] == pytest.approx(want["entropy"], rel=1e-9)
    assert [b["kl_mean"] for b in got["by_position"]] == pytest.approx(want["position"], rel=1e-9)
    totals = want["totals"]
    assert [totals[t["token_id"]] for t in got["top_tokens"]] == pytest.approx(sorted(totals, reverse=True)[:TOP_TOKENS],
                                                                              rel=1e-9)


def test_breakdown_matches_numpy_on_skewed_columns():
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 5000, 48, 300
    h_t = torch.rand(n, generator=g, dtype=torch.float64) * 3
    kl = torch.empty(n, dtype=torch.float64).exponential_(generator=g) * (1 + h_t)  # more KL where the teacher is unsure
    shift = torch.randn(n, generator=g, dtype=torch.float64)
    position = torch.randint(0, length, (n,), generator=g)
    token = torch.randint(0, vocab, (n,), generator=g)
    got = divergence_breakdown(kl, shift, h_t, position=position, window_length=length, token=token)
    want = _numpy_breakdown(kl.numpy(), shift.numpy(), h_t.numpy(), position.numpy(), length, token.numpy())
    _check(got, want)
    assert got["top_rows"] == want["top_rows"]
    means = [b["kl_mean"] for b in got["by_teacher_entropy"]]
    assert means[-1] > 2 * means[0]  # the planted dependence on the teacher's entropy shows


def test_top_tokens_are_scored_ones_even_at_zero_kl():
    """A student identical to its teacher: every KL is 0, and the top tokens are still tokens that occur."""
    token = torch.tensor([5, 7, 5, 9])
    got = divergence_breakdown(torch.zeros(4), torch.zeros(4), torch.rand(4), token=token)
    assert sorted(t["token_id"] for t in got["top_tokens"]) == [5, 7, 9]
    assert all(t["kl_mean"] == 0.0 and t["n"] >= 1 for t in got["top_tokens"])


def test_top_share_is_one_for_a_single_carrier():
    kl = torch.zeros(1000, dtype=torch.float64)
    kl[17] = 3.0
    assert top_share(kl) == 1.0
    assert top_share(torch.ones(1000)) == pytest.approx(0.01)


@pytest.fixture(scope="module")
def fixture_pair_audit():
    settings = CompareSettings(limit=1, max_length=64, n_bootstrap=20, progress=False, cache=False)
    report = compare_lm(str(ROOT / "fixtures/lm-teacher"), [str(ROOT / "fixtures/lm-student")], "shakespeare:test",
                        settings=settings)
    return report, settings


def test_fixture_pair_breakdown_matches_numpy_from_the_models_logits(fixture_pair_audit):
    """Per-token KL, entropies, positions and targets recomputed from transformers' logits in float64."""
    report, settings = fixture_pair_audit
    teacher = load_causal_lm(str(ROOT / "fixtures/lm-teacher"))
    documents = read_documents("shakespeare:test", limit=settings.limit)
    windows = tokenize_windows(documents, teacher.tokenizer, max_length=settings.max_length)
    models = [AutoModelForCausalLM.from_pretrained(ROOT / f"fixtures/{name}").float().eval()
              for name in ("lm-teacher", "lm-student")]
    mask = (windows.targets != IGNORE_INDEX).numpy()
    kl, h_t, h_s = [], [], []
    with torch.no_grad():
        for start in range(0, len(windows), 8):  # (8, 64, 49152) float64 at a time; only the scored rows kept
            rows = slice(start, start + 8)
            keep = torch.from_numpy(mask[rows])
            log_t, log_s = (torch.log_softmax(m(input_ids=windows.input_ids[rows],
                                                attention_mask=windows.attention_mask[rows]).logits.double(), -1)[keep]
                            .numpy() for m in models)
            p_t, p_s = np.exp(log_t), np.exp(log_s)
            kl.append((p_t * (log_t - log_s)).sum(-1))
            h_t.append(-(p_t * log_t).sum(-1))
            h_s.append(-(p_s * log_s).sum(-1))
    kl, h_t, h_s = np.concatenate(kl), np.concatenate(h_t), np.concatenate(h_s)
    position = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)[mask]
    token = windows.targets.numpy()[mask]
    want = _numpy_breakdown(kl, h_s - h_t, h_t, position, mask.shape[1], token)
    got = report["pairs"][0]["divergence"]
    # the audit reduces float32 logits: its per-token values agree with float64 to ~1e-5, so the order statistics to 1e-4
    assert [got["kl_quantiles"][k] for k in ("q50", "q90", "q99")] == pytest.approx(list(want["q"].values()), rel=1e-3)
    assert got["kl_top1pct_share"] == pytest.approx(want["share"], rel=1e-3)
    assert [b["kl_mean"] for b in got["by_position"]] == pytest.approx(want["position"], rel=1e-3)
    assert [t["token_id"] for t in got["top_tokens"][:5]] == want["tokens"][:5]
    assert got["top_tokens"][0]["token"] == teacher.tokenizer.decode([want["tokens"][0]])
    top = got["top_contexts"][0]
    assert top["kl"] == pytest.approx(kl.max(), rel=1e-3)
    row = want["top_rows"][0]
    assert top["target"] == teacher.tokenizer.decode([int(token[row])])
    assert top["context"].endswith(teacher.tokenizer.decode([int(windows.input_ids.numpy()[mask.nonzero()[0][row],
                                                                                             position[row]])]))
