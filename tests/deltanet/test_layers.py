"""Layer-level checks on CPU: DeltaNet chunk == recurrent, short conv caching/varlen, attention vs a plain reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deltanet import DeltaNetConfig
from deltanet.layers import Attention, DeltaNet, ShortConvolution


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny(**kw) -> DeltaNetConfig:
    base = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=2, chunk_size=16, backend="torch")
    return DeltaNetConfig(**{**base, **kw})


@pytest.mark.parametrize("T", [1, 37, 80])
def test_deltanet_chunk_equals_recurrent_fp32(T):
    torch.manual_seed(T)
    layer = DeltaNet(tiny())
    x = torch.randn(2, T, 64, requires_grad=True)
    y_c, _ = layer(x, mode="chunk")
    y_r, _ = layer(x, mode="recurrent")
    assert rel_err(y_c, y_r) < 1e-5
    g = torch.randn_like(y_c)
    (gc,) = torch.autograd.grad(y_c, x, g)
    (gr,) = torch.autograd.grad(y_r, x, g)
    assert rel_err(gc, gr) < 1e-4


def test_deltanet_state_carries_across_calls():
    """Running [x1, x2] at once equals x1 then x2 with the cached conv and delta-rule states, chunk or recurrent."""
    torch.manual_seed(1)
    layer = DeltaNet(tiny()).eval()
    x = torch.randn(2, 45, 64)
    full, _ = layer(x, mode="chunk")
    y1, s = layer(x[:, :30], use_cache=True, mode="chunk")
    y2, _ = layer(x[:, 30:], state=s, use_cache=True, mode="recurrent")
    assert s["recurrent_state"].shape == (2, 2, 32, 32) and s["conv_q"].shape == (2, 64, 3)
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-5


def test_short_conv_matches_conv1d_and_steps():
    torch.manual_seed(2)
    conv = ShortConvolution(8, 4)
    x = torch.randn(3, 11, 8)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), conv.weight, groups=8).transpose(1, 2)
    y, _ = conv(x)
    assert torch.allclose(y, ref, atol=1e-6)
    cache, outs = None, []
    for t in range(11):
        y_t, cache = conv(x[:, t:t + 1], cache, output_final_state=True)
        outs.append(y_t)
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-6)


def test_short_conv_varlen_does_not_cross_sequences():
    torch.manual_seed(3)
    conv = ShortConvolution(8, 4)
    lens = [5, 1, 9, 2]
    x = torch.randn(1, sum(lens), 8)
    cu = torch.tensor([0, 5, 6, 15, 17])
    y, _ = conv(x, cu_seqlens=cu)
    ref = torch.cat([conv(x[:, s:e])[0] for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], 1)
    assert torch.allclose(y, ref, atol=1e-6)


def _reference_attention(layer: Attention, x: torch.Tensor, window) -> torch.Tensor:
    """Softmax attention written out per query in float64 (RoPE from the layer)."""
    B, T, _ = x.shape
    H, D = layer.num_heads, layer.head_dim
    from deltanet.layers.attention import apply_rotary
    q = layer.q_proj(x).view(B, T, H, D)
    k = layer.k_proj(x).view(B, T, H, D)
    v = layer.v_proj(x).view(B, T, H, D).double()
    cos, sin = layer.rotary(torch.arange(T))
    q, k = apply_rotary(q, cos, sin).double(), apply_rotary(k, cos, sin).double()
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        s = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, lo:t + 1]) / math.sqrt(D)
        out[:, t] = torch.einsum("bhs,bshd->bhd", s.softmax(-1), v[:, lo:t + 1])
    return layer.o_proj(out.reshape(B, T, H * D).float())


@pytest.mark.parametrize("window", [None, 7])
def test_attention_matches_reference(window):
    torch.manual_seed(4)
    layer = Attention(tiny(family="transformer"), window=window)
    x = torch.randn(2, 23, 64)
    y, _ = layer(x)
    assert rel_err(y, _reference_attention(layer, x, window)) < 1e-5


def test_rope_is_relative():
    """Scores after RoPE depend only on the position difference."""
    torch.manual_seed(5)
    layer = Attention(tiny(family="transformer"))
    from deltanet.layers.attention import apply_rotary
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(i, j):
        ci, si = layer.rotary(torch.tensor([i]))
        cj, sj = layer.rotary(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum().item()

    assert score(10, 3) == pytest.approx(score(107, 100), rel=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), rel=1e-4)


@pytest.mark.parametrize("num_heads", [2, 8])  # head dims 32, and 8: below the kernels' 16, zero-padded to 16
def test_deltanet_triton_backend_matches_torch_backend(triton_runnable, num_heads):
    """The layer's Triton path (interpreted on CPU, compiled on CUDA) equals its PyTorch path: chunk, recurrent, varlen,
    forward and gradients, and the cached state, also when carried into a second call."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(6)
    ref = DeltaNet(tiny(backend="torch", num_heads=num_heads)).to(device)
    tri = DeltaNet(tiny(backend="triton", num_heads=num_heads)).to(device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 21, 64, device=device, requires_grad=True)
    for mode in ("chunk", "recurrent"):
        a, sa = ref(x, mode=mode, use_cache=True)
        b, sb = tri(x, mode=mode, use_cache=True)
        assert sb["recurrent_state"].shape == sa["recurrent_state"].shape == (2, num_heads, 64 // num_heads,
                                                                              64 // num_heads)
        a2, _ = ref(x, state=sa, mode=mode)  # the state as the initial state of the next call
        b2, _ = tri(x, state=sb, mode=mode)
        g, g2 = torch.randn_like(a), torch.randn_like(a2)
        ga = torch.autograd.grad((a * g).sum() + (a2 * g2).sum(), [x, *ref.parameters()])
        gb = torch.autograd.grad((b * g).sum() + (b2 * g2).sum(), [x, *tri.parameters()])
        assert rel_err(b, a) < 1e-5 and rel_err(sb["recurrent_state"], sa["recurrent_state"]) < 1e-5
        assert rel_err(b2, a2) < 1e-5
        assert max(rel_err(u, w) for u, w in zip(gb, ga)) < 1e-4
    cu = torch.tensor([0, 5, 6, 21], device=device)
    a, _ = ref(x[:1], cu_seqlens=cu, mode="chunk")
    b, _ = tri(x[:1], cu_seqlens=cu, mode="chunk")
    assert rel_err(b, a) < 1e-5


@pytest.mark.parametrize("window,varlen", [(64, False), (None, True), (50, True)])
def test_flex_block_masks_match_dense_masks(window, varlen):
    """The CUDA path's FlexAttention block masks select the same keys as the CPU path's dense masks (eager flex on CPU;
    the compiled kernel itself is checked in test_gpu.py)."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from deltanet.layers.attention import _allowed, _varlen_block_mask, _window_block_mask
    from deltanet.layers.conv import varlen_positions
    torch.manual_seed(7)
    T = 300  # not a multiple of the 128-token blocks
    q, k, v = (torch.randn(1, 2, T, 32) for _ in range(3))
    if varlen:
        seq_id, pos = varlen_positions(torch.tensor([0, 37, 38, 200, 300]), T)
        bm, dense = _varlen_block_mask(seq_id, window), _allowed(pos, pos, window, seq_id, seq_id)
    else:
        pos = torch.arange(T)
        bm, dense = _window_block_mask(T, window, "cpu"), _allowed(pos, pos, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        out = flex_attention(q, k, v, block_mask=bm)
    assert rel_err(out, F.scaled_dot_product_attention(q, k, v, attn_mask=dense)) < 1e-5


@pytest.mark.parametrize("T,window,cu", [(300, 64, None), (640, 200, None), (512, 128, None), (256, 1, None),
                                         (1000, None, [0, 5, 130, 131, 640, 1000]), (768, 300, [0, 256, 768]),
                                         (384, 129, [0, 384]), (640, 127, None), (640, 255, None), (640, 2, None),
                                         (640, 130, None), (640, 129, [0, 200, 640])])
def test_flex_block_masks_are_exact_and_as_sparse_as_torchs(T, window, cu):
    """The block masks built from block bounds (no (T, T) mask): every (query, key) pair they imply, a full block
    (mask_mod skipped) or a partial one (mask_mod applied) or a skipped one, equals the dense mask; and they visit
    no block pair that torch's create_block_mask (which evaluates mask_mod at every pair) does not."""
    from torch.nn.attention.flex_attention import create_block_mask

    from deltanet.layers.attention import FLEX_BLOCK, _allowed, _varlen_block_mask, _window_block_mask
    from deltanet.layers.conv import varlen_positions
    if cu is None:
        pos = torch.arange(T)
        bm, dense = _window_block_mask(T, window, "cpu"), _allowed(pos, pos, window)
    else:
        seq_id, pos = varlen_positions(torch.tensor(cu), T)
        bm, dense = _varlen_block_mask(seq_id, window), _allowed(pos, pos, window, seq_id, seq_id)
    nb = -(-T // FLEX_BLOCK)
    kind = torch.zeros(nb, nb, dtype=torch.long)  # 0 skipped, 1 partial, 2 full
    for num, idx, val in ((bm.kv_num_blocks, bm.kv_indices, 1), (bm.full_kv_num_blocks, bm.full_kv_indices, 2)):
        for i in range(nb):
            for j in idx[0, 0, i, :num[0, 0, i]].tolist():
                assert kind[i, j] == 0, "a block pair listed twice"
                kind[i, j] = val
    qi, ki = torch.arange(T)[:, None], torch.arange(T)[None]
    k = kind[qi // FLEX_BLOCK, ki // FLEX_BLOCK]
    implied = (k == 2) | ((k == 1) & bm.mask_mod(0, 0, qi, ki))
    assert torch.equal(implied, dense)
    ref = create_block_mask(bm.mask_mod, None, None, T, T, device="cpu")
    ref_visits = (ref.kv_num_blocks + ref.full_kv_num_blocks).sum().item()
    assert (kind > 0).sum().item() <= ref_visits
