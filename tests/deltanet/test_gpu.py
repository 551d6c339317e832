"""GPU paths of the models: Triton delta rule in the layer (fp32, bf16 autocast), FlexAttention SWA and varlen, cached
generation with the Triton kernels.  Marked `gpu`: skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from deltanet import FAMILIES, DeltaNetConfig, DeltaNetForCausalLM
from deltanet.layers import Attention, DeltaNet

pytestmark = pytest.mark.gpu
DEV = "cuda"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def cfg(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=1000, hidden_size=256, num_layers=2, num_heads=4)
    return DeltaNetConfig(**{**base, **kw})


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_triton_equals_torch(dtype, mode):
    """Triton (chunk or fused recurrent) vs the PyTorch chunk form in float32: outputs and input gradients."""
    torch.manual_seed(20)
    ref = DeltaNet(cfg(backend="torch")).to(DEV)
    tri = DeltaNet(cfg(backend="triton")).to(DEV)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 333, 256, device=DEV, requires_grad=True)
    a, _ = ref(x, mode="chunk")
    g = torch.randn_like(a)
    (ga,) = torch.autograd.grad(a, x, g)
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        b, _ = tri(x, mode=mode)
    (gb,) = torch.autograd.grad(b, x, g)
    assert b.dtype == dtype
    assert rel_err(b, a) < tol
    assert rel_err(gb, ga) < tol * 2


@pytest.mark.parametrize("window,varlen", [(64, False), (None, True), (50, True)])
def test_flex_attention_equals_masked_reference(window, varlen):
    """CUDA FlexAttention (block-sparse masks) vs the CPU dense-mask path of the same layer, fwd and grads."""
    torch.manual_seed(21)
    layer = Attention(cfg(family="transformer"), window=window)
    T = 300  # not a multiple of the 128-token blocks
    x = torch.randn(1, T, 256)
    cu = torch.tensor([0, 37, 38, 200, 300]) if varlen else None
    x_cpu = x.clone().requires_grad_()
    y_ref, _ = layer(x_cpu, cu_seqlens=cu)
    g = torch.randn_like(y_ref)
    (gx_ref,) = torch.autograd.grad(y_ref, x_cpu, g)
    layer_gpu = layer.to(DEV)
    x_gpu = x.to(DEV).requires_grad_()
    y, _ = layer_gpu(x_gpu, cu_seqlens=None if cu is None else cu.to(DEV))
    (gx,) = torch.autograd.grad(y, x_gpu, g.to(DEV))
    assert rel_err(y.cpu(), y_ref) < 1e-3
    assert rel_err(gx.cpu(), gx_ref) < 1e-3


def test_flex_attention_at_many_lengths_stays_fused():
    """Sliding-window attention at more (batch, length) shapes than dynamo's recompile limit (8), as a prefill of
    varying prompts or an evaluation does: every output equals the dense-mask path, and the last, long one never
    holds a (B, H, T, T) score matrix (the eager fallback that a static-shape compile reaches past the limit)."""
    torch.manual_seed(22)
    layer = Attention(cfg(family="transformer"), window=64)
    layer_gpu = Attention(cfg(family="transformer"), window=64).to(DEV)
    layer_gpu.load_state_dict(layer.state_dict())
    shapes = [(1, 100), (2, 513), (1, 1024), (3, 200), (1, 3000), (2, 4096), (1, 500), (1, 600), (2, 700),
              (4, 999), (1, 1500)]
    with torch.no_grad():
        for B, T in shapes:
            x = torch.randn(B, T, 256)
            y_ref, _ = layer(x)
            y, _ = layer_gpu(x.to(DEV))
            assert rel_err(y.cpu(), y_ref) < 1e-3, (B, T)
        B, T = 2, 16384
        scores = B * 4 * T * T * 4  # float32 scores of 4 heads
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        layer_gpu(torch.randn(B, T, 256, device=DEV))
        assert torch.cuda.max_memory_allocated() - base < scores / 8


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_on_gpu(family):
    """Full forward (Triton chunk kernel, FlexAttention SWA) == prefill + token steps (fused recurrent, ring buffer)."""
    torch.manual_seed(22)
    c = cfg(family=family, attn_window=40 if family == "deltanet_hybrid_swa" else None, num_layers=4)
    model = DeltaNetForCausalLM(c).to(DEV).eval()
    x = torch.randint(0, 1000, (2, 200), device=DEV)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :130], use_cache=True)
        parts, cache = [out.logits], out.cache
        for t in range(130, 200):
            out = model(x[:, t:t + 1], cache=cache, use_cache=True)
            parts.append(out.logits)
            cache = out.cache
    assert rel_err(torch.cat(parts, 1), full) < 2e-3
    gen = model.generate(x[:, :10], max_new_tokens=20, temperature=0.0)
    assert gen.shape == (2, 30) and gen.is_cuda
    with torch.no_grad():
        assert torch.equal(model(gen[:, :-1]).logits[:, 9:].argmax(-1), gen[:, 10:])


def test_training_step_bf16_all_families():
    """Loss and gradients finite under bf16 autocast with the Triton kernels and FlexAttention."""
    torch.manual_seed(23)
    for family in FAMILIES:
        model = DeltaNetForCausalLM(cfg(family=family, attn_window=64)).to(DEV)
        x = torch.randint(0, 1000, (2, 256), device=DEV)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        assert torch.isfinite(loss) and abs(loss.item() - 6.9) < 0.5, family  # ln(1000) at init
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), family
