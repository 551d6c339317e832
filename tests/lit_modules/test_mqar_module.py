"""MQARModule: the fixed-shape loss is the model's, accuracy over the query positions only, the run record, and
`python run.py experiment=mqar` end to end (tiny, CPU; with early stopping and a fresh train set per epoch)."""
from __future__ import annotations

import functools
import json

import pytest
import torch

from datamodules.mqar import answer_index, generate_mqar, generate_mqar_mixture
from deltanet import DeltaNetConfig
from lit_modules.mqar import MQARModule, answer_loss, query_predictions
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


@pytest.mark.parametrize("mixture", [False, True])
def test_answer_loss_is_the_models_loss_and_its_gradient(mixture):
    module = _module(2)
    d = (generate_mqar_mixture(6, T, [2, P], seed=13, vocab_size=V) if mixture
         else generate_mqar(6, T, P, vocab_size=V, seed=13))
    pos, ans = answer_index(d["labels"])
    batch = {"input_ids": d["input_ids"], "labels": d["labels"], "answer_pos": pos, "answer": ans}
    got = module._loss(batch)  # what training_step uses on MQARDataModule batches
    grads = torch.autograd.grad(got, list(module.model.parameters()))
    want = module.model(d["input_ids"], labels=d["labels"]).loss
    want_grads = torch.autograd.grad(want, list(module.model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert answer_loss(module.model, d["input_ids"], pos, ans).item() == pytest.approx(got.item())


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


def test_run_py_mqar_stops_at_the_target_and_records_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_py("experiment=mqar", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}",
           f"data.vocab_size={V}", f"model.vocab_size={V}", f"data.seq_len={T}", f"data.num_kv_pairs={P}",
           "model.hidden_size=32", "data.num_train_examples=32", "data.num_test_examples=16", "data.batch_size=8",
           "trainer.max_steps=40", "trainer.val_check_interval=3", "optim.scheduler.warmup_steps=1",
           "data.fresh_train_data=true", "trainer.reload_dataloaders_every_n_epochs=1", "data.train_kv_pairs=[2,4]",
           "callbacks=early_stopping", "callbacks.early_stopping.stopping_threshold=0.0")  # reached at once
    rec = json.loads((run_dir / "mqar_run.json").read_text())
    assert [p["step"] for p in rec["curve"]] == [3]  # stopped at the first validation
    assert (rec["steps"], rec["sequences"], rec["batch_size"]) == (3, 24, 8)
    assert (rec["family"], rec["width"], rec["lr"], rec["train_kv_pairs"], rec["fresh_train_data"]) == \
        ("deltanet", 32, 3e-3, [2, 4], True)
    assert rec["train_seconds"] > 0 and rec["final_acc"] == rec["curve"][-1]["acc"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"]["val/acc"] == pytest.approx(rec["final_acc"])
