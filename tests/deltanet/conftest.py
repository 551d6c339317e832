import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """The models here are tiny: one intra-op thread is faster than two and immune to CPU oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
