"""CausalLMModule in a real Lightning Trainer (CPU, tiny model): per-step logging, NaN/Inf skipping, the K-bad-steps
stop, weight-decay groups. In process (no run.py subprocess), on the fast `transformer` family."""
from __future__ import annotations

import copy
import math
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from deltanet import DeltaNetConfig
from lit_modules import CausalLMModule
from lit_modules.callbacks import StepCheckpoint
from tests.fault_injector import FaultInjector
from lit_modules.causal_lm import NonFiniteTrainingError, _clean
from lit_modules.flops import flops_per_token, peak_flops
from lit_modules.schedules import cosine_with_warmup
from tests.helpers import read_scalars

VOCAB = 64


def tiny_module(max_bad_steps: int = 3, scheduler: bool = True, peak_flops_per_device=None) -> CausalLMModule:
    config = DeltaNetConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, family="transformer")
    return CausalLMModule(config, optimizer=partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01),
                          scheduler=partial(cosine_with_warmup, warmup_steps=2, total_steps=8, min_lr=1e-3)
                          if scheduler else None, max_bad_steps=max_bad_steps,
                          peak_flops_per_device=peak_flops_per_device)


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, 16), generator=g)
        labels = ids.clone()
        labels[:, :3] = -100  # some ignored targets: the loss is a mean over the rest
        out.append({"input_ids": ids, "labels": labels})
    return out


class Snapshots(L.Callback):
    """lm_head weight after every optimizer step, keyed by the number of steps taken."""

    def __init__(self):
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = pl_module.model.lm_head.weight.detach().clone()


def fit(module, data, tmp_path, max_steps: int, accumulate: int = 1, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, accumulate_grad_batches=accumulate,
                        gradient_clip_val=1.0, logger=TensorBoardLogger(str(tmp_path), name="tb", version=""),
                        callbacks=[StepCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2,
                                                   filename="step{step:07d}", auto_insert_metric_name=False,
                                                   save_top_k=-1, save_last=True), *callbacks],
                        log_every_n_steps=1, limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    return trainer


def test_logged_step_metrics_match_a_manual_step(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(peak_flops_per_device=1e12)
    reference = copy.deepcopy(module)
    data = batches(8, seed=1)
    fit(module, data, tmp_path, max_steps=4, accumulate=2)

    # step 0 = micro-batches 0 and 1 from the initial weights: token-weighted mean loss, gradient norm before clipping
    n = [int((b["labels"][:, 1:] != -100).sum()) for b in data[:2]]
    losses = [reference._loss(b) for b in data[:2]]
    ((losses[0] * n[0] + losses[1] * n[1]) / sum(n)).backward()  # = Lightning's sum of loss / accumulate, reweighted
    ref_loss = (losses[0].item() * n[0] + losses[1].item() * n[1]) / sum(n)
    logged = dict(read_scalars(tmp_path, "train/loss"))
    assert len(logged) == 4
    first = logged[min(logged)]
    assert math.isclose(first, ref_loss, rel_tol=1e-5), (first, ref_loss)
    ppl = dict(read_scalars(tmp_path, "train/ppl"))
    assert all(math.isclose(ppl[s], math.exp(v), rel_tol=1e-5) for s, v in logged.items())

    # Lightning's backward sums loss/accumulate per micro-batch (equal weights here: n[0] == n[1])
    assert n[0] == n[1]
    ref_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in reference.model.parameters())).item()
    grad_norm = dict(read_scalars(tmp_path, "train/grad_norm"))
    assert math.isclose(grad_norm[min(grad_norm)], ref_norm, rel_tol=1e-4), (grad_norm, ref_norm)

    lrs = [v for _, v in read_scalars(tmp_path, "train/lr")]
    expected = [1e-2 * cosine_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1e-2), 2, 8, 1e-3).lr_lambdas[0](s)
                for s in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    tps = read_scalars(tmp_path, "train/tokens_per_s")
    assert len(tps) == 3 and all(v > 0 for _, v in tps)  # every step but the first is timed
    fpt = flops_per_token(module.model_config, 16, module.model.num_parameters())
    mfu = read_scalars(tmp_path, "train/mfu")
    assert [s for s, _ in mfu] == [s for s, _ in tps]
    assert [v for _, v in mfu] == pytest.approx([v * fpt / 1e12 for _, v in tps], rel=1e-5)
    assert module.tokens_seen == 8 * 2 * 16


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    torch.manual_seed(1)
    module = tiny_module(scheduler=False)
    snaps = Snapshots()
    fit(module, batches(12, seed=2), tmp_path, max_steps=6, accumulate=2,
        callbacks=[FaultInjector(nan_loss_steps=[2], inf_grad_steps=[4]), snaps])
    w = snaps.weights
    assert torch.equal(w[3], w[2]) and torch.equal(w[5], w[4])  # the bad steps (index 2 and 4) changed nothing
    assert not torch.equal(w[2], w[1]) and not torch.equal(w[4], w[3]) and not torch.equal(w[6], w[5])
    assert all(torch.isfinite(t).all() for t in w.values())
    optimizer = module.trainer.optimizers[0]
    assert all(int(s["step"]) == 4 for s in optimizer.state.values())  # AdamW moments saw 4 of 6 steps
    assert module.skipped_steps == 2 and module.consecutive_bad == 0
    skipped = [v for _, v in read_scalars(tmp_path, "train/skipped_steps")]
    assert skipped == [0, 0, 1, 1, 2, 2]
    losses = [v for _, v in read_scalars(tmp_path, "train/loss")]
    assert math.isnan(losses[2]) and all(math.isfinite(v) for i, v in enumerate(losses) if i != 2)


