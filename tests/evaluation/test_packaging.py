"""The project's top-level `kernels` package must be the only one installed: Hugging Face's `kernels` distribution
(which transformers >= 5.25 requires, hence the pin in pyproject.toml) ships a package of the same name, and
transformers would then import ours in its place (ImportError in `transformers.integrations.hub_kernels`)."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import kernels

ROOT = Path(__file__).resolve().parents[2]


def test_no_other_distribution_ships_a_kernels_package():
    try:
        other = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        other = None
    assert other is None, (f"the distribution 'kernels' {other.version} is installed (Hugging Face's; transformers >= "
                           "5.25 requires it) and collides with this project's `kernels` package: "
                           "`pip install 'transformers<5.25' && pip uninstall kernels`")
    assert Path(kernels.__file__).resolve().parent == ROOT / "kernels"


def test_transformers_models_import():
    pytest.importorskip("transformers")
    import transformers.activations  # noqa: F401  (imports transformers.integrations.hub_kernels)
