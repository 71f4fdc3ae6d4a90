"""The fused Triton reduction (audit.reduce.kernel) against the eager reduction of audit.reduce.reduction.

CPU-sized shapes (the Triton interpreter): V = 5 (many rows per program), 3000 (one block per row) and
9000 (three column blocks, so the online max, argmax and cross sums are carried across blocks).
"""

from __future__ import annotations

import pytest
import torch

from audit.losses import kernels
from audit.reduce.reduction import HeadLogits, KeptRows, reduce_logits

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton not installed")

SCHEDULE_V = [5, 3000, 9000]


def _inputs(p: int, v: int, seed: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t, s = 3 * torch.randn(2, p, v, generator=g)
    y = torch.randint(0, v, (p,), generator=g)
    y[::3] = -100
    return t.to(dtype).to(device), s.to(dtype).to(device), y.to(device)


def assert_backends_agree(t, students, y, atol=2e-5):
    """float32 arithmetic in both, in another order: the KLs are differences of sums of size ~log V."""
    fused = reduce_logits(t, students, y, backend="triton")
    eager = reduce_logits(t, students, y, backend="torch")
    for got, want in zip(fused.models + fused.pairs, eager.models + eager.pairs):
        assert got.keys() == want.keys()
        for key in got:
            assert got[key].dtype == want[key].dtype and got[key].device == want[key].device, key
            if key == "top1":
                assert torch.equal(got[key], want[key])
            else:
                torch.testing.assert_close(got[key], want[key], rtol=2e-5, atol=atol, equal_nan=True, msg=key)
    return fused


@pytest.mark.parametrize("v", SCHEDULE_V)
def test_fused_matches_eager(v, device):
    t, s, y = _inputs(5, v, 0, device)
    assert_backends_agree(t, [s], y)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype, device):
    t, s, y = _inputs(6, 3000, 1, device, dtype)
    assert_backends_agree(t, [s], y)


def test_two_students_and_rows_not_a_multiple_of_the_tile(device):
    t, s1, y = _inputs(1000, 5, 2, device)  # 512 rows per program: the second program is partly empty
    s2 = 0.1 * s1
    assert_backends_agree(t, [s1, s2], y)


def test_offsets_masked_entries_and_a_max_that_grows_across_blocks(device):
    t, s, y = _inputs(4, 9000, 3, device)
    t[0] += 1e4  # a common offset
    s[1, :4096] = float("-inf")  # the student's first block all masked
    t[2, 8999] = 30.0  # the teacher's max in the last block: every running sum is rescaled
    s[3, 100] = float("-inf")  # student gives no mass where the teacher has some: KL(q||p) = inf
    y = torch.tensor([0, 5000, 8999, 100], device=device)
    fused = reduce_logits(t, [s], y, backend="triton")
    eager = reduce_logits(t, [s], y, backend="torch")
    assert torch.isinf(fused.pairs[0]["kl"][[1, 3]]).all() and torch.isinf(eager.pairs[0]["kl"][[1, 3]]).all()
    assert fused.models[1]["target_logprob"][3] == float("-inf")
    for got, want in zip(fused.models + fused.pairs, eager.models + eager.pairs):
        for key in got:
            torch.testing.assert_close(got[key], want[key], rtol=2e-5, atol=2e-5, equal_nan=True, msg=key)


def test_argmax_takes_the_first_of_tied_maxima_across_blocks(device):
    t = torch.zeros(2, 9000, device=device)
    t[0, [7, 4100, 8500]] = 5.0  # tied in blocks 0, 1 and 2
    t[1, [8200, 8300]] = 5.0  # tied inside the last block
    y = torch.tensor([7, 8300], device=device)
    r = reduce_logits(t, [t.flip(1)], y, backend="triton")
    assert r.models[0]["top1"].tolist() == [7, 8200]
    assert r.models[0]["correct"].tolist() == [1.0, 0.0]
    assert r.models[1]["top1"].tolist() == [8999 - 8500, 8999 - 8300]  # the flipped rows' first maxima


def test_identical_models_give_exactly_zero_kl(device):
    t, _, y = _inputs(7, 9000, 4, device)
    r = reduce_logits(t, [t.clone()], y, backend="triton")
    assert (r.pairs[0]["kl"] == 0).all() and (r.pairs[0]["kl_reverse"] == 0).all()


def test_strided_rows(device):
    t, s, y = _inputs(8, 3000, 5, device)
    assert_backends_agree(t[::2], [s[::2]], y[::2])
    wide = torch.cat([t, s], 1)  # (P, 2V): row stride 2V, unit column stride
    assert_backends_agree(wide[:, :3000], [wide[:, 3000:]], y)


def test_head_logits_and_kept_rows_are_multiplied_out(device):
    """Issue 25: a causal LM's hidden states and output layer, or the scored rows of its logits, reach the kernel
    as the (P, V) logits they stand for."""
    g = torch.Generator().manual_seed(6)
    hidden, weight = torch.randn(2, 9, 16, generator=g), torch.randn(3000, 16, generator=g)
    y = torch.randint(0, 3000, (9,), generator=g).to(device)
    t, s = (HeadLogits(h.to(device), weight.to(device)) for h in hidden)
    assert_backends_agree(t, [s / 2.0], y)
    kept = KeptRows(torch.cat([t.materialize(), s.materialize()]), torch.arange(0, 18, 2, device=device))
    assert_backends_agree(kept, [t], y)
