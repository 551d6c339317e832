import os
import sys

import pytest
import torch

# Without CUDA, Triton kernels run only under the interpreter, which triton reads once at import.  This directory is
# collected before tests/kernels, and importing deltanet imports kernels/ and triton, so set it here too (the better
# home is tests/conftest.py, which runs before every test directory).
# Triton imported earlier (e.g. by `import lightning` in tests/datamodules) without it cannot interpret kernels.
TRITON_IMPORTED_TOO_EARLY = (not torch.cuda.is_available() and "triton" in sys.modules
                             and os.environ.get("TRITON_INTERPRET") != "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_runnable():
    """Fails (does not skip) when the Triton path cannot run here, saying why."""
    if TRITON_IMPORTED_TOO_EARLY:
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set (`import lightning` imports it): set it in "
                    "tests/conftest.py when CUDA is unavailable, before any test module imports lightning or kernels")


@pytest.fixture(autouse=True)
def _single_thread():
    """The models here are tiny: one intra-op thread is faster than two and immune to CPU oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
