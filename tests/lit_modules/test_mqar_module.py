"""MQARModule: accuracy over the query positions only, and `python run.py experiment=mqar` end to end (tiny, CPU)."""
from __future__ import annotations

import functools

import pytest
import torch

from datamodules.mqar import generate_mqar
from deltanet import DeltaNetConfig
from lit_modules.mqar import MQARModule, query_predictions
from tests.helpers import read_scalars, run_py

V, T, P = 128, 32, 4


def _module(seed: int) -> MQARModule:
    torch.manual_seed(seed)
    cfg = DeltaNetConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=1)
    return MQARModule(cfg, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))


def test_query_predictions_are_the_full_logits_at_the_query_positions():
    module = _module(0).eval()
    d = generate_mqar(6, T, P, vocab_size=V, seed=11)
    logits, target = query_predictions(module.model, d["input_ids"], d["labels"])
    assert logits.shape == (6 * P, V) and target.shape == (6 * P,)
    with torch.no_grad():
        full = module.model(d["input_ids"]).logits  # (B, T, V)
    rows = torch.arange(6).repeat_interleave(P)
    cols = d["query_pos"].sort(1).values.flatten()  # query_predictions walks positions in order
    torch.testing.assert_close(logits, full[rows, cols].float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(target, d["labels"][rows, cols + 1])


def test_validation_accuracy_counts_only_queries():
    module = _module(1).eval()
    d = generate_mqar(8, T, P, vocab_size=V, seed=12)
    with torch.no_grad():
        module.validation_step({"input_ids": d["input_ids"], "labels": d["labels"]}, 0)
        full = module.model(d["input_ids"]).logits.argmax(-1)  # (B, T)
    rows = torch.arange(8).unsqueeze(1)
    want = (full[rows, d["query_pos"]] == d["labels"][rows, d["query_pos"] + 1]).float().mean()
    assert module.val_acc.compute().item() == pytest.approx(want.item())


def test_run_py_mqar_tiny(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_py("experiment=mqar", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}",
                  f"data.vocab_size={V}", f"model.vocab_size={V}", f"data.seq_len={T}", f"data.num_kv_pairs={P}",
                  "model.hidden_size=32", "data.num_train_examples=64", "data.num_test_examples=16",
                  "data.batch_size=8", "trainer.max_steps=4", "trainer.val_check_interval=2",
                  "optim.scheduler.warmup_steps=1", "callbacks.model_checkpoint.every_n_train_steps=2")
    assert "MQAR step 4: test accuracy" in proc.stdout
    accs = read_scalars(run_dir, "val/acc")
    assert len(accs) >= 2 and all(0.0 <= a <= 1.0 for _, a in accs)
    losses = read_scalars(run_dir, "val/loss")
    assert all(abs(l - 4.85) < 1.0 for _, l in losses)  # near ln(128): untrained, finite, over the queries only
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
