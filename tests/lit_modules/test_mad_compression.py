"""MADCompressionModule: MAD's encoder-decoder compression (deltanet/compression.py).  The loss and accuracy come from
the decoder's logits at every position; the decoder reads only the backbone's output at the last position; its
weights are trained and decayed like the model's; a tiny run learns."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from datamodules.mad import generate_compression
from deltanet import DeltaNetConfig
from deltanet.compression import CompressionDecoder, sincos_positions
from lit_modules.mad import MADCompressionModule

V, L = 16, 12


def _module(seed: int = 0, **kw) -> MADCompressionModule:
    torch.manual_seed(seed)
    cfg = DeltaNetConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, **kw)
    return MADCompressionModule(cfg, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.1),
                                max_length=64)


def test_loss_and_accuracy_are_over_every_position_of_the_decoded_row():
    module = _module().eval()
    batch = generate_compression(5, vocab_size=V, seq_len=L, seed=1)
    with torch.no_grad():
        h, _ = module.model.model(batch["input_ids"])
        logits = module.model.compression_decoder(h[:, -1], L)
        assert logits.shape == (5, L, V) and logits.dtype == torch.float32
        want = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        assert torch.allclose(module._loss(batch), want)
        module.validation_step(batch, 0)
    assert int(module._targets(batch)) == 5 * L
    assert torch.allclose(module.val_loss.compute(), want)
    acc = (logits.argmax(-1) == batch["targets"]).float().mean()
    assert torch.allclose(module.val_acc.compute(), acc)


def test_the_decoder_sees_only_the_last_positions_output():
    """Changing a token changes the logits only through the encoding at z: the decoder's input is one vector."""
    module = _module(family="transformer").eval()
    dec = module.model.compression_decoder
    seen = []
    hook = dec.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    batch = generate_compression(2, vocab_size=V, seq_len=L, seed=2)
    with torch.no_grad():
        module._loss(batch)
        h, _ = module.model.model(batch["input_ids"])
    hook.remove()
    assert seen[0].shape == (2, 32) and torch.equal(seen[0], h[:, -1])


def test_decoder_weights_are_trained_and_decayed():
    module = _module()
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    groups = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    dec = module.model.compression_decoder
    assert groups[id(dec.fc1.weight)] == 0.1 and groups[id(dec.unembed.weight)] == 0.1
    assert groups[id(dec.fc1.bias)] == 0.0 and groups[id(dec.norm1.weight)] == 0.0
    assert module._n_params == sum(p.numel() for p in module.model.parameters())
    assert id(module.model.lm_head.weight) not in groups  # unused by this task: frozen, not in the optimizer
    batch = generate_compression(32, vocab_size=V, seq_len=L, seed=3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = module._loss(batch)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert dec.fc1.weight.grad is not None and losses[-1] < 0.7 * losses[0]


def test_sincos_positions_and_length_check():
    pos = sincos_positions(10, 6)
    assert pos.shape == (10, 6) and torch.allclose(pos[0], torch.tensor([0., 0., 0., 1., 1., 1.]))
    assert torch.allclose(pos[:, :3] ** 2 + pos[:, 3:] ** 2, torch.ones(10, 3))
    with pytest.raises(ValueError, match="at most 8"):
        CompressionDecoder(6, V, max_length=8)(torch.zeros(1, 6), 9)
