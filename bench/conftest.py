"""Shared benchmark fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread, here and (through OMP_NUM_THREADS) in launched processes: on a small shared
    CPU a second thread spins, making small-model and small-tensor work 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)