def test_consecutive_bad_steps_stop_the_run_and_keep_a_clean_checkpoint(tmp_path):
    torch.manual_seed(2)
    module = tiny_module(max_bad_steps=3, scheduler=False)
    with pytest.raises(NonFiniteTrainingError) as e:
        fit(module, batches(20, seed=3), tmp_path, max_steps=10, callbacks=[FaultInjector(nan_loss_steps=[3, 4, 5])])
    msg = str(e.value)
    assert "3 consecutive optimizer steps (steps 3..5" in msg and "last updated at step 2" in msg
    ckpt_path = tmp_path / "checkpoints" / "step0000002.ckpt"
    assert str(ckpt_path) in msg
    assert not (tmp_path / "checkpoints" / "step0000006.ckpt").exists()  # stopped during step 5
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 and all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_two_bad_steps_with_a_good_one_between_do_not_stop(tmp_path):
    torch.manual_seed(3)
    module = tiny_module(max_bad_steps=2, scheduler=False)
    fit(module, batches(6, seed=4), tmp_path, max_steps=5, callbacks=[FaultInjector(nan_loss_steps=[1, 3])])
    assert module.skipped_steps == 2 and module.trainer.global_step == 5
    # checkpoints every 2 steps, and last.ckpt holds the end of training (step 5), counters included
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 5 and last["recipe_state"]["skipped_steps"] == 2
    assert torch.equal(last["state_dict"]["model.lm_head.weight"], module.model.lm_head.weight)


def test_weight_decay_only_on_matrices():
    module = tiny_module(scheduler=False)
    decay, no_decay = module.configure_optimizers().param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert any("embeddings" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))
    # FSDP / checkpoint wrappers rename parameters; the groups are decided on the clean names
    assert _clean("model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"


def test_flops_per_token_and_peaks():
    cfg = DeltaNetConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, family="transformer")
    n = 10_000
    assert flops_per_token(cfg, 128, n) == 6 * (n - VOCAB * 32) + 2 * 12 * 2 * 16 * 128
    swa = DeltaNetConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, family="deltanet_hybrid_swa",
                         attn_window=64)
    d = 16
    delta = 3 * 2 * (6 * 64 * d + 4 * 64 * d + 6 * d * d)
    assert flops_per_token(swa, 128, n) == 6 * (n - VOCAB * 32) + delta + 12 * 2 * d * 64
    assert peak_flops("NVIDIA H200") == 989.4e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and peak_flops(None) is None
