"""One decoding step of a matrix-state mixer in one Triton kernel: short convs, feature map, per-head norm and the
state update (delta rule, optional decay, or plain linear attention), state and conv caches written in place.

The math is that of ``naive.py``.  One program per (row, head) owns that head's q/k/v channels (so it alone reads
and shifts their conv caches: no program reads a cache another one writes) and walks the state's V blocks of
``BV`` columns ([BK, BV] float32 in registers each): per block it reads S once and writes it once, the minimum for
an update that touches every element.  At batch 1 that is only H programs, each moving 2 * 4 * K * V bytes (128 KiB
at K = V = 128): the kernel is a few microseconds, against the ~40 PyTorch kernels of the unfused step, which inside
a CUDA graph cost a launch slot each (the decode step of a 24-layer model is latency-bound, not bandwidth-bound).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ..common.utils import check_triton_runnable
from .naive import ACTIVATIONS, NORMS

__all__ = ["decode_step"]

# State columns per program block (capped at the padded V) and warps per program: the whole [K, V] state of a head
# in one block measured fastest at K = V = 128 ("One kernel per decoding token and layer", kernels/README.md).
BV_DEFAULT, WARPS_DEFAULT = 128, 4


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:  # silu
        x = x * tl.sigmoid(x)
    elif ACT == 2:  # relu
        x = tl.maximum(x, 0.)
    elif ACT == 3:  # elu + 1
        x = tl.where(x > 0, x + 1., tl.exp(tl.minimum(x, 0.)))
    return x


@triton.jit
def _conv_step(x, cache, w, row, chan, m, W: tl.constexpr, BW: tl.constexpr):
    """x [BC] float32 raw inputs of channels ``chan`` (cache rows ``row``); returns the conv output and shifts the
    cache (W - 1 columns) by one, the new input in its last column."""
    o_w = tl.arange(0, BW)
    m_w = o_w < W - 1
    m_cw = m[:, None] & m_w[None, :]
    p_c = cache + row[:, None] * (W - 1) + o_w[None, :]
    b_c = tl.load(p_c, mask=m_cw, other=0.)  # [BC, BW]
    b_w = tl.load(w + chan[:, None] * W + o_w[None, :], mask=m_cw, other=0.).to(tl.float32)
    b_y = tl.sum(b_c.to(tl.float32) * b_w, 1) + x * tl.load(w + chan * W + W - 1, mask=m, other=0.).to(tl.float32)
    b_next = tl.load(p_c + 1, mask=m[:, None] & (o_w[None, :] < W - 2), other=0.)  # columns 1 .. W-2 move left
    b_next = tl.where(o_w[None, :] == W - 2, x[:, None].to(b_next.dtype), b_next)
    tl.store(p_c, b_next, mask=m_cw)
    return b_y


@triton.jit
def decode_step_kernel(
    q, k, v, cq, ck, cv, wq, wk, wv, beta, g, state, o, w_o, gate,
    scale, s_q, s_k, s_v, s_beta, s_gate, eps_o,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, W: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BW: tl.constexpr,
    ACT_QK: tl.constexpr, NORM_QK: tl.constexpr, ACT_V: tl.constexpr,
    USE_CONV: tl.constexpr, USE_BETA: tl.constexpr, BETA_LOGITS: tl.constexpr, USE_G: tl.constexpr,
    DELTA: tl.constexpr, NORM_O: tl.constexpr, USE_GATE: tl.constexpr,
):
    """Grid: (B, H).  With NORM_O the state is one block (BV >= V), so the head's whole output is at hand."""
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    i_bh = i_b.to(tl.int64) * H + i_h
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    c_k = i_h * K + o_k  # channels of this head in the H*K projection
    r_k = i_b.to(tl.int64) * (H * K) + c_k  # their rows in the (B*H*K, W-1) conv caches
    b_q = tl.load(q + i_b.to(tl.int64) * s_q + c_k, mask=m_k, other=0.).to(tl.float32)  # rows of stride s_q
    b_k = tl.load(k + i_b.to(tl.int64) * s_k + c_k, mask=m_k, other=0.).to(tl.float32)
    if USE_CONV:
        b_q = _conv_step(b_q, cq, wq, r_k, c_k, m_k, W, BW)
        b_k = _conv_step(b_k, ck, wk, r_k, c_k, m_k, W, BW)
    b_q = tl.where(m_k, _act(b_q, ACT_QK), 0.)
    b_k = tl.where(m_k, _act(b_k, ACT_QK), 0.)
    if NORM_QK == 1:  # l2
        b_q = b_q / tl.maximum(tl.sqrt(tl.sum(b_q * b_q, 0)), 1e-6)
        b_k = b_k / tl.maximum(tl.sqrt(tl.sum(b_k * b_k, 0)), 1e-6)
    elif NORM_QK == 2:  # l1
        b_q = b_q / tl.maximum(tl.sum(tl.abs(b_q), 0), 1e-6)
        b_k = b_k / tl.maximum(tl.sum(tl.abs(b_k), 0), 1e-6)
    b_q = b_q * scale
    if USE_BETA:
        b_beta = tl.load(beta + i_b.to(tl.int64) * s_beta + i_h).to(tl.float32)
        if BETA_LOGITS:
            b_beta = tl.sigmoid(b_beta)
    if USE_G:
        b_a = tl.exp(tl.load(g + i_bh).to(tl.float32))
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        c_v = i_h * V + o_v
        r_v = i_b.to(tl.int64) * (H * V) + c_v
        b_v = tl.load(v + i_b.to(tl.int64) * s_v + c_v, mask=m_v, other=0.).to(tl.float32)
        if USE_CONV:
            b_v = _conv_step(b_v, cv, wv, r_v, c_v, m_v, W, BW)
        b_v = tl.where(m_v, _act(b_v, ACT_V), 0.)
        m_kv = m_k[:, None] & m_v[None, :]
        p_s = state + i_bh * K * V + o_k[:, None] * V + o_v[None, :]
        b_s = tl.load(p_s, mask=m_kv, other=0.)  # [BK, BV] float32
        if USE_G:
            b_s = b_s * b_a
        if DELTA:
            b_v = b_v - tl.sum(b_s * b_k[:, None], 0)  # v - S^T k
            if USE_BETA:
                b_v = b_v * b_beta
        b_s = b_s + b_k[:, None] * b_v[None, :]
        tl.store(p_s, b_s, mask=m_kv)
        b_o = tl.sum(b_s * b_q[:, None], 0)  # [BV] float32
        if NORM_O:  # RMSNorm over the head's V outputs [* silu(gate)]
            b_o = tl.where(m_v, b_o, 0.)
            b_o = b_o / tl.sqrt(tl.sum(b_o * b_o, 0) / V + eps_o) * tl.load(w_o + o_v, mask=m_v, other=0.).to(
                tl.float32)
            if USE_GATE:
                b_z = tl.load(gate + i_b.to(tl.int64) * s_gate + c_v, mask=m_v, other=0.).to(tl.float32)
                b_o = b_o * b_z * tl.sigmoid(b_z)
        tl.store(o + i_bh * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)


