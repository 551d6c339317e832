"""Model-level checks on CPU: cached decoding == full forward for every family, loss, varlen, persistence, configs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from deltanet import FAMILIES, DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import Attention, DeltaNet
from deltanet.model import chunked_cross_entropy


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


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_full_forward(family):
    """Prefill 9 tokens, then 1 token at a time, then a chunk of 8: logits equal one full forward of 80 tokens.

    The full forward (80 > 64 tokens) runs the chunkwise delta rule; the steps run the recurrent one.
    """
    torch.manual_seed(10)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family])).eval()
    assert sum(isinstance(b.mixer, Attention) for b in model.model.layers) == len(model.config.attn_layers)
    x = torch.randint(0, 97, (2, 80))
    with torch.no_grad():
        full = model(x).logits  # (2, 80, 97)
        out = model(x[:, :9], use_cache=True)
        logits, cache = [out.logits], out.cache
        for t in range(9, 72):
            out = model(x[:, t:t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
        out = model(x[:, 72:], cache=cache, use_cache=True)  # multi-token step reading the cache
        logits.append(out.logits)
    assert out.cache.seen_tokens == 80
    assert rel_err(torch.cat(logits, 1), full) < 1e-5
    if family == "deltanet_hybrid_swa":  # constant memory: the ring buffer holds exactly `window` slots
        assert out.cache.layers[1]["k"].shape[2] == 6
    if family in ("deltanet_hybrid_global", "transformer"):  # global KV cache: 80 tokens in a buffer grown 64 -> 128
        kv = out.cache.layers[1]
        assert kv["len"] == 80 and kv["k"].shape[2] == 128 and bool((kv["pos"][80:] == -1).all())


def test_generate_greedy_matches_argmax_and_stops_at_eos():
    torch.manual_seed(11)
    model = DeltaNetForCausalLM(tiny(family="deltanet_hybrid_swa", attn_window=4))
    prompt = torch.randint(0, 97, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0.0)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    assert model.training  # mode restored
    with torch.no_grad():
        model.eval()
        ref = model(out[:, :-1]).logits.argmax(-1)[:, 4:]  # what each position predicts
    assert torch.equal(ref, out[:, 5:])
    eos = int(out[0, 7])  # force row 0 to stop at its 3rd new token
    out2 = model.generate(prompt, max_new_tokens=12, temperature=0.0, eos_token_id=eos)
    first = [(row[5:] == eos).nonzero()[0].item() for row in out2 if (row[5:] == eos).any()]
    assert first and first[0] <= 2
    assert (out2[0, 5 + first[0]:] == eos).all()


@pytest.mark.parametrize("family", [*FAMILIES, "deltanet_elu_l1"])
def test_left_padded_batch_equals_rows_alone(family):
    """Prompts of lengths 9 and 4, left-padded to 9: the prefill logits at real tokens and the greedy continuation
    of each row equal that row run alone (padding changes no delta-rule, conv, KV-cache or ring-buffer state).
    elu + 1 with l1 normalisation: a zero input still gives a nonzero key there (the zero values keep S = 0)."""
    torch.manual_seed(14)
    cfg = dict(family="deltanet", qk_activation="elu", qk_norm="l1") if family == "deltanet_elu_l1" \
        else FAMILY_CONFIGS[family]  # SWA window 6: the ring buffer still holds padding while decoding
    model = DeltaNetForCausalLM(tiny(**cfg)).eval()
    rows = [torch.randint(3, 97, (9,)), torch.randint(3, 97, (4,))]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 9 - len(r):], mask[i, 9 - len(r):] = r, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            assert rel_err(batch[i, 9 - len(r):], alone) < 1e-5, i
        # decoding from the padded prefill: every step's logits equal the row's own cached decoding
        cont = torch.randint(3, 97, (2, 6))
        out = model(ids, attention_mask=mask, use_cache=True)
        cache, steps = out.cache, []
        for t in range(6):
            out = model(cont[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
        steps = torch.cat(steps, 1)
        for i, r in enumerate(rows):
            alone = model(torch.cat([r, cont[i]])[None]).logits[0, len(r):]
            assert rel_err(steps[i], alone) < 1e-5, i
    out = model.generate(ids, max_new_tokens=8, temperature=0.0, attention_mask=mask)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], max_new_tokens=8, temperature=0.0)[0]
        assert torch.equal(out[i, 9 - len(r):], alone), (i, out[i], alone)


def test_attention_mask_errors():
    model = DeltaNetForCausalLM(tiny()).eval()
    ids = torch.randint(0, 97, (2, 6))
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]))  # right padding
    with pytest.raises(ValueError, match="must match"):
        model(ids, attention_mask=torch.ones(2, 5))
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="without a cache"):
        model(ids[:, :2], cache=cache, attention_mask=torch.tensor([[0, 1], [1, 1]]))
    assert model(ids, attention_mask=torch.ones(2, 6)).logits.shape == (2, 6, 97)  # all ones: no padding


def test_sampling_respects_top_k_and_top_p():
    from deltanet.generation import sample_next
    g = torch.Generator().manual_seed(12)
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(500, 1)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) <= {0, 1}
    p = torch.softmax(logits[0], -1)  # top_p just above p0 keeps exactly tokens 0 and 1
    assert set(sample_next(logits, 1.0, top_p=float(p[0]) + 1e-3, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, generator=g).tolist()) >= {0, 1, 2}


def test_loss_is_shifted_mean_ce_and_chunking_is_exact():
    torch.manual_seed(13)
    model = DeltaNetForCausalLM(tiny(loss_chunk_size=7))
    x = torch.randint(0, 97, (3, 30))
    labels = x.clone()
    labels[0, 10:20] = -100
    out = model(x, labels=labels, return_logits=True)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert model(x, labels=labels).logits is None  # no full logits unless asked
    w = model.lm_head.weight
    h = torch.randn(50, 64, requires_grad=True)
    y = torch.randint(0, 97, (50,))
    chunked = chunked_cross_entropy(h, w, y, chunk_size=8)
    plain = F.cross_entropy(h @ w.t(), y)
    g1 = torch.autograd.grad(chunked, [h, w])
    g2 = torch.autograd.grad(plain, [h, w])
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(g1, g2))


@pytest.mark.parametrize("family", ["deltanet", "deltanet_hybrid_swa", "transformer", "mamba", "gated_deltanet",
                                    "retnet", "gla"])
def test_varlen_packed_equals_separate_sequences(family):
    torch.manual_seed(14)
    model = DeltaNetForCausalLM(tiny(**FAMILY_CONFIGS[family]))
    lens = [13, 1, 30, 6]
    x = torch.randint(0, 97, (1, sum(lens)))
    cu = torch.tensor([0, 13, 14, 44, 50])
    packed = model(x, cu_seqlens=cu).logits
    sep = torch.cat([model(x[:, s:e]).logits for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], 1)
    assert rel_err(packed, sep) < 1e-5
    loss = model(x, labels=x, cu_seqlens=cu).loss  # the last token of a sequence predicts nothing
    sep_sum = sum(model(x[:, s:e], labels=x[:, s:e]).loss * (e - s - 1)
                  for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()) if e - s > 1)
    assert loss.item() == pytest.approx((sep_sum / (sum(lens) - len(lens))).item(), rel=1e-5)


def test_init_std_and_parameter_count():
    torch.manual_seed(15)
    cfg = tiny(hidden_size=128, num_layers=8, num_heads=4, vocab_size=1000)
    model = DeltaNetForCausalLM(cfg)
    assert model.model.embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.model.layers[0].mixer.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert model.model.layers[3].mixer.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.model.layers[3].mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - 1000 * 128
    assert cfg.intermediate_size == 512 and DeltaNetConfig(hidden_size=1024).intermediate_size == 2816


def test_save_pretrained_roundtrip(tmp_path):
    torch.manual_seed(16)
    cfg = tiny(family="deltanet_hybrid_global", num_layers=3, attn_layers=[1, 3], qk_norm="l1")
    model = DeltaNetForCausalLM(cfg).eval()
    x = torch.randint(0, 97, (2, 12))
    ref = model(x).logits
    model.save_pretrained(tmp_path / "pt")
    assert (tmp_path / "pt" / "config.json").exists() and (tmp_path / "pt" / "model.safetensors").exists()
    loaded = DeltaNetForCausalLM.from_pretrained(tmp_path / "pt")
    assert loaded.config == cfg
    assert torch.equal(loaded.eval()(x).logits, ref)


@pytest.mark.parametrize("switch", [
    dict(qk_norm="l1", qk_activation="elu"), dict(qk_activation="relu"), dict(qk_activation="identity"),
    dict(use_short_conv=False), dict(use_beta=False), dict(use_output_gate=True),
])
def test_ablation_switches_build_train_and_decode(switch):
    torch.manual_seed(17)
    model = DeltaNetForCausalLM(tiny(**switch))
    mixer = model.model.layers[0].mixer
    assert isinstance(mixer, DeltaNet)
    assert hasattr(mixer, "q_conv") == switch.get("use_short_conv", True)
    assert (mixer.b_proj is not None) == switch.get("use_beta", True)
    assert (mixer.g_proj is not None) == switch.get("use_output_gate", False)
    x = torch.randint(0, 97, (2, 70))
    loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # chunk (70 tokens) == recurrent (prefill 40 + steps)
        full = model(x).logits
        out = model(x[:, :40], use_cache=True)
        parts, cache = [out.logits], out.cache
        for t in range(40, 70):
            out = model(x[:, t:t + 1], cache=cache, use_cache=True)
            parts.append(out.logits)
            cache = out.cache
    assert rel_err(torch.cat(parts, 1), full) < 1e-5


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 0), ("num_heads", 3), ("family", "rwkv"), ("qk_norm", "l3"), ("qk_activation", "tanh"),
    ("backend", "cuda"), ("attn_window", 0), ("use_beta", "yes"), ("conv_size", -1), ("head_dim", 0),
])
def test_bad_config_raises_value_error_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        DeltaNetConfig(**{field: value})


def test_attention_layer_indices():
    assert DeltaNetConfig(family="deltanet_hybrid_global", num_layers=24).attn_layers == [2, 13]
    assert DeltaNetConfig(family="deltanet_hybrid_swa", num_layers=6).attn_layers == [2, 4, 6]
    assert DeltaNetConfig(family="deltanet_hybrid_swa").attn_window == 2048
    assert DeltaNetConfig(family="deltanet_hybrid_global", num_layers=2).attn_layers == [2]
    with pytest.raises(ValueError, match="attn_layers"):
        DeltaNetConfig(family="deltanet_hybrid_global", num_layers=4, attn_layers=[0, 5])
    with pytest.raises(ValueError, match="attn_layers"):
        DeltaNetConfig(family="deltanet", attn_layers=[1])
    cfg = DeltaNetConfig.from_preset("340M", family="deltanet_hybrid_global")
    assert (cfg.hidden_size, cfg.num_layers, cfg.head_dim, cfg.attn_layers) == (1024, 24, 128, [2, 13])
    assert DeltaNetConfig(**dataclasses.asdict(cfg)) == cfg


def test_hydra_model_configs_instantiate_at_smoke_size():
    """Every conf/model/*.yaml builds with the smoke overrides (hidden 64, 2 layers, 2 heads) and runs a step."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[2] / "conf"
    files = sorted((conf / "model").glob("*.yaml"))
    assert {f.stem for f in files} == set(FAMILIES)
    for f in files:  # a family is a few lines on top of deltanet.yaml (its defaults list), so compose it with Hydra
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={f.stem}", "model.hidden_size=64", "model.num_layers=2",
                                               "model.num_heads=2", "model.vocab_size=97"])
        config = instantiate(cfg.model)
        assert isinstance(config, DeltaNetConfig) and config.family == f.stem
        assert isinstance(config.attn_layers, list)
        x = torch.randint(0, 97, (2, 16))
        assert torch.isfinite(DeltaNetForCausalLM(config)(x, labels=x).loss)
