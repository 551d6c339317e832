import os
import sys
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, so set it before any test module imports kernels/:
# without a GPU, the kernel tests run the Triton kernels themselves in Triton's CPU interpreter.
# (The model layers pick their backend by device, so this does not push model tests onto the interpreter.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DELTANET_ROOT", str(ROOT))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skip them (visibly) on CPU-only machines."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """One data directory per test session, so the embedded corpus is tokenized once."""
    return tmp_path_factory.mktemp("data")
