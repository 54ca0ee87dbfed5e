import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from seed 0 and leaves torch's thread count as it found it (tests of split
    launches set their own)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device exists and are deselected (not skipped:
    the suite reports no skips) where none does."""
    from diffvc._kernels import cuda_available

    if cuda_available():
        return
    cuda = [item for item in items if "cuda" in item.keywords]
    if cuda:
        config.hook.pytest_deselected(items=cuda)
        items[:] = [item for item in items if "cuda" not in item.keywords]
