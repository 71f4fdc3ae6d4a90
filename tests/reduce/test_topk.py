"""Top-k teachers (audit.reduce.topk): the tail-bucket KL against full-logit KL, and the file's reader and writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, rel_entr

from audit.errors import AuditError
from audit.reduce.topk import (
    read_topk_logits,
    topk_from_logits,
    topk_kd_loss,
    topk_tail_kl,
    topk_teacher_columns,
    write_topk_logits,
)


def full_kl(t: torch.Tensor, s: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    q, p = (np.exp(log_softmax(x.double().numpy(), -1)) for x in (t, s))
    return rel_entr(q, p).sum(-1), rel_entr(p, q).sum(-1)


def tail_kl_error_bound(t: torch.Tensor, s: torch.Tensor, k: int) -> np.ndarray:
    """q_tail * KL(q(. | tail) || p(. | tail)) in float64: the exact gap the module docstring states."""
    q, p = (np.exp(log_softmax(x.double().numpy(), -1)) for x in (t, s))
    out = []
    for qi, pi in zip(q, p):
        tail = np.argsort(-qi, kind="stable")[k:]
        q_tail, p_tail = qi[tail].sum(), pi[tail].sum()
        out.append(q_tail * rel_entr(qi[tail] / q_tail, pi[tail] / p_tail).sum())
    return np.array(out)


def pair(kind: str, p: int = 64, v: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = {"random": 1.0, "peaked": 8.0}[kind]  # peaked: a teacher whose top 20 hold >= 99% of the mass
    t = scale * torch.randn(p, v, generator=g)
    s = t + 0.5 * scale * torch.randn(p, v, generator=g)  # a student near its teacher
    return t, s


@pytest.mark.parametrize("kind", ["random", "peaked"])
@pytest.mark.parametrize("k", [5, 20, 100])
def test_tail_kl_is_a_lower_bound_with_the_stated_gap(kind, k):
    t, s = pair(kind)
    ids, lp = topk_from_logits(t, k)
    approx = topk_tail_kl(ids, lp, s)
    kl, _ = full_kl(t, s)
    gap = kl - approx["kl"].double().numpy()
    assert (gap >= -1e-5).all()  # never overstates (float32 rounding aside)
    np.testing.assert_allclose(gap, tail_kl_error_bound(t, s, k), rtol=1e-3, atol=2e-5)


def test_measured_error_of_the_tail_approximation():
    """The figures of the module docstring: relative error of the mean KL, float32 throughout."""
    errors = {}
    for kind in ("random", "peaked"):
        t, s = pair(kind, p=256, v=2000, seed=1)
        kl, kl_rev = full_kl(t, s)
        ids, lp = topk_from_logits(t, 20)
        approx = topk_tail_kl(ids, lp, s)
        errors[kind] = (1 - approx["kl"].double().mean().item() / kl.mean(),
                        1 - approx["kl_reverse"].double().mean().item() / kl_rev.mean(),
                        approx["teacher_tail"].mean().item())
    # a near-uniform teacher (top 20 of 2000 hold ~5% of the mass) loses almost all of the KL...
    assert errors["random"][0] > 0.8 and errors["random"][2] > 0.9
    # ...a peaked one (tail 0.4% of the mass) keeps the forward KL to 0.7%, the reverse to 13% (measured)
    assert errors["peaked"][2] < 0.01 and 0 <= errors["peaked"][0] < 0.02 and 0 <= errors["peaked"][1] < 0.25


def test_topk_covering_the_vocabulary_is_exact():
    t, s = pair("random", v=30)
    ids, lp = topk_from_logits(t, 30)
    approx = topk_tail_kl(ids, lp, s)
    kl, kl_rev = full_kl(t, s)
    np.testing.assert_allclose(approx["kl"].numpy(), kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(approx["kl_reverse"].numpy(), kl_rev, rtol=1e-4, atol=1e-6)
    assert (approx["teacher_tail"] == 0).all()


def test_file_round_trip_and_validation(tmp_path):
    t, _ = pair("peaked", p=12, v=50)
    ids, lp = topk_from_logits(t, 4)
    seq, pos = torch.arange(12) // 4, torch.arange(12) % 4 + 1
    path = write_topk_logits(tmp_path / "teacher.safetensors", ids.int(), lp.half(), seq, pos)
    back = read_topk_logits(path, vocab_size=50, sequence_ids=seq, positions=pos)
    assert torch.equal(back.ids, ids.int()) and torch.equal(back.logprobs, lp.half()) and len(back) == 12
    with pytest.raises(AuditError, match=r"expected token ids in \[0, 40\).*another tokenizer"):
        read_topk_logits(path, vocab_size=40)
    with pytest.raises(AuditError, match="expected 12 positions matching.*first difference at row 3"):
        read_topk_logits(path, positions=torch.where(pos == 4, 5, pos))
    with pytest.raises(AuditError, match="expected 11 sequence_ids.*got 12"):
        read_topk_logits(path, sequence_ids=seq[:11])


@pytest.mark.parametrize("corrupt, message", [
    (lambda ids, lp: (ids, lp.index_put((torch.tensor([2]), torch.tensor([1])), torch.tensor(float("nan")))),
     "finite log-probabilities"),
    (lambda ids, lp: (ids, lp + 1.0), "finite log-probabilities <= 0|summing to <= 1"),
    (lambda ids, lp: (ids, lp / 4), "summing to <= 1"),  # p^(1/4): more mass than there is
    (lambda ids, lp: (ids.index_put((torch.tensor([0]), torch.tensor([1])), ids[0, 0]), lp), "distinct token ids"),
    (lambda ids, lp: (ids - 100, lp), "expected token ids >= 0"),
])
def test_writer_refuses_bad_tensors(tmp_path, corrupt, message):
    t, _ = pair("random", p=6, v=50)
    ids, lp = corrupt(*topk_from_logits(t, 4))
    with pytest.raises(AuditError, match=message):
        write_topk_logits(tmp_path / "bad.safetensors", ids, lp, torch.zeros(6), torch.arange(6))


def test_reader_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(AuditError, match="no such file"):
        read_topk_logits(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AuditError, match="does not parse"):
        read_topk_logits(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"logits": torch.zeros(2, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(AuditError, match="expected tensors topk_ids"):
        read_topk_logits(tmp_path / "other.safetensors")


def test_teacher_columns_from_its_top_k():
    from audit.reduce.reduction import reduce_logits

    t, _ = pair("peaked", p=40, v=300, seed=2)
    y = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(3))
    y[:10] = t[:10].argmax(1)  # some targets in the top k
    y[-3:] = -100
    full = reduce_logits(t, [], y, backend="torch").models[0]
    ids, lp = topk_from_logits(t, 10)
    cols = topk_teacher_columns(ids, lp, y, vocab_size=300)
    assert torch.equal(cols["top1"], full["top1"])
    torch.testing.assert_close(cols["maxprob"], full["maxprob"])
    torch.testing.assert_close(cols["correct"], full["correct"], equal_nan=True)
    in_topk = (ids == y[:, None]).any(1)
    torch.testing.assert_close(cols["target_logprob"][in_topk], full["target_logprob"][in_topk])
    assert torch.isnan(cols["target_logprob"][~in_topk]).all() and in_topk.sum() >= 10
    assert (cols["entropy"] <= full["entropy"] + 1e-5).all()  # coarse-grained: a lower bound
    np.testing.assert_allclose(cols["entropy"].numpy(), full["entropy"].numpy(), rtol=0.2)  # a peaked teacher


def kd_reference(t: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float, k: int) -> tuple[float, np.ndarray]:
    """Mean over kept rows of (1-w) CE + w (KL(q || p) - the tail gap), float64, and its gradient w.r.t. s for
    k = V: per row ((1-w)(p - e_y) + w (p - q)) / kept (the softmax's Jacobian applied by hand)."""
    log_q, log_p = (log_softmax(x.double().numpy(), -1) for x in (t, s))
    keep = y.numpy() != -100
    ce = -log_p[np.arange(len(y)), np.where(keep, y.numpy(), 0)]
    kl = rel_entr(np.exp(log_q), np.exp(log_p)).sum(-1) - tail_kl_error_bound(t, s, k)
    rows = np.where(keep, (1 - w) * ce + w * kl, 0.0)
    onehot = np.eye(s.shape[1])[np.where(keep, y.numpy(), 0)]
    grad = ((1 - w) * (np.exp(log_p) - onehot) + w * (np.exp(log_p) - np.exp(log_q))) * keep[:, None] / keep.sum()
    return rows.sum() / keep.sum(), grad


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_kd_loss_at_k_equal_to_the_vocabulary_is_the_full_kd_loss(w):
    t, s = pair("random", p=24, v=40, seed=4)
    y = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(5))
    y[:4] = -100
    ids, lp = topk_from_logits(t, 40)
    s = s.requires_grad_()
    loss = topk_kd_loss(s, ids, lp, y, kd_weight=w, backend="torch")
    loss.backward()
    value, grad = kd_reference(t, s.detach(), y, w, 40)
    assert loss.dtype == torch.float32 and abs(loss.item() - value) < 1e-5 * value
    np.testing.assert_allclose(s.grad.double().numpy(), grad, atol=1e-7)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_kd_loss_with_a_tail_bucket_is_the_full_loss_less_the_stated_gap(k):
    t, s = pair("peaked", p=32, v=200, seed=6)
    y = torch.randint(0, 200, (32,), generator=torch.Generator().manual_seed(7))
    y[-2:] = -100
    ids, lp = topk_from_logits(t, k)
    s = s.requires_grad_()
    loss = topk_kd_loss(s, ids, lp.half(), y, kd_weight=0.5, backend="torch")  # half: as a file may store them
    loss.backward()
    value, _ = kd_reference(t, s.detach(), y, 0.5, k)
    assert abs(loss.item() - value) < 2e-3 * value  # the fp16 log-probabilities' rounding
    assert torch.isfinite(s.grad).all() and s.grad[-2:].abs().max() == 0  # ignored rows get nothing
    rows = topk_kd_loss(s.detach(), ids, lp, y, kd_weight=0.5, reduction="none", backend="torch")
    assert rows.shape == (32,) and (rows[-2:] == 0).all()
    torch.testing.assert_close(topk_kd_loss(s.detach(), ids, lp, y, kd_weight=0.5, reduction="sum",
                                            backend="torch"), rows.sum())


