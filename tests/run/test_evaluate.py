"""The loop of every evaluation (audit.run.evaluate): rows placed by index, cached batches read instead of run."""

import torch

from audit.run.cache import PredictionStore
from audit.run.evaluate import evaluate_plan

# a plan of 3 batches over 7 rows, dealt out of order (as the length-sorted classifier plan deals them)
ROWS = [torch.tensor([4, 0, 6]), torch.tensor([2, 5, 1]), torch.tensor([3])]
SIZES = [3, 3, 1]
EXPECTED = torch.tensor([[0.0, -0.0], [1, -1], [2, -2], [3, -3], [4, -4], [5, -5], [6, -6]])


def _values(rows: torch.Tensor) -> torch.Tensor:
    return torch.stack([rows.float(), -rows.float()], 1)


def _compute(asked: list[set[int]]):
    def compute(wanted: set[int]):
        asked.append(set(wanted))
        for b in sorted(wanted):
            yield b, ROWS[b], _values(ROWS[b])

    return compute


def test_every_row_lands_at_its_index():
    asked = []
    out = evaluate_plan(SIZES, _compute(asked), total=7, width=2, description="test")
    assert asked == [{0, 1, 2}]
    assert out.dtype == torch.float32 and torch.equal(out, EXPECTED)


def test_cached_batches_are_read_not_run_and_new_ones_are_stored(tmp_path):
    store = PredictionStore.open({"test": "evaluate"}, name="t", num_classes=2, root=tmp_path)
    store.add(1, ROWS[1], 100 * _values(ROWS[1]))  # values no computation gives: they can only come from the cache
    store.flush()
    asked = []
    out = evaluate_plan(SIZES, _compute(asked), total=7, width=2, description="test", store=store)
    assert asked == [{0, 2}]
    expected = EXPECTED.clone()
    expected[[2, 5, 1]] *= 100
    assert torch.equal(out, expected)
    reopened = PredictionStore.open({"test": "evaluate"}, name="t", num_classes=2, root=tmp_path)
    assert reopened.cached_batches() == {0, 1, 2}
    asked.clear()
    assert torch.equal(evaluate_plan(SIZES, _compute(asked), total=7, width=2, description="test", store=reopened),
                       expected)
    assert asked == [set()]
