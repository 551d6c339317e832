"""The static-state decoding step (deltanet/layers/static.py, deltanet/generation.py) on CPU, every family: each step
equals the full forward token by token (a wrapping ring buffer, left-padded batches), greedy generation through it
equals the reference loop, sampling is a real draw, and bad input fails with a clear error."""
from __future__ import annotations

import pytest
import torch

from deltanet import FAMILIES, DeltaNetConfig, DeltaNetForCausalLM
from deltanet.generation import StaticCache, sample_next, sample_static


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch")
    return DeltaNetConfig(**{**base, **kw})


FAMILY_CONFIGS = {
    "deltanet": dict(family="deltanet"),
    "deltanet_hybrid_swa": dict(family="deltanet_hybrid_swa", attn_window=6),  # window << T: the ring buffer wraps
    "deltanet_hybrid_global": dict(family="deltanet_hybrid_global", num_layers=4),  # attention at layers 2 and 3
    "transformer": dict(family="transformer"),
    "mamba": dict(family="mamba", ssm_state_size=4),
    "gated_deltanet": dict(family="gated_deltanet"),
    "gated_deltanet_hybrid_swa": dict(family="gated_deltanet_hybrid_swa", attn_window=6),
    "retnet": dict(family="retnet"),
    "gla": dict(family="gla"),
}


def static_logits(model, ids: torch.Tensor, prompt_len: int, attention_mask=None) -> torch.Tensor:
    """Prefill ids[:, :prompt_len], then feed ids[:, t] one at a time through the static step: (B, T - P, V),
    the logits predicting positions prompt_len + 1 .. T (those at positions prompt_len .. T - 1)."""
    B, T = ids.shape
    with torch.no_grad():
        logits, cache = model._prefill(ids[:, :prompt_len],
                                       None if attention_mask is None else attention_mask[:, :prompt_len])
        sc = StaticCache.allocate(model, B, T, 1, ids.device, model.lm_head.weight.dtype)
        sc.load(model, cache, logits.argmax(-1), None)
        out = []
        for t in range(prompt_len, T):
            sc.tok.copy_(ids[:, t:t + 1])
            h = model.model.step(sc.tok, sc.layers, sc.pos)
            out.append(model.lm_head(h))
            sc.pos.add_(1)
    return torch.cat(out, 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len", [3, 70])  # recurrent prefill, ring not yet full; chunk prefill, ring wrapped
def test_static_step_equals_full_forward(family, prompt_len):
    torch.manual_seed(20)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family])).eval()
    ids = torch.randint(0, 97, (2, prompt_len + 14))  # 14 steps: wraps the 6-slot ring at least twice
    with torch.no_grad():
        full = model(ids).logits
    got = static_logits(model, ids, prompt_len)
    assert rel_err(got, full[:, prompt_len:]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_static_step_left_padded_batch_equals_each_row_alone(family):
    torch.manual_seed(21)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family])).eval()
    lengths, P, steps = [9, 4, 7], 9, 10
    rows = [torch.randint(0, 97, (n + steps,)) for n in lengths]
    ids = torch.zeros(3, P + steps, dtype=torch.long)
    mask = torch.zeros(3, P + steps, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - lengths[i]:] = r
        mask[i, P - lengths[i]:] = 1
    got = static_logits(model, ids, P, attention_mask=mask)  # (3, steps, V)
    for i, r in enumerate(rows):
        with torch.no_grad():
            alone = model(r[None]).logits[0, lengths[i]:]
        assert rel_err(got[i], alone) < 1e-5, f"row {i}"


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_static_equals_reference_loop(family):
    torch.manual_seed(22)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family]))
    prompt = torch.randint(0, 97, (2, 11))
    fast, stats = model.generate(prompt, max_new_tokens=12, temperature=0.0, return_stats=True)
    ref = model.generate(prompt, max_new_tokens=12, temperature=0.0, fast=False)
    assert torch.equal(fast, ref) and fast.shape == (2, 23)
    assert stats.fast and not stats.cuda_graph and stats.new_tokens == 12 and stats.decode_steps == 11
    assert stats.prefill_s > 0 and stats.decode_s > 0 and stats.decode_tokens_per_s > 0
    assert model.training  # mode restored


