"""Refactors that do not change the math keep the losses: the same seed gives the same losses as recorded.

Two references, both in ``tests/assets/reference_losses.json``:

- ``families``: every model family (small, float32, CPU torch path) trained for a few AdamW steps on fixed random
  tokens in this process; the per-step losses.
- ``smoke``: ``python run.py experiment=smoke`` (embedded corpus, deterministic, CPU) with the DeltaNet model; the
  per-step ``train/loss`` logged to TensorBoard, so data, recipe, schedule and Lightning loop are covered too.

A change that is meant to change the numbers regenerates the file on purpose:
``DELTANET_WRITE_REFERENCE=1 python -m pytest tests/test_reference_losses.py`` (and says why in its commit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import read_scalars, run_py

ASSET = Path(__file__).parent / "assets" / "reference_losses.json"
WRITE = os.environ.get("DELTANET_WRITE_REFERENCE") == "1"
RTOL = 1e-5  # float32 on CPU: the same ops in the same order agree to rounding; a real change moves losses by far more

FAMILIES = ("deltanet", "deltanet_hybrid_swa", "deltanet_hybrid_global", "transformer")
SMOKE = ["experiment=smoke", "model=deltanet", "trainer.accelerator=cpu", "trainer.deterministic=true", "seed=5",
         "trainer.log_every_n_steps=1", "run_final_validation=false"]


def _reference() -> dict:
    if WRITE:
        return json.loads(ASSET.read_text()) if ASSET.exists() else {}
    assert ASSET.exists(), f"{ASSET} is missing: record it with DELTANET_WRITE_REFERENCE=1"
    return json.loads(ASSET.read_text())


def _check(key: str, name: str, losses: list[float]) -> None:
    ref = _reference()
    if WRITE:
        ref.setdefault(key, {})[name] = losses
        ASSET.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")
        return
    want = ref[key][name]
    assert len(losses) == len(want), (name, losses, want)
    for step, (got, exp) in enumerate(zip(losses, want)):
        assert abs(got - exp) <= RTOL * abs(exp), f"{key}/{name} step {step}: loss {got!r} != recorded {exp!r}"


def _family_losses(family: str, steps: int = 4) -> list[float]:
    from deltanet import DeltaNetConfig, DeltaNetForCausalLM

    torch.manual_seed(1234)
    cfg = DeltaNetConfig(family=family, vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, backend="torch",
                         attn_window=8 if family == "deltanet_hybrid_swa" else None)
    model = DeltaNetForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(99))
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", FAMILIES)
def test_family_losses_match_reference(family):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the reductions run in one order
    try:
        _check("families", family, _family_losses(family))
    finally:
        torch.set_num_threads(n)


def test_smoke_run_losses_match_reference(tmp_path, shared_data_dir):
    run_py(*SMOKE, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={tmp_path / 'run'}",
           env={"OMP_NUM_THREADS": "1"})
    losses = [v for _, v in read_scalars(tmp_path / "run", "train/loss")]
    assert len(losses) == 20, losses
    _check("smoke", "deltanet", losses)
