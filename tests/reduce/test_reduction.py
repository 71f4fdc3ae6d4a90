"""audit.reduce.reduction (eager backend) against an independent float64 numpy/scipy reference, per column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, rel_entr

from audit.errors import AuditError
from audit.reduce import reduction as reduce_module
from audit.reduce.reduction import MODEL_KEYS, PAIR_KEYS, HeadLogits, KeptRows, reduce_logits, topk_overlap

# small tiles are many small ops: a second thread on a shared CPU spins on each of them
pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_reference(teacher: torch.Tensor, students: list[torch.Tensor], targets: torch.Tensor, k: int,
                    ignore_index: int = -100) -> tuple[list[dict], list[dict]]:
    """Float64 columns written from the definitions, row by row, with numpy and scipy."""
    y = targets.numpy()
    keep = y != ignore_index

    def model(x: torch.Tensor) -> dict:
        logp = log_softmax(x.double().numpy(), axis=-1)
        p = np.exp(logp)
        top1 = np.array([int(np.flatnonzero(row == row.max())[0]) for row in logp])  # first maximum
        safe = np.where(keep, y, 0)
        lp_y = logp[np.arange(len(y)), safe]
        return {"entropy": -np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0).sum(-1), "maxprob": p.max(-1),
                "top1": top1, "target_logprob": np.where(keep, lp_y, np.nan),
                "correct": np.where(keep, (top1 == safe).astype(float), np.nan)}

    def pair(t: torch.Tensor, s: torch.Tensor) -> dict:
        q, p = (np.exp(log_softmax(x.double().numpy(), axis=-1)) for x in (t, s))
        kk = min(k, t.shape[1])

        def top(row: np.ndarray) -> set | None:  # None: a tie across the k-th place makes the set ambiguous
            ranked = np.sort(row)[::-1]
            return None if kk < len(row) and ranked[kk - 1] == ranked[kk] else set(np.argsort(-row)[:kk])

        overlap = [np.nan if top(a) is None or top(b) is None else len(top(a) & top(b)) / kk
                   for a, b in zip(t.double().numpy(), s.double().numpy())]
        return {"kl": rel_entr(q, p).sum(-1), "kl_reverse": rel_entr(p, q).sum(-1), "topk_overlap": np.array(overlap)}

    return [model(x) for x in (teacher, *students)], [pair(teacher, s) for s in students]


def assert_matches(result, teacher, students, targets, k=5, rtol=1e-5, atol=1e-6):
    models, pairs = numpy_reference(teacher, students, targets, k)
    assert len(result.models) == 1 + len(students) and len(result.pairs) == len(students)
    for got, want in zip(result.models, models):
        assert set(got) == set(MODEL_KEYS)
        assert got["top1"].dtype == torch.int64
        np.testing.assert_array_equal(got["top1"].numpy(), want["top1"])
        for key in ("entropy", "maxprob", "target_logprob", "correct"):
            assert got[key].dtype == torch.float32 and got[key].shape == targets.shape
            np.testing.assert_allclose(got[key].double().numpy(), want[key], rtol=rtol, atol=atol, err_msg=key)
    for got, want in zip(result.pairs, pairs):
        assert set(got) == set(PAIR_KEYS)
        for key in PAIR_KEYS:
            assert got[key].dtype == torch.float32
            defined = ~np.isnan(want[key])  # top-k overlap: rows without ties at the k-th place
            assert defined.mean() > 0.5
            np.testing.assert_allclose(got[key].double().numpy()[defined], want[key][defined], rtol=rtol, atol=atol,
                                       err_msg=key)


def logits(p: int, v: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(p, v, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("v", [2, 7, 300])
def test_eager_columns_match_the_definitions(v):
    t, s1, s2 = logits(40, v, 0), logits(40, v, 1), logits(40, v, 2, scale=0.3)
    y = torch.randint(0, v, (40,), generator=torch.Generator().manual_seed(3))
    y[::7] = -100
    result = reduce_logits(t, [s1, s2], y, backend="torch")
    assert_matches(result, t, [s1, s2], y)
    assert torch.isnan(result.models[1]["correct"][::7]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_precision_inputs_are_upcast(dtype):
    t, s = logits(30, 50, 4).to(dtype), logits(30, 50, 5).to(dtype)
    y = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(6))
    # the reference reads the same rounded values, so only float32 arithmetic separates them
    assert_matches(reduce_logits(t, [s], y, backend="torch"), t, [s], y)


def test_chunking_does_not_change_the_columns(monkeypatch):
    t, s = logits(37, 11, 7), logits(37, 11, 8)
    y = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(9))
    whole = reduce_logits(t, [s], y, backend="torch")
    monkeypatch.setattr(reduce_module, "TILE_ROWS", 5)  # chunks of 5 positions (of even size: 5 x 7 + 2 x 1)...
    monkeypatch.setattr(reduce_module, "TILE_ELEMENTS", 11 * 5)  # ...each one tile of the whole vocabulary
    assert reduce_module._tiling(37, 11, 2, torch.device("cpu")) == (5, 11)
    assert_same_columns(reduce_logits(t, [s], y, backend="torch"), whole)


def tiny_tiles(monkeypatch, rows: int = 7, width: int = 128) -> None:
    """Tiles of ``rows`` positions by ``width`` vocabulary entries (chunks of even size)."""
    monkeypatch.setattr(reduce_module, "TILE_ROWS", rows)
    monkeypatch.setattr(reduce_module, "TILE_ELEMENTS", rows * width)


@pytest.mark.parametrize("lazy", [False, True])
def test_tiles_of_the_vocabulary_do_not_change_the_columns(monkeypatch, lazy):
    """Issue 25: a vocabulary reduced a tile at a time (here 24 tiles of 128 entries, the last one 56, in chunks of
    7 positions), the tiles' sums combined at each row's maximum, gives the columns of one tile of the whole
    vocabulary, and the definitions' values; the top-1 and top-k search reads the best blocks (3000 entries, the
    last block short)."""
    v = 3000
    t, s1, s2 = (head_logits(30, v, seed) for seed in (20, 21, 22)) if lazy else \
        (logits(30, v, 20), logits(30, v, 21), logits(30, v, 22, scale=0.5))
    y = torch.randint(0, v, (30,), generator=torch.Generator().manual_seed(23))
    y[::6] = -100
    whole = reduce_logits(t, [s1, s2], y, backend="torch")
    assert reduce_module._tiling(30, v, 3, torch.device("cpu"))[1] == v
    tiny_tiles(monkeypatch)
    assert reduce_module._tiling(30, v, 3, torch.device("cpu")) == (6, 128)
    tiled = reduce_logits(t, [s1, s2], y, backend="torch")
    assert_same_columns(tiled, whole, rtol=1e-6, atol=1e-6)
    assert_matches(tiled, *([x.materialize() for x in (t, s1, s2)] if lazy else [t, s1, s2])[:1],
                   [x.materialize() for x in (s1, s2)] if lazy else [s1, s2], y)


def test_masked_tiles(monkeypatch):
    """-inf logits across tiles: a tile masked whole for some rows (shifted by a finite number, so its
    exponentials are 0), both models masking the same entries (a 0 * inf term: those rows recomputed from their
    whole logits), and the student masking entries the teacher gives mass (KL(q||p) = inf)."""
    v = 1500
    t, s = logits(12, v, 24), logits(12, v, 25)
    t[:4, 128:256] = float("-inf")  # a whole tile of the teacher's
    s[:4, 128:256] = float("-inf")
    t[4:8, :720] = float("-inf")  # both, over several tiles
    s[4:8, 300:720] = float("-inf")
    s[8:, 5] = float("-inf")  # the student alone, where the teacher has mass
    y = torch.arange(12) * 100
    tiny_tiles(monkeypatch, rows=5)
    r = reduce_logits(t, [s], y, backend="torch")
    assert torch.isinf(r.pairs[0]["kl"][8:]).all() and torch.isfinite(r.pairs[0]["kl"][:8]).all()
    assert torch.isinf(r.pairs[0]["kl_reverse"][4:8]).all()  # the student has mass below 300, the teacher none
    assert (r.models[0]["target_logprob"][4:8] == float("-inf")).all()  # targets 400-700: masked for the teacher
    assert_matches(r, t, [s], y)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_models_columns_do_not_depend_on_the_models_beside_it(monkeypatch, lazy):
    """On a CPU the tiles do not depend on the number of models: a model's maximum probability, top 1 and target
    log-probability are the same bits alone or beside others (a calibration of repeated contexts, with ties in
    maxprob, must not change with the teacher it is audited beside); entropy up to the batched product."""
    v = 3000
    t, s = (head_logits(40, v, 26), head_logits(40, v, 27)) if lazy else (logits(40, v, 26), logits(40, v, 27))
    y = torch.randint(0, v, (40,), generator=torch.Generator().manual_seed(28))
    tiny_tiles(monkeypatch, rows=16)
    alone = reduce_logits(s, [], y, backend="torch").models[0]
    for beside in (reduce_logits(t, [s], y, backend="torch").models[1],
                   reduce_logits(t, [t, s], y, backend="torch").models[2]):
        for key in ("maxprob", "top1", "target_logprob", "correct"):
            torch.testing.assert_close(beside[key], alone[key], rtol=0, atol=0, equal_nan=True, msg=key)
        torch.testing.assert_close(beside["entropy"], alone["entropy"], rtol=1e-6, atol=1e-6)


def test_masked_classes_and_common_offsets():
    t, s = logits(6, 9, 10) + 1e4, logits(6, 9, 11) - 1e4  # a common offset changes nothing
    t[:, 0] = float("-inf")  # the teacher gives class 0 no mass: it adds nothing to KL(q||p)...
    s[:, 1] = float("-inf")  # ...but where the student gives none and the teacher some, KL(q||p) is inf
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    r = reduce_logits(t, [s], y, backend="torch")
    assert torch.isinf(r.pairs[0]["kl"]).all() and torch.isinf(r.pairs[0]["kl_reverse"]).all()
    assert r.models[0]["target_logprob"][0] == float("-inf")
    s2 = s.clone()
    s2[:, 1] = -1e4
    finite = reduce_logits(t, [s2], y, backend="torch")
    # the reference without the offsets, from the same rounded values (exact in float64)
    assert_matches(finite, t.double() - 1e4, [s2.double() + 1e4], y)
    assert torch.isinf(finite.pairs[0]["kl_reverse"]).all() and torch.isfinite(finite.pairs[0]["kl"]).all()


def test_identical_models_agree_exactly():
    t = logits(20, 13, 12)
    y = torch.randint(0, 13, (20,), generator=torch.Generator().manual_seed(13))
    r = reduce_logits(t, [t.clone()], y, backend="torch")
    assert (r.pairs[0]["kl"] == 0).all() and (r.pairs[0]["kl_reverse"] == 0).all()
    assert (r.pairs[0]["topk_overlap"] == 1).all()


def test_classifier_is_the_one_position_per_example_case():
    """Two classes, unlabelled rows: top-k capped at V (overlap 1), no target columns."""
    t, s = logits(10, 2, 14), logits(10, 2, 15)
    y = torch.full((10,), -100)
    r = reduce_logits(t, [s], y, topk=5, backend="torch")
    assert (r.pairs[0]["topk_overlap"] == 1).all()
    assert torch.isnan(r.models[0]["target_logprob"]).all() and torch.isnan(r.models[1]["correct"]).all()
    assert_matches(r, t, [s], y)


def test_teacher_alone_and_no_positions():
    t = logits(5, 4, 16)
    y = torch.tensor([0, 1, 2, 3, 0])
    alone = reduce_logits(t, [], y, backend="torch")
    assert alone.pairs == [] and len(alone.models) == 1
    assert_matches(alone, t, [], y)
    empty = reduce_logits(torch.empty(0, 4), [torch.empty(0, 4)], torch.empty(0, dtype=torch.long), backend="torch")
    assert all(v.shape == (0,) for m in empty.models + empty.pairs for v in m.values())


def test_topk_overlap_counts_shared_ids():
    t = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    assert topk_overlap(t, s, k=3).tolist() == [0.0]
    assert topk_overlap(t, s, k=4).tolist() == [0.5]  # {0,1,2,3} & {2,3,4,5}
    assert topk_overlap(t, s, k=6).tolist() == [1.0]


@pytest.mark.parametrize("bad", [
    dict(student=torch.zeros(3, 5)),  # another vocabulary
    dict(targets=torch.zeros(4, dtype=torch.long)),  # another number of positions
    dict(targets=torch.zeros(3)),  # float targets
    dict(targets=torch.tensor([0, 1, 4])),  # id outside [0, V)
    dict(targets=torch.tensor([0, -1, 2])),  # negative id that is not ignore_index
    dict(teacher=torch.zeros(3, 4, 2)),  # not flattened
    dict(teacher=torch.zeros(3, 4, dtype=torch.long)),  # not floating
    dict(topk=0),
    dict(backend="cuda"),
])
def test_bad_input_raises(bad):
    args = dict(teacher=torch.zeros(3, 4), student=torch.zeros(3, 4), targets=torch.tensor([0, 1, 3]), topk=5,
                backend="torch")
    args.update(bad)
    with pytest.raises(AuditError, match="expected"):
        reduce_logits(args["teacher"], [args["student"]], args["targets"], topk=args["topk"], backend=args["backend"])


def head_logits(p: int, v: int, seed: int, bias: bool = False, dtype=torch.float32) -> HeadLogits:
    """(P, V) logits as P hidden states of 16 through an output layer (V, 16), as a causal LM's head gives them."""
    g = torch.Generator().manual_seed(seed)
    hidden, weight, b = torch.randn(p, 16, generator=g), torch.randn(v, 16, generator=g), torch.randn(v, generator=g)
    return HeadLogits(hidden.to(dtype), weight.to(dtype), b.to(dtype) if bias else None)