def test_generate_left_padded_static_and_eos_and_streaming():
    torch.manual_seed(23)
    model = DeltaNetForCausalLM(tiny(family="deltanet_hybrid_global", num_layers=4)).eval()
    a, b = torch.randint(1, 97, (8,)), torch.randint(1, 97, (5,))
    ids = torch.zeros(2, 8, dtype=torch.long)
    ids[0], ids[1, 3:] = a, b
    mask = (torch.arange(8)[None] >= torch.tensor([[0], [3]])).long()
    out = model.generate(ids, 6, temperature=0.0, attention_mask=mask)
    assert torch.equal(out[0], model.generate(a[None], 6, temperature=0.0)[0])
    assert torch.equal(out[1, 3:], model.generate(b[None], 6, temperature=0.0)[0])
    # eos: pick the token row 0 produces third; both paths stop at the same place and fill finished rows
    eos = int(out[0, 10])
    streamed = []
    fast = model.generate(ids, 6, temperature=0.0, attention_mask=mask, eos_token_id=eos,
                          streamer=lambda t: streamed.append(t))
    ref = model.generate(ids, 6, temperature=0.0, attention_mask=mask, eos_token_id=eos, fast=False)
    assert torch.equal(fast, ref)
    assert torch.equal(torch.stack(streamed, 1)[:, :fast.shape[1] - 8], fast[:, 8:])


def test_sample_static_is_a_draw_from_the_truncated_softmax():
    torch.manual_seed(24)
    logits = torch.randn(1, 6).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    for top_k, top_p in [(0, 1.0), (3, 1.0), (0, 0.7)]:
        draws = sample_static(logits, 0.8, top_k, top_p, generator=g)
        freq = torch.bincount(draws, minlength=6).double() / draws.numel()
        ref_draws = sample_next(logits, 0.8, top_k, top_p, generator=g)
        ref = torch.bincount(ref_draws, minlength=6).double() / ref_draws.numel()
        assert (freq - ref).abs().max() < 0.02, (top_k, top_p, freq, ref)
        assert ((freq > 0) == (ref > 0)).all()  # the same support: truncation applied identically
    assert torch.equal(sample_static(logits[:3], 0.0), logits[:3].argmax(-1))


def test_bad_input_is_rejected_with_a_clear_error():
    model = DeltaNetForCausalLM(tiny(family="transformer"))
    ids = torch.randint(1, 97, (2, 5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, -1)
    with pytest.raises(ValueError, match="max_length=8"):
        model.generate(ids, 4, max_length=8)
    with pytest.raises(ValueError, match="different lengths"):
        model.generate([[1, 2, 3], [4, 5]], 2)
    padded = ids.clone()
    padded[1, :2] = 0
    with pytest.raises(ValueError, match="pad_token_id=0 but no attention_mask"):
        model.generate(padded, 2, pad_token_id=0)
    with pytest.raises(ValueError, match="cuda_graph=True"):
        model.generate(ids, 2, cuda_graph=True)
    with pytest.raises(ValueError, match="no room"):  # a cache sized too small at the lower level
        with torch.no_grad():
            logits, cache = model._prefill(ids, None)
            StaticCache.allocate(model, 2, 5, 1, ids.device, torch.float32).load(model, cache, logits.argmax(-1), None)
    out = model.generate([[1, 2, 3], [4, 5, 6]], 0)  # equal rows as lists are fine; 0 new tokens = the prompt
    assert out.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("family", ["deltanet", "gated_deltanet", "retnet"])
def test_static_step_on_the_triton_kernels_equals_full_forward(family, triton_runnable):
    """The layers' Triton step kernel (kernels.decode_step; interpreted on CPU, compiled on CUDA) wired
    into the model: the steps equal the full forward of the torch backend."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(25)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family], fused=False)).to(device).eval()
    ids = torch.randint(0, 97, (2, 9), device=device)
    with torch.no_grad():
        full = model(ids).logits
    model.config.backend = "triton"  # one config object: every layer switches
    try:
        got = static_logits(model, ids, 4)
    finally:
        model.config.backend = "torch"
    assert rel_err(got, full[:, 4:]) < 1e-4


def test_a_mixer_without_the_static_protocol_falls_back_to_the_reference_loop():
    torch.manual_seed(26)
    model = DeltaNetForCausalLM(tiny(family="deltanet"))
    prompt = torch.randint(0, 97, (1, 6))
    ref = model.generate(prompt, 5, temperature=0.0, fast=False)
    model.model.layers[1].mixer.step = None  # as a family that has not implemented it
    out, stats = model.generate(prompt, 5, temperature=0.0, return_stats=True)
    assert not stats.fast and torch.equal(out, ref)
