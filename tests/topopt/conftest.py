import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Geometry tests use small tensors: on the shared 2-core machine, torch's second OpenMP thread
    mostly spins (a tiny op took ~7x longer with 2 threads than with 1 under load). Tests that
    exercise multi-threaded paths (split Warp launches) raise the count themselves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