def assert_same_columns(got, want, rtol=0.0, atol=0.0):
    for a, b in zip(got.models + got.pairs, want.models + want.pairs):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, equal_nan=True, msg=key)


@pytest.mark.parametrize("dtype, bias, v", [(torch.float32, False, 300), (torch.float32, True, 300),
                                            (torch.bfloat16, True, 300), (torch.float32, False, 5000),
                                            (torch.bfloat16, False, 5000)])
def test_head_logits_reduce_as_their_product(monkeypatch, dtype, bias, v):
    """Issue 25: the output layer multiplied out a tile at a time, straight into the buffer (float32) or copied
    there (bf16), gives the columns of the logits it stands for, every chunk and tile and a temperature-scaled view
    included (V = 5000: tiles of 128, the search's blocks and the targets' logits from products of their own);
    and the definitions' values."""
    t, s = head_logits(37, v, 0, bias, dtype), head_logits(37, v, 1, bias, dtype)
    y = torch.randint(0, v, (37,), generator=torch.Generator().manual_seed(2))
    y[::5] = -100
    tiny_tiles(monkeypatch, rows=5)
    lazy = reduce_logits(t, [s / 2.0], y, backend="torch")
    assert (s / 2.0).temperature == 2.0 and (s / 2.0).shape == (37, v) and (s / 2.0).dtype == dtype
    # the product of 5 rows and of 37 may round differently in float32; bf16 products are rounded to bf16 alike
    assert_same_columns(lazy, reduce_logits(t.materialize(), [s.materialize() / 2.0], y, backend="torch"),
                        rtol=1e-6, atol=1e-6)
    assert_matches(lazy, t.materialize(), [s.materialize() / 2.0], y)