def decode_step(
    state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    beta: Optional[torch.Tensor] = None, g: Optional[torch.Tensor] = None, delta: bool = True,
    conv_states: Optional[Sequence[torch.Tensor]] = None, conv_weights: Optional[Sequence[torch.Tensor]] = None,
    qk_activation: str = "identity", qk_norm: Optional[str] = None, v_activation: str = "identity",
    scale: Optional[float] = None, beta_logits: bool = False, o_norm_weight: Optional[torch.Tensor] = None,
    o_norm_eps: float = 1e-6, gate: Optional[torch.Tensor] = None, BV: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """One token of a matrix-state mixer for decoding (no gradients); ``state`` and ``conv_states`` in place.

    Args:
        state: [B, H, K, V] float32, contiguous.
        q, k: [B, H*K]; v: [B, H*V] (raw projections: before the convs), float16 / bfloat16 / float32; rows may
            be strided (column slices of one joint projection).
        beta: [B, H] writing strengths (in (0, 1)), or their logits with ``beta_logits`` (the sigmoid is then taken
            here), or None (1); only with ``delta``.  Rows may be strided (a column slice of the projection).
        g: [B, H] log decays (float32, <= 0) or None (no decay).
        delta: the delta rule S += beta k (v - S^T k)^T; False: S += k v^T.
        conv_states: (cache_q, cache_k, cache_v), each [B, channels, W - 1] contiguous, or None (no convs);
        conv_weights: the matching depthwise weights [channels, W] (or nn.Conv1d's [channels, 1, W]).
        qk_activation: 'identity' | 'silu' | 'relu' | 'elu' (elu + 1); qk_norm: None | 'l2' | 'l1';
        v_activation: 'identity' | 'silu'.  scale: output scale, default K ** -0.5.
        o_norm_weight: optional [V] weight of a per-head RMSNorm of the output (eps ``o_norm_eps``), computed in
            float32 on the unrounded output; ``gate``: optional [B, H*V] (rows may be strided), then the output is
            RMSNorm(o) * silu(gate).  Needs the head's outputs in one block (V <= BV).
        BV: state columns per block, default ``BV_DEFAULT``, raised to V's power of two for ``o_norm_weight``;
        num_warps: warps per program, default ``WARPS_DEFAULT`` (8 for blocks over 128 x 128).
    Returns:
        o: [B, H, V] in v's dtype.

    Example::

        o = decode_step(S, q, k, v, beta=beta, conv_states=(cq, ck, cv), conv_weights=(wq, wk, wv),
                        qk_activation="silu", qk_norm="l2", v_activation="silu")
    """
    if state.dim() != 4 or state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 [B, H, K, V] tensor, got {tuple(state.shape)} "
                         f"{state.dtype}")
    B, H, K, V = state.shape
    for name, t, shape in (("q", q, (B, H * K)), ("k", k, (B, H * K)), ("v", v, (B, H * V)),
                           ("beta", beta, (B, H)), ("g", g, (B, H))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape} for state {tuple(state.shape)}, got {tuple(t.shape)}")
        if t is not None and t.device != state.device:
            raise ValueError(f"{name} is on {t.device}, state on {state.device}")
    if beta is not None and not delta:
        raise ValueError("beta is only used by the delta rule (delta=True)")
    if qk_activation not in ACTIVATIONS or v_activation not in ("identity", "silu") or qk_norm not in NORMS:
        raise ValueError(f"qk_activation in {ACTIVATIONS}, v_activation in ('identity', 'silu'), qk_norm in {NORMS}; "
                         f"got {qk_activation!r}, {v_activation!r}, {qk_norm!r}")
    if (conv_states is None) != (conv_weights is None):
        raise ValueError("conv_states and conv_weights go together")
    W = 1
    if conv_states is not None:
        conv_weights = [w.reshape(w.shape[0], -1) for w in conv_weights]
        W = conv_weights[0].shape[1]
        if W < 2:
            raise ValueError(f"conv width must be >= 2, got {W}")
        for name, c, w, ch in zip("qkv", conv_states, conv_weights, (H * K, H * K, H * V)):
            if tuple(c.shape) != (B, ch, W - 1) or not c.is_contiguous():
                raise ValueError(f"conv state {name} must be a contiguous ({B}, {ch}, {W - 1}) tensor, got "
                                 f"{tuple(c.shape)}")
            if tuple(w.shape) != (ch, W):
                raise ValueError(f"conv weight {name} must be ({ch}, {W}), got {tuple(w.shape)}")
    if gate is not None and o_norm_weight is None:
        raise ValueError("gate is only applied with o_norm_weight (RMSNorm(o) * silu(gate))")
    if BV is None:
        BV = max(BV_DEFAULT, triton.next_power_of_2(V)) if o_norm_weight is not None else BV_DEFAULT
    if o_norm_weight is not None:
        if tuple(o_norm_weight.shape) != (V,):
            raise ValueError(f"o_norm_weight must be ({V},), got {tuple(o_norm_weight.shape)}")
        if triton.next_power_of_2(V) > BV:
            raise ValueError(f"o_norm_weight needs the head's V = {V} outputs in one block: BV >= {V}, got {BV}")
    if gate is not None and (tuple(gate.shape) != (B, H * V) or gate.device != state.device):
        raise ValueError(f"gate must be ({B}, {H * V}) on {state.device}, got {tuple(gate.shape)} on {gate.device}")
    check_triton_runnable(state, q, k, v)
    if gate is not None and gate.stride(-1) != 1:
        gate = gate.contiguous()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # rows may be strided (slices)
    if beta is not None and beta.stride(-1) != 1:
        beta = beta.contiguous()
    cq, ck, cv = conv_states if conv_states is not None else (None, None, None)
    wq, wk, wv = (w.contiguous() for w in conv_weights) if conv_weights is not None else (None, None, None)
    o = torch.empty(B, H, V, device=v.device, dtype=v.dtype)
    BK, BV = triton.next_power_of_2(K), min(BV, triton.next_power_of_2(V))
    if num_warps is None:
        num_warps = WARPS_DEFAULT if BK * BV <= 128 * 128 else 8
    decode_step_kernel[(B, H)](
        q, k, v, cq, ck, cv, wq, wk, wv,
        beta, g.contiguous() if g is not None else None, state, o, o_norm_weight, gate,
        K ** -0.5 if scale is None else scale, q.stride(0), k.stride(0), v.stride(0),
        beta.stride(0) if beta is not None else 0, gate.stride(0) if gate is not None else 0, float(o_norm_eps),
        H=H, K=K, V=V, W=W, BK=BK, BV=BV,
        BW=triton.next_power_of_2(max(W - 1, 1)),
        ACT_QK=ACTIVATIONS.index(qk_activation), NORM_QK=NORMS.index(qk_norm), ACT_V=("identity", "silu").index(
            v_activation),
        USE_CONV=conv_states is not None, USE_BETA=beta is not None, BETA_LOGITS=bool(beta_logits),
        USE_G=g is not None, DELTA=delta, NORM_O=o_norm_weight is not None, USE_GATE=gate is not None,
        num_warps=num_warps,
    )
    return o
