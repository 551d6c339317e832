"""The Mamba family: the block's scan and step modes, its Triton path against its PyTorch path, the published init,
the paper-size parameter counts, persistence, the config fields and the optimizer's weight-decay groups.

(Cached generation == full forward, left padding and varlen run for mamba in test_model.py's family tests.)
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from deltanet import DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import Mamba

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton path: the interpreter on CPU


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(family="mamba", vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, ssm_state_size=4,
                backend="torch")
    return DeltaNetConfig(**{**base, **kw})


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_block_scan_mode_equals_step_mode(backend, triton_runnable):
    """One Mamba block: a scan over 21 tokens equals a prefill of 8 then token-by-token steps from the cache."""
    torch.manual_seed(0)
    dev = DEVICE if backend == "triton" else "cpu"
    layer = Mamba(tiny(backend=backend)).to(dev).eval()
    u = torch.randn(2, 21, 32, device=dev)
    with torch.no_grad():
        full, _ = layer(u, mode="scan")
        steps, _ = layer(u, mode="step")  # every token through the decoding step, from a zero state
        y, state = layer(u[:, :8], use_cache=True)
        parts = [y]
        for t in range(8, 21):
            y, state = layer(u[:, t:t + 1], state=state, use_cache=True)
            parts.append(y)
    assert rel_err(steps, full) < 1e-5
    assert rel_err(torch.cat(parts, 1), full) < 1e-5
    assert state["ssm"].shape == (2, 64, 4) and state["ssm"].dtype == torch.float32
    assert state["conv"].shape == (2, 64, 3)


def test_triton_path_equals_torch_path_with_gradients(triton_runnable):
    """The whole model with the Triton scan (interpreted on CPU) against the sequential PyTorch recurrence."""
    torch.manual_seed(1)
    ref = DeltaNetForCausalLM(tiny())
    tri = DeltaNetForCausalLM(tiny(backend="triton"))
    tri.load_state_dict(ref.state_dict())
    tri.to(DEVICE)
    x = torch.randint(0, 97, (2, 19))
    losses = [ref(x, labels=x).loss, tri(x.to(DEVICE), labels=x.to(DEVICE)).loss]
    for m, loss in zip((ref, tri), losses):
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for (name, p), q in zip(ref.named_parameters(), tri.parameters()):
        assert p.grad is not None and rel_err(q.grad.cpu(), p.grad) < 1e-4, name


def test_published_initialisation():
    torch.manual_seed(2)
    cfg = tiny(hidden_size=64, num_layers=3, ssm_state_size=16, dt_min=0.002, dt_max=0.05)
    model = DeltaNetForCausalLM(cfg)
    blocks = [m for m in model.modules() if isinstance(m, Mamba)]
    assert len(blocks) == 6  # two per layer
    for m in blocks:
        dt = F.softplus(m.dt_proj.bias.detach())  # the dt that a zero input gets
        assert float(dt.min()) >= 0.002 * 0.999 and float(dt.max()) <= 0.05 * 1.001
        assert float(dt.log().std()) > 0.3  # spread log-uniformly, not a constant
        assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).expand(128, 16))
        assert torch.equal(m.D, torch.ones(128))
        assert float(m.dt_proj.weight.detach().abs().max()) <= 4 ** -0.5  # dt_rank = ceil(64 / 16) = 4
        assert m.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 3), rel=0.1)
        assert m.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def _count(hidden: int, layers: int = 48, n: int = 16, vocab: int = 32000) -> int:
    """Parameters of the published Mamba LM (untied head): per block in_proj, conv (+ bias), x_proj, dt_proj
    (+ bias), A_log, D, out_proj and its RMSNorm."""
    e, r = 2 * hidden, math.ceil(hidden / 16)
    block = hidden * 2 * e + e * 4 + e + e * (r + 2 * n) + r * e + e + e * n + e + e * hidden + hidden
    return layers * block + 2 * vocab * hidden + hidden


@pytest.mark.parametrize("preset,expected", [("340M", 385_565_696), ("1.3B", 1_400_276_992)])
def test_paper_size_parameter_counts(preset, expected):
    """The size presets (24 layers) give the paper's 48 Mamba blocks; counts as written in conf/model/mamba.yaml."""
    cfg = DeltaNetConfig.from_preset(preset, family="mamba")
    with torch.device("meta"):
        model = DeltaNetForCausalLM(cfg)
    assert sum(isinstance(m, Mamba) for m in model.modules()) == 48
    assert model.num_parameters() == _count(cfg.hidden_size) == expected


def test_save_pretrained_roundtrip(tmp_path):
    torch.manual_seed(3)
    model = DeltaNetForCausalLM(tiny(dt_rank=3, ssm_expand=3)).eval()
    x = torch.randint(0, 97, (2, 12))
    ref = model(x).logits
    model.save_pretrained(tmp_path / "m")
    loaded = DeltaNetForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and loaded.config.dt_rank == 3
    assert torch.equal(loaded.eval()(x).logits, ref)


def test_trains_and_every_parameter_gets_a_gradient():
    torch.manual_seed(4)
    model = DeltaNetForCausalLM(tiny())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 97, (4, 24))
    losses = []
    for _ in range(8):
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("field,value", [
    ("ssm_state_size", 0), ("ssm_state_size", 512), ("ssm_expand", 1.5), ("dt_rank", 0), ("dt_min", 0.0),
    ("dt_max", -1.0),
])
def test_bad_mamba_config_raises_value_error_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        DeltaNetConfig(family="mamba", **{field: value})


def test_mamba_config_rules():
    with pytest.raises(ValueError, match="dt_min must be <= dt_max"):
        DeltaNetConfig(family="mamba", dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="attn_layers"):
        DeltaNetConfig(family="mamba", attn_layers=[1])
    cfg = DeltaNetConfig(family="mamba", hidden_size=1000)
    assert cfg.dt_rank == 63 and cfg.attn_layers == []
    assert DeltaNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="mode must be"):
        Mamba(tiny())(torch.randn(1, 3, 32), mode="chunk")


def test_a_log_and_d_are_not_weight_decayed():
    from lit_modules.causal_lm import CausalLMModule

    module = CausalLMModule(tiny(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1))
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in module.model.named_parameters() if id(p) in decayed}
    assert not any(n.endswith(("A_log", ".D")) for n in names)
    assert any(n.endswith("in_proj.weight") for n in names) and any(n.endswith("x_proj.weight") for n in names)