@pytest.mark.parametrize("bias", [False, True])
def test_head_logits_entries_are_their_products(monkeypatch, bias):
    """The logits the search and the targets read: of the distinct blocks (or ids) of all the rows from one product,
    or (past SHARED_BLOCKS distinct blocks per block a row asks for) each row's from dot products; both the
    entries of the logits the head stands for, the last block clamped to the vocabulary, temperature included."""
    v = 1000
    head = head_logits(23, v, 29, bias) / 1.5
    x = head.materialize()
    blocks = torch.randint(0, -(-v // 64), (9, 3), generator=torch.Generator().manual_seed(30))
    blocks[0, 0] = v // 64  # the last, short block
    ids = reduce_module._block_ids(blocks, v)
    assert ids.max() == v - 1 and ids.shape == (9, 3 * 64)
    want = x[4:13].gather(1, ids)
    shared = head.block_entries(slice(4, 13), blocks)
    torch.testing.assert_close(shared, want, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(reduce_module, "SHARED_BLOCKS", 0)
    torch.testing.assert_close(head.block_entries(slice(4, 13), blocks), want, rtol=1e-5, atol=1e-5)
    targets = torch.randint(0, v, (9, 1), generator=torch.Generator().manual_seed(31))
    torch.testing.assert_close(head.entries(slice(4, 13), targets), x[4:13].gather(1, targets), rtol=1e-6, atol=1e-6)


def test_kept_rows_reduce_as_the_rows_they_keep(monkeypatch):
    """Issue 25: rows of a larger logits tensor, copied a tile at a time, give exactly the columns of those rows
    gathered whole; a scaled view gathers them; a tensor and HeadLogits mix with them."""
    x, z = logits(50, 1500, 3), logits(50, 1500, 4)
    index = torch.randperm(50, generator=torch.Generator().manual_seed(5))[:37].sort().values
    y = torch.randint(0, 1500, (37,), generator=torch.Generator().manual_seed(6))
    tiny_tiles(monkeypatch, rows=5)
    kept = KeptRows(z, index)
    assert kept.shape == (37, 1500) and torch.equal(kept / 2.0, z[index] / 2.0)
    head = head_logits(37, 1500, 7)
    got = reduce_logits(KeptRows(x, index), [kept, head], y, backend="torch")
    assert_same_columns(got, reduce_logits(x[index], [z[index], head], y, backend="torch"))


def test_lazy_logits_of_another_shape_are_refused():
    t, y = head_logits(4, 30, 8), torch.tensor([0, 1, 2, 3])
    for student in (head_logits(4, 31, 9), KeptRows(torch.zeros(6, 30), torch.arange(3))):
        with pytest.raises(AuditError, match="expected student 0 logits of shape"):
            reduce_logits(t, [student], y, backend="torch")


def test_auto_backend_is_eager_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(reduce_module, "_fused", lambda *a: calls.append(a))
    reduce_logits(logits(3, 4, 17), [logits(3, 4, 18)], torch.tensor([0, 1, 2]))
    assert calls == []


@pytest.mark.parametrize("v", [5000, 5120, 49152])
def test_block_search_finds_the_first_maximum_and_the_top_k(v):
    """Vocabularies large enough for the block search of reduce._top, against max and topk over whole rows:
    a row tied at its maximum in two blocks, rows with masked (-inf) entries, one with fewer finite logits
    than k, and a vocabulary that is not a multiple of the block."""
    x = logits(24, v, 17)
    x[0, [7, v - 1]] = 50.0  # tied maxima far apart: the first index wins
    x[1, :] = float("-inf")
    x[1, [3, v - 2]] = 1.0  # two finite logits, k = 5: the row falls back to topk over all of it
    x[2, : v // 2] = float("-inf")
    x[3, v - 1] = 60.0  # the maximum in the last (short) block
    top, top1, ids = reduce_module._top(x, 5)
    want_top, want_top1 = x.max(-1)
    torch.testing.assert_close(top, want_top, rtol=0, atol=0)
    assert top1.tolist() == want_top1.tolist() and top1[0] == 7 and top1[3] == v - 1
    want = x.topk(5, dim=-1)
    for row in range(len(x)):
        if row == 1:  # three of the five are -inf: any three of them are a valid top 5
            assert {3, v - 2} <= set(ids[row].tolist()) and len(set(ids[row].tolist())) == 5
            continue
        assert set(ids[row].tolist()) == set(want.indices[row].tolist()), row