def test_kd_loss_without_labels_is_the_mean_tail_bucket_kl():
    t, s = pair("peaked", p=10, v=60, seed=8)
    ids, lp = topk_from_logits(t, 6)
    kl, _ = full_kl(t, s)
    expected = (kl - tail_kl_error_bound(t, s, 6)).mean()
    assert abs(topk_kd_loss(s, ids, lp).item() - expected) < 1e-5 * expected


def test_kd_loss_refuses_bad_arguments():
    t, s = pair("random", p=4, v=20)
    ids, lp = topk_from_logits(t, 3)
    with pytest.raises(AuditError, match=r"kd_weight in \[0, 1\]"):
        topk_kd_loss(s, ids, lp, kd_weight=1.5)
    with pytest.raises(AuditError, match="reduction"):
        topk_kd_loss(s, ids, lp, reduction="max")
    with pytest.raises(AuditError, match=r"\(P, k\) and student logits"):
        topk_kd_loss(s[:3], ids, lp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reader_refuses_log_probabilities_renormalised_over_the_top_k(tmp_path, dtype):
    """Issue 26: log-softmax over the top k (each row summing to 1) made the tail bucket vanish, and the KLs it gave
    were no lower bounds (KL 1.45 for 0.10, reverse KL 11.4 for 0.09); such a file is refused when k < V."""
    t, _ = pair("random", p=24, v=50)
    ids, lp = topk_from_logits(t, 8)
    seq, pos = torch.zeros(24, dtype=torch.int64), torch.arange(24) + 1
    good = write_topk_logits(tmp_path / "good.safetensors", ids, lp.to(dtype), seq, pos)
    assert len(read_topk_logits(good, vocab_size=50)) == 24
    renormalised = write_topk_logits(tmp_path / "renorm.safetensors", ids, torch.log_softmax(lp, -1).to(dtype), seq,
                                     pos)
    with pytest.raises(AuditError, match=r"top 8 of 50 ids.*renormalised over the top k.*log_softmax"):
        read_topk_logits(renormalised, vocab_size=50)
    read_topk_logits(renormalised)  # without the vocabulary, k < V cannot be told: the writer's checks only


def test_confident_rows_and_a_whole_vocabulary_are_not_mistaken_for_renormalised_ones(tmp_path):
    t, _ = pair("peaked", p=24, v=50)
    t[:12, 0] = 60.0  # half the rows hold all their mass on one id: a tail below any rounding
    ids, lp = topk_from_logits(t, 8)
    seq, pos = torch.zeros(24, dtype=torch.int64), torch.arange(24) + 1
    path = write_topk_logits(tmp_path / "confident.safetensors", ids, lp, seq, pos)
    assert len(read_topk_logits(path, vocab_size=50)) == 24
    ids, lp = topk_from_logits(t, 50)  # k = V: every row sums to 1, as it must
    path = write_topk_logits(tmp_path / "whole.safetensors", ids, lp, seq, pos)
    assert len(read_topk_logits(path, vocab_size=50)) == 24


def test_reader_refuses_window_metadata_other_than_the_audits(tmp_path):
    """Issue 26: a file written from windows of 16/8 was audited at 64/32 without a word (every window length scores
    each token once, so the positions match; only the metadata tells the context the teacher saw)."""
    t, _ = pair("peaked", p=12, v=50)
    ids, lp = topk_from_logits(t, 4)
    seq, pos = torch.zeros(12, dtype=torch.int64), torch.arange(12) + 1
    path = write_topk_logits(tmp_path / "w16.safetensors", ids, lp, seq, pos,
                             metadata={"max_length": "16", "stride": "8"})
    with pytest.raises(AuditError, match=r"max_length 64 and stride 32 \(the audit's\), got max_length 16 and "
                                         r"stride 8.*pass --max-length 16 --stride 8"):
        read_topk_logits(path, windows={"max_length": 64, "stride": 32, "documents": 1})
    with pytest.raises(AuditError, match="stride 8"):
        read_topk_logits(path, windows={"max_length": 16, "stride": 4})
    assert read_topk_logits(path, windows={"max_length": 16, "stride": 8}).metadata["stride"] == "8"
    bare = write_topk_logits(tmp_path / "bare.safetensors", ids, lp, seq, pos)  # no metadata: optional for an audit
    assert len(read_topk_logits(bare, windows={"max_length": 64, "stride": 32})) == 12
